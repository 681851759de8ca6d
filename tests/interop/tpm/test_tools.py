"""tpm2-tools 5.x against every served target (see conftest.py), over mssim and swtpm TCTIs."""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest

from svsm.sdk.testing import require_tool
from svsm.sdk.tpm import MssimClient, SwtpmClient

from .conftest import Target, Tools

pytestmark = pytest.mark.slow

STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")


def _primary(tpm2: Tools, alg: str = "ecc", name: str = "p.ctx") -> str:
    tpm2.run("tpm2_createprimary", "-C", "o", "-G", alg, "-c", name)
    return name


def test_second_startup_is_rejected_with_initialize(tpm2: Tools, target: Target) -> None:
    # tpm2_startup (like Esys_Startup) treats TPM_RC_INITIALIZE as "already started" and exits 0,
    # so look at the raw response through our own client of the same transport.
    assert tpm2.run("tpm2_startup", "-c").returncode == 0
    assert target.server is not None
    client = (MssimClient if target.transport == "mssim" else SwtpmClient)(port=target.server.port)
    try:
        assert client.execute(STARTUP_CLEAR) == bytes.fromhex("80010000000a00000100")
    finally:
        client.close()


def test_getcap(tpm2: Tools) -> None:
    algs = tpm2.run("tpm2_getcap", "algorithms").stdout
    for alg in ("sha256", "rsa", "ecc", "aes", "cfb", "keyedhash", "hmac"):
        assert re.search(rf"^{alg}:", algs, re.M), alg
    fixed = tpm2.run("tpm2_getcap", "properties-fixed").stdout
    assert "TPM2_PT_FAMILY_INDICATOR" in fixed and "2.0" in fixed
    assert re.search(r"TPM2_PT_PCR_COUNT:\s+raw: 0x18", fixed)
    assert "sha256" in tpm2.run("tpm2_getcap", "pcrs").stdout


def test_getrandom(tpm2: Tools) -> None:
    a = tpm2.run("tpm2_getrandom", "--hex", "16").stdout.strip()
    b = tpm2.run("tpm2_getrandom", "--hex", "16").stdout.strip()
    assert len(a) == 32 and a != b


def test_pcr_extend_read_reset(tpm2: Tools) -> None:
    digest = hashlib.sha256(b"pysvsm").hexdigest()
    tpm2.run("tpm2_pcrreset", "16")
    tpm2.run("tpm2_pcrextend", f"16:sha256={digest}")
    out = tpm2.run("tpm2_pcrread", "sha256:16").stdout
    expected = hashlib.sha256(b"\0" * 32 + bytes.fromhex(digest)).hexdigest().upper()
    assert expected in out.upper()
    tpm2.run("tpm2_pcrreset", "16")
    assert "0x" + "0" * 64 in tpm2.run("tpm2_pcrread", "sha256:16").stdout


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_primary_child_sign_verify_openssl(tpm2: Tools, alg: str) -> None:
    openssl = require_tool("openssl")
    parent = _primary(tpm2, alg)
    tpm2.run("tpm2_create", "-C", parent, "-G", alg, "-u", "k.pub", "-r", "k.priv")
    tpm2.run("tpm2_load", "-C", parent, "-u", "k.pub", "-r", "k.priv", "-c", "k.ctx")
    msg = tpm2.cwd / "msg"
    msg.write_bytes(b"sign me, vTPM")
    tpm2.run("tpm2_sign", "-c", "k.ctx", "-g", "sha256", "-o", "sig.tss", "msg")
    tpm2.run("tpm2_verifysignature", "-c", "k.ctx", "-g", "sha256", "-m", "msg", "-s", "sig.tss")
    tpm2.run("tpm2_sign", "-c", "k.ctx", "-g", "sha256", "-f", "plain", "-o", "sig.plain", "msg")
    tpm2.run("tpm2_readpublic", "-c", "k.ctx", "-f", "pem", "-o", "k.pem")
    ok = subprocess.run(
        [openssl, "dgst", "-sha256", "-verify", "k.pem", "-signature", "sig.plain", "msg"],
        cwd=tpm2.cwd, capture_output=True, text=True,
    )
    assert ok.returncode == 0 and "Verified OK" in ok.stdout, ok.stderr
    msg.write_bytes(b"tampered")
    bad = subprocess.run(
        [openssl, "dgst", "-sha256", "-verify", "k.pem", "-signature", "sig.plain", "msg"],
        cwd=tpm2.cwd, capture_output=True, text=True,
    )
    assert bad.returncode != 0


def test_quote_and_checkquote(tpm2: Tools) -> None:
    parent = _primary(tpm2, "rsa")
    tpm2.run(
        "tpm2_create", "-C", parent, "-G", "rsa:rsassa-sha256:null", "-u", "ak.pub", "-r", "ak.priv",
        "-a", "restricted|sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth",
    )
    tpm2.run("tpm2_load", "-C", parent, "-u", "ak.pub", "-r", "ak.priv", "-c", "ak.ctx")
    tpm2.run("tpm2_readpublic", "-c", "ak.ctx", "-f", "pem", "-o", "ak.pem")
    nonce = "1234567890abcdef"
    tpm2.run("tpm2_quote", "-c", "ak.ctx", "-l", "sha256:0,1,16", "-q", nonce, "-m", "q.msg", "-s", "q.sig", "-o", "q.pcrs", "-g", "sha256")
    tpm2.run("tpm2_checkquote", "-u", "ak.pem", "-m", "q.msg", "-s", "q.sig", "-f", "q.pcrs", "-g", "sha256", "-q", nonce)
    bad = tpm2.run("tpm2_checkquote", "-u", "ak.pem", "-m", "q.msg", "-s", "q.sig", "-f", "q.pcrs", "-g", "sha256", "-q", "00" * 8, check=False)
    assert bad.returncode != 0


def test_seal_unseal_password_and_pcr_policy(tpm2: Tools) -> None:
    parent = _primary(tpm2, "ecc")
    (tpm2.cwd / "secret").write_bytes(b"top secret")
    tpm2.run("tpm2_create", "-C", parent, "-i", "secret", "-p", "pw", "-u", "s.pub", "-r", "s.priv")
    tpm2.run("tpm2_load", "-C", parent, "-u", "s.pub", "-r", "s.priv", "-c", "s.ctx")
    assert tpm2.run("tpm2_unseal", "-c", "s.ctx", "-p", "pw").stdout == "top secret"
    assert tpm2.run("tpm2_unseal", "-c", "s.ctx", "-p", "wrong", check=False).returncode != 0
    # PCR policy on PCR 16.
    tpm2.run("tpm2_pcrreset", "16")
    tpm2.run("tpm2_createpolicy", "--policy-pcr", "-l", "sha256:16", "-L", "pcr.policy")
    tpm2.run("tpm2_create", "-C", parent, "-i", "secret", "-L", "pcr.policy", "-u", "pp.pub", "-r", "pp.priv")
    tpm2.run("tpm2_load", "-C", parent, "-u", "pp.pub", "-r", "pp.priv", "-c", "pp.ctx")
    assert tpm2.run("tpm2_unseal", "-c", "pp.ctx", "-p", "pcr:sha256:16").stdout == "top secret"
    tpm2.run("tpm2_pcrextend", f"16:sha256={'11' * 32}")
    assert tpm2.run("tpm2_unseal", "-c", "pp.ctx", "-p", "pcr:sha256:16", check=False).returncode != 0
    tpm2.run("tpm2_pcrreset", "16")


def test_nv_define_write_read_increment_undefine(tpm2: Tools) -> None:
    idx = "0x1500016"
    tpm2.run("tpm2_nvundefine", idx, check=False)
    tpm2.run("tpm2_nvdefine", idx, "-C", "o", "-s", "32", "-a", "ownerread|ownerwrite|authread|authwrite")
    (tpm2.cwd / "data").write_bytes(b"hello nv")
    tpm2.run("tpm2_nvwrite", idx, "-C", "o", "-i", "data")
    assert tpm2.run("tpm2_nvread", idx, "-C", "o", "-s", "8").stdout == "hello nv"
    tpm2.run("tpm2_nvundefine", idx)
    assert tpm2.run("tpm2_nvread", idx, "-C", "o", "-s", "8", check=False).returncode != 0
    ctr = "0x1500017"
    tpm2.run("tpm2_nvundefine", ctr, check=False)
    tpm2.run("tpm2_nvdefine", ctr, "-C", "o", "-s", "8", "-a", "nt=counter|ownerread|ownerwrite|authread|authwrite")
    tpm2.run("tpm2_nvincrement", ctr, "-C", "o")
    tpm2.run("tpm2_nvread", ctr, "-C", "o", "-s", "8", "-o", "c1")
    first = int.from_bytes((tpm2.cwd / "c1").read_bytes(), "big")
    tpm2.run("tpm2_nvincrement", ctr, "-C", "o")
    tpm2.run("tpm2_nvread", ctr, "-C", "o", "-s", "8", "-o", "c2")
    assert int.from_bytes((tpm2.cwd / "c2").read_bytes(), "big") == first + 1
    tpm2.run("tpm2_nvundefine", ctr)


def test_hash_and_hmac(tpm2: Tools) -> None:
    data = tpm2.cwd / "data"
    data.write_bytes(b"x" * 100)
    tpm2.run("tpm2_hash", "-g", "sha256", "-o", "h.bin", "-t", "h.tkt", "data")
    assert (tpm2.cwd / "h.bin").read_bytes() == hashlib.sha256(b"x" * 100).digest()
    parent = _primary(tpm2, "ecc")
    tpm2.run("tpm2_create", "-C", parent, "-G", "hmac", "-c", "hm.ctx")
    a = tpm2.run("tpm2_hmac", "-c", "hm.ctx", "--hex", "data").stdout
    b = tpm2.run("tpm2_hmac", "-c", "hm.ctx", "--hex", "data").stdout
    assert a == b and len(a.strip()) == 64


def test_rsa_encrypt_decrypt(tpm2: Tools) -> None:
    parent = _primary(tpm2, "rsa")
    tpm2.run("tpm2_create", "-C", parent, "-G", "rsa2048", "-a", "decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth", "-c", "rk.ctx")
    (tpm2.cwd / "msg").write_bytes(b"encrypt me")
    tpm2.run("tpm2_rsaencrypt", "-c", "rk.ctx", "-s", "oaep", "-o", "enc", "msg")
    tpm2.run("tpm2_rsadecrypt", "-c", "rk.ctx", "-s", "oaep", "-o", "dec", "enc")
    assert (tpm2.cwd / "dec").read_bytes() == b"encrypt me"


def test_hmac_session_with_parameter_encryption(tpm2: Tools) -> None:
    parent = _primary(tpm2, "ecc")
    tpm2.run("tpm2_startauthsession", "--hmac-session", "-c", parent, "-S", "s.ctx")
    # Salted+bound session with decrypt|encrypt|continue: GetRandom's response is encrypted.
    out = tpm2.run("tpm2_getrandom", "-S", "s.ctx", "--hex", "16").stdout
    assert len(out.strip()) == 32
    (tpm2.cwd / "secret").write_bytes(b"sealed over an encrypted session")
    tpm2.run("tpm2_create", "-C", parent, "-i", "secret", "-u", "s.pub", "-r", "s.priv", "-S", "s.ctx")
    tpm2.run("tpm2_flushcontext", "s.ctx")


def test_changeauth_owner(tpm2: Tools) -> None:
    tpm2.run("tpm2_changeauth", "-c", "o", "newowner")
    try:
        assert tpm2.run("tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", "x.ctx", check=False).returncode != 0
        tpm2.run("tpm2_createprimary", "-C", "o", "-P", "newowner", "-G", "ecc", "-c", "x.ctx")
    finally:
        tpm2.run("tpm2_changeauth", "-c", "o", "-p", "newowner")


def test_persistent_handle_survives_restart(tpm2: Tools, target: Target) -> None:
    handle = "0x81000042"
    tpm2.run("tpm2_evictcontrol", "-C", "o", "-c", handle, check=False)  # leftover from a failed run
    parent = _primary(tpm2, "ecc")
    tpm2.run("tpm2_evictcontrol", "-C", "o", "-c", parent, handle)
    before = tpm2.run("tpm2_readpublic", "-c", handle).stdout
    tpm2.run("tpm2_shutdown")  # orderly: TPM2_Shutdown(CLEAR)
    target.restart()
    tpm2.run("tpm2_startup", "-c")
    assert handle in tpm2.run("tpm2_getcap", "handles-persistent").stdout
    assert tpm2.run("tpm2_readpublic", "-c", handle).stdout == before
    tpm2.run("tpm2_evictcontrol", "-C", "o", "-c", handle)


def test_zz_clear(tpm2: Tools) -> None:
    """Last test of the module: TPM2_Clear through the platform hierarchy drops owner objects."""
    parent = _primary(tpm2, "ecc")
    tpm2.run("tpm2_evictcontrol", "-C", "o", "-c", parent, "0x81000043")
    tpm2.run("tpm2_clear", "-c", "p")
    assert "0x81000043" not in tpm2.run("tpm2_getcap", "handles-persistent").stdout


def test_ek_ak_makecredential_activatecredential(tpm2: Tools) -> None:
    """The attestation identity flow: EK (policy-only) + AK, credential made outside, activated inside."""
    tpm2.run("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    tpm2.run("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa", "-u", "ak.pub", "-n", "ak.name")
    (tpm2.cwd / "secret").write_bytes(b"credential secret")
    # MakeCredential needs no TPM secrets: tpm2-tools can do it with the TPM (-T) or offline (-T none).
    tpm2.run("tpm2_makecredential", "-T", "none", "-u", "ek.pub", "-s", "secret", "-n",
             (tpm2.cwd / "ak.name").read_bytes().hex(), "-o", "cred.out")
    tpm2.run("tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
    tpm2.run("tpm2_policysecret", "-S", "s.ctx", "-c", "e")
    tpm2.run("tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred.out", "-o", "act.out", "-P", "session:s.ctx")
    tpm2.run("tpm2_flushcontext", "s.ctx")
    assert (tpm2.cwd / "act.out").read_bytes() == b"credential secret"

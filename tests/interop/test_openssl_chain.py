"""`svsm attest` output checked by openssl alone: the ARK -> ASK -> VCEK chain and the report
signature (ECDSA P-384 over report[0:0x2A0]); then `svsm verify` on good and tampered input."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pathlib
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from svsm.kernel.cli import main
from svsm.sdk.attestation import AttestationReport
from svsm.sdk.testing import require_tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def attested(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A services attestation: a CVM boots and its guest asks the SVSM (ATTEST_SERVICES)."""
    out = tmp_path_factory.mktemp("attest")
    state = tmp_path_factory.getbasetemp()  # chip "psp-chip": the one the PSP unit tests use, if they ran
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["attest", "--out", str(out), "--nonce", "00112233", "--state-dir", str(state), "--chip", "psp-chip",
                     "--vcpus", "2"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory, attested: pathlib.Path) -> pathlib.Path:
    """A report asked of the PSP directly with VMPCK0 (same chip as ``attested``)."""
    out = tmp_path_factory.mktemp("direct")
    state = tmp_path_factory.getbasetemp()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["attest", "--direct", "--out", str(out), "--nonce", "00112233", "--state-dir", str(state),
                     "--chip", "psp-chip", "--vcpus", "2"]) == 0  # fmt: skip
    return out


def _openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    tool = require_tool("openssl", "apt-get install openssl")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=check)


def test_openssl_verifies_chain(attested: pathlib.Path) -> None:
    r = _openssl("verify", "-CAfile", str(attested / "ark.pem"), "-untrusted", str(attested / "ask.pem"), str(attested / "vcek.pem"))
    assert r.stdout.strip().endswith(": OK")
    text = _openssl("x509", "-in", str(attested / "vcek.pem"), "-noout", "-text").stdout
    assert "rsassaPss" in text and ("secp384r1" in text or "P-384" in text)
    assert "1.3.6.1.4.1.3704.1.4" in text  # hwID extension
    # the VCEK alone is not trusted without the ASK
    bad = _openssl("verify", "-CAfile", str(attested / "ark.pem"), str(attested / "vcek.pem"), check=False)
    assert bad.returncode != 0


def _signature_files(tmp: pathlib.Path, report: bytes, vcek: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    parsed = AttestationReport.from_bytes(report)
    sig, signed, pub = tmp / "sig.der", tmp / "signed.bin", tmp / "pub.pem"
    sig.write_bytes(encode_dss_signature(parsed.signature_r, parsed.signature_s))
    signed.write_bytes(report[:0x2A0])
    pub.write_text(_openssl("x509", "-in", str(vcek), "-pubkey", "-noout").stdout)
    return sig, signed, pub


def test_openssl_verifies_report_signature(attested: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = (attested / "report.bin").read_bytes()
    sig, signed, pub = _signature_files(tmp_path, report, attested / "vcek.pem")
    ok = _openssl("dgst", "-sha384", "-verify", str(pub), "-signature", str(sig), str(signed))
    assert "Verified OK" in ok.stdout
    flipped = bytearray(report[:0x2A0])
    flipped[0x90] ^= 0x80  # one bit of MEASUREMENT
    signed.write_bytes(bytes(flipped))
    bad = _openssl("dgst", "-sha384", "-verify", str(pub), "-signature", str(sig), str(signed), check=False)
    assert bad.returncode != 0


def test_svsm_verify(attested: pathlib.Path, direct: pathlib.Path, tmp_path: pathlib.Path,
                     tmp_path_factory: pytest.TempPathFactory) -> None:  # fmt: skip
    pin = ["--state-dir", str(tmp_path_factory.getbasetemp()), "--chip", "psp-chip"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["verify", str(attested), "--json", "--nonce", "00112233", *pin]) == 0
    doc = json.loads(out.getvalue())
    nonce = bytes.fromhex("00112233").ljust(64, b"\0")
    bound = hashlib.sha512(nonce + (attested / "manifest.bin").read_bytes()).hexdigest()
    assert doc["verified"] and doc["report"]["report_data"] == bound and doc["report"]["version"] == 3
    assert doc["report"]["vmpl"] == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["verify", str(direct), "--json", "--nonce", "00112233", *pin]) == 0
    assert json.loads(out.getvalue())["report"]["report_data"] == nonce.hex()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["verify", str(attested), *pin]) == 0
        assert main(["verify", str(attested), "--nonce", "ff", *pin]) == 1
        assert main(["verify", str(direct), "--nonce", "ff", *pin]) == 1
    for name in ("report.bin", "ark.pem", "ask.pem", "vcek.pem"):
        (tmp_path / name).write_bytes((attested / name).read_bytes())
    report = bytearray((attested / "report.bin").read_bytes())
    report[0x50] ^= 1  # REPORT_DATA
    (tmp_path / "report.bin").write_bytes(bytes(report))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["verify", str(tmp_path), *pin]) == 1


def test_svsm_verify_trusts_only_the_local_chip_by_default(attested: pathlib.Path, tmp_path: pathlib.Path,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:  # fmt: skip
    """A report whose chain ends in some other ARK (another chip, or the host's own) is refused."""
    other = tmp_path_factory.mktemp("other-chips")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["attest", "--direct", "--out", str(tmp_path), "--state-dir", str(other), "--chip", "rogue"]) == 0
        pin = ["--state-dir", str(tmp_path_factory.getbasetemp()), "--chip", "psp-chip"]
        assert main(["verify", str(tmp_path), *pin]) == 1
        assert main(["verify", str(attested), *pin]) == 0
        assert main(["verify", str(tmp_path), "--state-dir", str(other), "--chip", "nochip"]) == 2  # no root to trust
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["verify", str(tmp_path), "--no-pin", "--json"]) == 0
    assert json.loads(out.getvalue())["root_pinned"] is False


def test_attest_is_stable_across_runs(attested: pathlib.Path, direct: pathlib.Path, tmp_path: pathlib.Path,
                                     tmp_path_factory: pytest.TempPathFactory) -> None:  # fmt: skip
    state = tmp_path_factory.getbasetemp()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["attest", "--direct", "--out", str(tmp_path), "--state-dir", str(state), "--chip", "psp-chip",
                     "--vcpus", "2", "--report-version", "5"]) == 0  # fmt: skip
    assert (tmp_path / "vcek.pem").read_bytes() == (attested / "vcek.pem").read_bytes() == (direct / "vcek.pem").read_bytes()
    a = AttestationReport.from_bytes((direct / "report.bin").read_bytes())
    b = AttestationReport.from_bytes((tmp_path / "report.bin").read_bytes())
    assert a.chip_id == b.chip_id and a.measurement == b.measurement and b.version == 5


def test_svsm_verify_pinned_root(direct: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["verify", str(direct), "--ark", str(direct / "ark.pem")]) == 0
        assert main(["verify", str(direct), "--ark", str(direct / "ask.pem")]) == 1  # not the pinned root
        assert main(["verify", str(direct), "--ark", str(tmp_path / "missing.pem")]) == 2

"""Quote, Certify, GetTime: TPMS_ATTEST layout and signatures checked with cryptography."""

from __future__ import annotations

import hashlib
import struct

import pytest

pytss = pytest.importorskip("tpm2_pytss")
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402
from tpm2_pytss import ESYS_TR, TPM2_ALG  # noqa: E402
from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPML_PCR_SELECTION, TPMT_SIG_SCHEME  # noqa: E402


def _ak(esys):
    srk = esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("rsa2048:aes128cfb",
                                                                             objectAttributes=0x30072))[0]
    tpl = TPM2B_PUBLIC.parse("rsa2048:rsassa-sha256", objectAttributes=0x50072)
    tpl.publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG.NULL
    priv, pub, *_ = esys.create(srk, TPM2B_SENSITIVE_CREATE(), tpl)
    return esys.load(srk, priv, pub), pub, srk


def _verify(pub, attest: bytes, sig) -> None:
    from tpm2_pytss.cryptography import public_to_key
    key = public_to_key(pub.publicArea)
    key.verify(bytes(sig.signature.rsassa.sig), attest, padding.PKCS1v15(), hashes.SHA256())


def _parse_header(attest: bytes) -> tuple[int, bytes, bytes, int]:
    magic, typ = struct.unpack(">IH", attest[:6])
    assert magic == 0xFF544347
    n = struct.unpack(">H", attest[6:8])[0]
    signer = attest[8:8 + n]
    m = struct.unpack(">H", attest[8 + n:10 + n])[0]
    extra = attest[10 + n:10 + n + m]
    return typ, signer, extra, 10 + n + m + 17 + 8  # clock info (17) + firmwareVersion (8)


def test_quote_layout_pcr_digest_and_signature(esys) -> None:
    ak, pub, _ = _ak(esys)
    quoted, sig = esys.quote(ak, TPML_PCR_SELECTION.parse("sha256:0,1"), b"nonce", TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    attest = bytes(quoted.marshal())[2:]
    typ, signer, extra, pos = _parse_header(attest)
    assert typ == 0x8018 and extra == b"nonce"
    assert signer == bytes(esys.read_public(ak)[2])  # qualified name of the signer
    pcr_digest = attest[pos + 4 + 6 + 2:]
    assert pcr_digest == hashlib.sha256(bytes(64)).digest()
    _verify(pub, attest, sig)


def test_certify_and_get_time(esys) -> None:
    ak, pub, srk = _ak(esys)
    info, sig = esys.certify(srk, ak, b"q", TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    attest = bytes(info.marshal())[2:]
    typ, _, extra, pos = _parse_header(attest)
    assert typ == 0x8017 and extra == b"q"
    name_len = struct.unpack(">H", attest[pos:pos + 2])[0]
    assert attest[pos + 2:pos + 2 + name_len] == bytes(esys.read_public(srk)[1])
    _verify(pub, attest, sig)
    tinfo, tsig = esys.get_time(ak, b"t", TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), privacy_admin_handle=ESYS_TR.ENDORSEMENT)
    attest = bytes(tinfo.marshal())[2:]
    assert _parse_header(attest)[0] == 0x8019
    _verify(pub, attest, tsig)


def test_certify_creation_checks_the_ticket(esys) -> None:
    ak, pub, srk = _ak(esys)
    h, opub, cdata, chash, ticket = esys.create_primary(
        TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=0x30072))
    info, sig = esys.certify_creation(ak, h, b"cc", chash, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket)
    attest = bytes(info.marshal())[2:]
    assert _parse_header(attest)[0] == 0x801A and attest.endswith(bytes(chash.marshal()))
    _verify(pub, attest, sig)
    with pytest.raises(pytss.TSS2_Exception) as e:
        esys.certify_creation(ak, h, b"cc", b"\x00" * 32, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket)
    assert e.value.rc == 0x4E0  # TICKET, parameter 4


def test_nv_certify(esys) -> None:
    from tpm2_pytss import TPMA_NV
    from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC
    ak, pub, _ = _ak(esys)
    attrs = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE
    nv = esys.nv_define_space(b"", TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=0x01000200, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=16)))
    esys.nv_write(nv, b"0123456789abcdef", 0)
    info, sig = esys.nv_certify(ak, nv, b"n", TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), 4, 2, auth_handle=nv)
    attest = bytes(info.marshal())[2:]
    assert _parse_header(attest)[0] == 0x8014 and attest.endswith(struct.pack(">HH", 2, 4) + b"2345")
    _verify(pub, attest, sig)


def test_clock_info_is_obfuscated_for_owner_keys_only(esys, tpm) -> None:
    ak, pub, _ = _ak(esys)
    quoted, _ = esys.quote(ak, TPML_PCR_SELECTION.parse("sha256:0"), b"", TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    attest = bytes(quoted.marshal())[2:]
    _, _, _, end = _parse_header(attest)
    reset, restart = struct.unpack(">II", attest[end - 25 + 8:end - 25 + 16])
    assert (reset, restart) != (tpm.reset_count, tpm.restart_count)
    tpl = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=0x50072)
    tpl.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
    ek_ak = esys.create_primary(TPM2B_SENSITIVE_CREATE(), tpl, primary_handle=ESYS_TR.ENDORSEMENT)[0]
    quoted, _ = esys.quote(ek_ak, TPML_PCR_SELECTION.parse("sha256:0"), b"", TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    attest = bytes(quoted.marshal())[2:]
    _, _, _, end = _parse_header(attest)
    assert struct.unpack(">II", attest[end - 25 + 8:end - 25 + 16]) == (tpm.reset_count, tpm.restart_count)


def test_command_audit_digest(esys) -> None:
    import hashlib
    from tpm2_pytss.types import TPML_CC
    esys.set_command_code_audit_status(TPM2_ALG.SHA256, TPML_CC([0x17B]), TPML_CC([]))
    h = lambda *p: hashlib.sha256(b"".join(p)).digest()  # noqa: E731
    params = struct.pack(">HII", 0x000B, 1, 0x17B) + struct.pack(">I", 0)
    digest = h(bytes(32), h(struct.pack(">II", 0x140, 0x40000001), params), h(bytes(4), struct.pack(">I", 0x140)))
    for _ in range(2):
        rnd = bytes(esys.get_random(4))
        digest = h(digest, h(struct.pack(">IH", 0x17B, 4)), h(bytes(4), struct.pack(">IH", 0x17B, 4), rnd))
    info, _ = esys.get_command_audit_digest(ESYS_TR.NULL, b"")
    attest = bytes(info.marshal())[2:]
    _, _, _, pos = _parse_header(attest)
    counter, alg = struct.unpack(">QH", attest[pos:pos + 10])
    assert counter == 1 and alg == 0x000B
    assert attest[pos + 10:pos + 12 + 32] == struct.pack(">H", 32) + digest
    assert attest.endswith(struct.pack(">H", 32) + h(struct.pack(">II", 0x140, 0x17B)))
    more, cap = esys.get_capability(4, 0, 10)
    assert sorted(int(c) for c in cap.data.auditCommands) == [0x140, 0x17B]

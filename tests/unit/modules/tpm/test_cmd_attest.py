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

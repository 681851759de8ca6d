"""tpm2-pytss (ESAPI) against every served target over mssim and swtpm TCTIs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from svsm.sdk.testing import require_module

from .conftest import Target

pytestmark = pytest.mark.slow


@pytest.fixture
def esys(target: Target) -> Iterator[Any]:
    pytss = require_module("tpm2_pytss", "pip install tpm2-pytss")
    tcti = pytss.TCTILdr(target.transport, target.tcti.split(":", 1)[1])
    ctx = pytss.ESAPI(tcti)
    try:
        yield ctx
    finally:
        # No resource manager: leave no transient objects behind for the next test.
        for handle in _transients(ctx, pytss):
            ctx.flush_context(ctx.tr_from_tpmpublic(handle))
        ctx.close()


def _transients(ctx: Any, pytss: Any) -> list[int]:
    _, data = ctx.get_capability(pytss.TPM2_CAP.HANDLES, 0x80000000, 64)
    return list(data.data.handles)


def _ecc_template(pytss: Any, sign: bool) -> Any:
    attrs = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|" + ("sign" if sign else "restricted|decrypt")
    alg = "ecc256:ecdsa-sha256:null" if sign else "ecc256:null:aes128cfb"
    return pytss.TPM2B_PUBLIC.parse(alg, objectAttributes=attrs)


def test_random_and_capability(esys: Any) -> None:
    pytss = require_module("tpm2_pytss")
    a, b = bytes(esys.get_random(16)), bytes(esys.get_random(16))
    assert len(a) == 16 and a != b
    _, caps = esys.get_capability(pytss.TPM2_CAP.TPM_PROPERTIES, pytss.TPM2_PT.FIXED, 64)
    props = {p.property: p.value for p in caps.data.tpmProperties}
    assert props[0x112] == 24  # TPM_PT_PCR_COUNT
    assert props[0x11E] <= 4096  # TPM_PT_MAX_COMMAND_SIZE


def test_pcr_extend_read(esys: Any) -> None:
    pytss = require_module("tpm2_pytss")
    esys.pcr_reset(pytss.ESYS_TR.PCR16)
    digest = hashlib.sha256(b"pytss").digest()
    values = pytss.TPML_DIGEST_VALUES([pytss.TPMT_HA(hashAlg=pytss.TPM2_ALG.SHA256, digest=pytss.TPMU_HA(sha256=digest))])
    esys.pcr_extend(pytss.ESYS_TR.PCR16, values)
    _, _, read = esys.pcr_read(pytss.TPML_PCR_SELECTION.parse("sha256:16"))
    assert bytes(read[0]) == hashlib.sha256(b"\0" * 32 + digest).digest()


def test_ecc_sign_verified_by_cryptography(esys: Any) -> None:
    pytss = require_module("tpm2_pytss")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key, pub, *_ = esys.create_primary(pytss.TPM2B_SENSITIVE_CREATE(), _ecc_template(pytss, sign=True))
    msg = b"pytss over the vTPM"
    digest = pytss.TPM2B_DIGEST(hashlib.sha256(msg).digest())
    scheme = pytss.TPMT_SIG_SCHEME(scheme=pytss.TPM2_ALG.ECDSA)
    scheme.details.any.hashAlg = pytss.TPM2_ALG.SHA256
    ticket = pytss.TPMT_TK_HASHCHECK(tag=pytss.TPM2_ST.HASHCHECK, hierarchy=pytss.TPM2_RH.NULL)
    sig = esys.sign(key, digest, scheme, ticket)
    r = int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big")
    s = int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big")
    crypto_key = load_pem_public_key(pub.to_pem())
    crypto_key.verify(encode_dss_signature(r, s), msg, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        crypto_key.verify(encode_dss_signature(r, s), msg + b"!", ec.ECDSA(hashes.SHA256()))


def test_hmac_session_with_parameter_encryption(esys: Any) -> None:
    pytss = require_module("tpm2_pytss")
    parent, *_ = esys.create_primary(pytss.TPM2B_SENSITIVE_CREATE(), _ecc_template(pytss, sign=False))
    sym = pytss.TPMT_SYM_DEF(algorithm=pytss.TPM2_ALG.AES, keyBits=pytss.TPMU_SYM_KEY_BITS(aes=128), mode=pytss.TPMU_SYM_MODE(aes=pytss.TPM2_ALG.CFB))
    session = esys.start_auth_session(parent, pytss.ESYS_TR.NONE, pytss.TPM2_SE.HMAC, sym, pytss.TPM2_ALG.SHA256)
    attrs = pytss.TPMA_SESSION.CONTINUESESSION | pytss.TPMA_SESSION.ENCRYPT | pytss.TPMA_SESSION.DECRYPT
    esys.trsess_set_attributes(session, attrs)
    a = bytes(esys.get_random(16, session1=session))
    b = bytes(esys.get_random(16, session1=session))
    assert len(a) == 16 and a != b
    # Seal and unseal with both directions encrypted.
    sealed = pytss.TPM2B_PUBLIC.parse("keyedhash", objectAttributes="fixedtpm|fixedparent|userwithauth")
    priv, pub, *_ = esys.create(parent, pytss.TPM2B_SENSITIVE_CREATE(pytss.TPMS_SENSITIVE_CREATE(data=pytss.TPM2B_SENSITIVE_DATA(b"s3cret"))), sealed, session1=session)
    obj = esys.load(parent, priv, pub)
    assert bytes(esys.unseal(obj, session1=session)) == b"s3cret"
    esys.flush_context(session)

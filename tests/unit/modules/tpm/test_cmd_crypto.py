"""HMAC and hash sequences, RSA encrypt/decrypt, ECDH, symmetric EncryptDecrypt, signing rules."""

from __future__ import annotations

import hashlib
import hmac

import pytest

pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR, TPM2_ALG, TPMA_OBJECT, TSS2_Exception  # noqa: E402
from tpm2_pytss.types import (TPM2B_DIGEST, TPM2B_ECC_POINT, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE,  # noqa: E402
                              TPMS_SENSITIVE_CREATE, TPM2B_SENSITIVE_DATA, TPMT_RSA_DECRYPT, TPMT_SIG_SCHEME,
                              TPMT_TK_HASHCHECK)

SRK = 0x00030072


def srk(esys):
    return esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=SRK))[0]


def child(esys, parent, tpl: TPM2B_PUBLIC, data: bytes = b""):
    s = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(data)))
    priv, pub, *_ = esys.create(parent, s, tpl)
    return esys.load(parent, priv, pub), pub


def test_hmac_key_and_sequences(esys) -> None:
    p = srk(esys)
    tpl = TPM2B_PUBLIC.parse("hmac:sha256", objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH
                             | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
    key, _ = child(esys, p, tpl, data=b"k" * 32)
    expect = hmac.new(b"k" * 32, b"hello world", hashlib.sha256).digest()
    assert bytes(esys.hmac(key, b"hello world", TPM2_ALG.NULL)) == expect
    seq = esys.hmac_start(key, b"", TPM2_ALG.SHA256)
    esys.sequence_update(seq, b"hello ")
    out, _ = esys.sequence_complete(seq, b"world", ESYS_TR.NULL)
    assert bytes(out) == expect
    hseq = esys.hash_sequence_start(b"", TPM2_ALG.SHA384)
    esys.sequence_update(hseq, b"a" * 1000)
    digest, ticket = esys.sequence_complete(hseq, b"b", ESYS_TR.OWNER)
    assert bytes(digest) == hashlib.sha384(b"a" * 1000 + b"b").digest()
    assert ticket.hierarchy == ESYS_TR.OWNER or int(ticket.hierarchy) == 0x40000001
    with pytest.raises(TSS2_Exception) as e:
        esys.hmac(key, b"x", TPM2_ALG.SHA1)  # differs from the key's scheme hash
    assert e.value.rc == 0x2C4


def test_restricted_key_signs_only_with_a_valid_ticket(esys) -> None:
    p = srk(esys)
    tpl = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=0x50072)
    tpl.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
    ak, _ = child(esys, p, tpl)
    digest, ticket = esys.hash(b"data", TPM2_ALG.SHA256, ESYS_TR.OWNER)
    esys.sign(ak, digest, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket)
    null_ticket = TPMT_TK_HASHCHECK(tag=0x8024, hierarchy=0x40000007)
    with pytest.raises(TSS2_Exception) as e:
        esys.sign(ak, digest, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), null_ticket)
    assert e.value.rc == 0x3E0  # TICKET, parameter 3
    forged, ticket2 = esys.hash(b"\xffTCG forged attestation", TPM2_ALG.SHA256, ESYS_TR.OWNER)
    assert int(ticket2.hierarchy) == 0x40000007  # TPM_GENERATED data gets no ticket
    with pytest.raises(TSS2_Exception) as e:
        esys.sign(ak, digest, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), TPMT_TK_HASHCHECK(tag=0x8024, hierarchy=0x40000001,
                                                                                        digest=TPM2B_DIGEST(b"x" * 32)))
    assert e.value.rc == 0x3E0


def test_sign_scheme_rules(esys) -> None:
    p = srk(esys)
    key, _ = child(esys, p, TPM2B_PUBLIC.parse("ecc256", objectAttributes=0x40072))  # scheme NULL
    digest, ticket = esys.hash(b"m", TPM2_ALG.SHA256, ESYS_TR.OWNER)
    with pytest.raises(TSS2_Exception) as e:
        esys.sign(key, digest, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket)
    assert e.value.rc == 0x2D2  # SCHEME, parameter 2
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
    scheme.details.any.hashAlg = TPM2_ALG.SHA256
    esys.sign(key, digest, scheme, ticket)
    with pytest.raises(TSS2_Exception) as e:
        esys.sign(key, TPM2B_DIGEST(b"x" * 20), scheme, ticket)
    assert e.value.rc == 0x1D5  # SIZE, parameter 1


def test_rsa_encrypt_decrypt_oaep(esys) -> None:
    p = srk(esys)
    key, _ = child(esys, p, TPM2B_PUBLIC.parse("rsa2048:oaep-sha256", objectAttributes=0x20072))
    ct = esys.rsa_encrypt(key, b"message", TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL), b"label")
    assert bytes(esys.rsa_decrypt(key, ct, TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL), b"label")) == b"message"
    with pytest.raises(TSS2_Exception) as e:
        esys.rsa_decrypt(key, ct, TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL), b"other")
    assert e.value.rc == 0x1C4


def test_ecdh_keygen_and_zgen_agree(esys) -> None:
    p = srk(esys)
    key, _ = child(esys, p, TPM2B_PUBLIC.parse("ecc256:ecdh-sha256", objectAttributes=0x20072))
    z, pub_point = esys.ecdh_key_gen(key)
    z2 = esys.ecdh_zgen(key, pub_point)
    assert bytes(z.point.x) == bytes(z2.point.x) and bytes(z.point.y) == bytes(z2.point.y)
    bad = TPM2B_ECC_POINT(pub_point.point)
    bad.point.y = b"\x01" * 32
    with pytest.raises(TSS2_Exception) as e:
        esys.ecdh_zgen(key, bad)
    assert e.value.rc == 0x1E7  # ECC_POINT, parameter 1


@pytest.mark.parametrize("mode", [TPM2_ALG.CFB, TPM2_ALG.CBC, TPM2_ALG.CTR, TPM2_ALG.OFB, TPM2_ALG.ECB])
def test_encrypt_decrypt2_round_trip(esys, mode: int) -> None:
    p = srk(esys)
    tpl = TPM2B_PUBLIC.parse("aes128", objectAttributes=TPMA_OBJECT.DECRYPT | TPMA_OBJECT.SIGN_ENCRYPT
                             | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                             | TPMA_OBJECT.SENSITIVEDATAORIGIN)
    tpl.publicArea.parameters.symDetail.sym.mode.aes = TPM2_ALG.NULL
    key, _ = child(esys, p, tpl)
    data = bytes(range(64))
    ct, iv_out = esys.encrypt_decrypt_2(key, False, mode, b"\x00" * 16, data)
    assert bytes(ct) != data
    pt, _ = esys.encrypt_decrypt_2(key, True, mode, b"\x00" * 16, ct)
    assert bytes(pt) == data
    if mode == TPM2_ALG.CBC:
        with pytest.raises(TSS2_Exception) as e:
            esys.encrypt_decrypt_2(key, False, mode, b"\x00" * 16, b"short")
        assert e.value.rc == 0x1D5  # SIZE on inData (parameter 1)


def test_event_sequence_extends_every_bank(esys) -> None:
    from tpm2_pytss.types import TPML_PCR_SELECTION
    seq = esys.hash_sequence_start(b"", TPM2_ALG.NULL)
    esys.sequence_update(seq, b"event ")
    vals = esys.event_sequence_complete(ESYS_TR.PCR10, seq, b"data")
    got = {int(v.hashAlg): bytes(v.digest.sha256 if v.hashAlg == TPM2_ALG.SHA256 else b"") for v in vals}
    assert got[TPM2_ALG.SHA256] == hashlib.sha256(b"event data").digest()
    _, _, pcrs = esys.pcr_read(TPML_PCR_SELECTION.parse("sha256:10"))
    assert bytes(pcrs[0]) == hashlib.sha256(bytes(32) + hashlib.sha256(b"event data").digest()).digest()


def test_long_sequences_hash_incrementally(esys) -> None:
    seq = esys.hash_sequence_start(b"", TPM2_ALG.SHA256)
    for i in range(10):
        esys.sequence_update(seq, bytes([i]) * 1024)
    with pytest.raises(TSS2_Exception) as e:  # too much data to fit a context blob (documented deviation)
        esys.context_save(seq)
    assert e.value.rc == 0x904
    digest, ticket = esys.sequence_complete(seq, b"end", ESYS_TR.OWNER)
    assert bytes(digest) == hashlib.sha256(b"".join(bytes([i]) * 1024 for i in range(10)) + b"end").digest()
    gen = esys.hash_sequence_start(b"", TPM2_ALG.SHA256)
    esys.sequence_update(gen, b"\xffTC")
    esys.sequence_update(gen, b"G spoofed")  # TPM_GENERATED split across updates still gets no ticket
    _, ticket = esys.sequence_complete(gen, b"", ESYS_TR.OWNER)
    assert int(ticket.hierarchy) == 0x40000007


def test_ecc_parameters_describe_the_curve(esys) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    params = esys.ecc_parameters(3)  # NIST P-256
    g = ec.derive_private_key(1, ec.SECP256R1()).public_key().public_numbers()
    assert int(params.keySize) == 256 and int.from_bytes(bytes(params.gX), "big") == g.x
    assert int.from_bytes(bytes(params.p), "big") == 2**256 - 2**224 + 2**192 + 2**96 - 1
    with pytest.raises(TSS2_Exception) as e:
        esys.ecc_parameters(0x20)  # SM2 is not implemented
    assert e.value.rc == 0x1E6  # CURVE, parameter 1

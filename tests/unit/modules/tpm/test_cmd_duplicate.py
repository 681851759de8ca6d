"""Import of keys wrapped by tpm2-pytss (independent implementation) and Duplicate -> Import round trips."""

from __future__ import annotations

import hashlib
import struct

import pytest

pytss = pytest.importorskip("tpm2_pytss")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_OBJECT, TSS2_Exception  # noqa: E402
from tpm2_pytss.types import (TPM2B_DIGEST, TPM2B_PUBLIC, TPM2B_SENSITIVE, TPM2B_SENSITIVE_CREATE,  # noqa: E402
                              TPMT_SIG_SCHEME, TPMT_SYM_DEF, TPMT_SYM_DEF_OBJECT, TPMU_SYM_KEY_BITS, TPMU_SYM_MODE)

AES128CFB = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128),
                                mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB))


def _parent(esys, alg: str):
    h, pub, *_ = esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse(alg, objectAttributes=0x30072))
    return h, pub


@pytest.mark.parametrize("parent_alg", ["rsa2048:aes128cfb", "ecc256:aes128cfb"])
@pytest.mark.parametrize("inner", [False, True])
def test_import_key_wrapped_by_pytss(esys, parent_alg: str, inner: bool) -> None:
    from tpm2_pytss.utils import wrap
    parent, ppub = _parent(esys, parent_alg)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = TPM2B_PUBLIC.from_pem(pem, objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH)
    sens = TPM2B_SENSITIVE.from_pem(pem)
    symdef = AES128CFB if inner else None
    enckey, dup, seed = wrap(ppub.publicArea, pub, sens, symdef=symdef)
    priv = esys.import_(parent, enckey, pub, dup, seed,
                        AES128CFB if inner else TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL))
    h = esys.load(parent, priv, pub)
    digest = hashlib.sha256(b"imported").digest()
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
    scheme.details.any.hashAlg = TPM2_ALG.SHA256
    sig = esys.sign(h, digest, scheme, pytss.types.TPMT_TK_HASHCHECK(tag=0x8024, hierarchy=0x40000007))
    esys.verify_signature(h, digest, sig)
    bad = bytearray(bytes(dup.marshal())[2:])
    bad[5] ^= 1
    with pytest.raises(TSS2_Exception) as e:
        esys.import_(parent, enckey, pub, pytss.types.TPM2B_PRIVATE(bytes(bad)), seed,
                     AES128CFB if inner else TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL))
    assert e.value.rc == 0x3DF  # INTEGRITY, parameter 3


def test_duplicate_needs_policy_and_round_trips(esys) -> None:
    src, _ = _parent(esys, "rsa2048:aes128cfb")
    dst, _ = _parent(esys, "ecc256:aes128cfb")
    policy = hashlib.sha256(bytes(32) + struct.pack(">II", 0x16C, 0x14B)).digest()  # PolicyCommandCode(Duplicate)
    tpl = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT
                             | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SENSITIVEDATAORIGIN)
    tpl.publicArea.authPolicy = TPM2B_DIGEST(policy)
    priv, pub, *_ = esys.create(src, TPM2B_SENSITIVE_CREATE(), tpl)
    obj = esys.load(src, priv, pub)
    with pytest.raises(TSS2_Exception) as e:
        esys.duplicate(obj, dst, b"", TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL), session1=ESYS_TR.PASSWORD)
    assert e.value.rc == 0x124  # AUTH_TYPE: the DUP role needs a policy session
    p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                TPM2_ALG.SHA256)
    esys.policy_command_code(p, 0x14B)
    enckey, dup, seed = esys.duplicate(obj, dst, b"", AES128CFB, session1=p)
    new_priv = esys.import_(dst, enckey, pub, dup, seed, AES128CFB)
    moved = esys.load(dst, new_priv, pub)
    assert bytes(esys.read_public(moved)[1]) == bytes(esys.read_public(obj)[1])

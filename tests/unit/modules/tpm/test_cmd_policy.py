"""Policy commands beyond the basics: PolicySigned, PolicyAuthorize, PolicyNV, PolicyLocality, PolicyCpHash,
plus session-start argument checks."""

from __future__ import annotations

import hashlib
import struct

import pytest
from tpm_test_helpers import rc_of

pytss = pytest.importorskip("tpm2_pytss")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature  # noqa: E402
from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_NV, TPMA_OBJECT, TSS2_Exception  # noqa: E402
from tpm2_pytss.types import (TPM2B_AUTH, TPM2B_DIGEST, TPM2B_NV_PUBLIC, TPM2B_PUBLIC,  # noqa: E402
                              TPM2B_SENSITIVE_CREATE, TPM2B_SENSITIVE_DATA, TPMS_NV_PUBLIC, TPMS_SENSITIVE_CREATE,
                              TPMT_SIGNATURE, TPMT_SYM_DEF)

NULL_SYM = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)


def _session(esys, kind=TPM2_SE.POLICY):
    return esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, kind, NULL_SYM, TPM2_ALG.SHA256)


def _ext_key(esys):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub = TPM2B_PUBLIC.from_pem(pem, objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH)
    return key, esys.load_external(pub, hierarchy=ESYS_TR.OWNER), pub


def _ecdsa(key, digest: bytes) -> TPMT_SIGNATURE:
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
    sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    sig.signature.ecdsa.hash = TPM2_ALG.SHA256
    sig.signature.ecdsa.signatureR = r.to_bytes(32, "big")
    sig.signature.ecdsa.signatureS = s.to_bytes(32, "big")
    return sig


def test_policy_signed_digest_and_signature_check(esys) -> None:
    key, h, pub = _ext_key(esys)
    p = _session(esys)
    nonce = bytes(esys.trsess_get_nonce_tpm(p))
    a_hash = hashlib.sha256(nonce + struct.pack(">i", 0) + b"" + b"ref").digest()
    esys.policy_signed(h, p, _ecdsa(key, a_hash), nonce, b"", b"ref", 0)
    name = bytes(pub.publicArea.get_name())
    d1 = hashlib.sha256(bytes(32) + struct.pack(">I", 0x160) + name).digest()
    assert bytes(esys.policy_get_digest(p)) == hashlib.sha256(d1 + b"ref").digest()
    p2 = _session(esys)
    with pytest.raises(TSS2_Exception) as e:
        esys.policy_signed(h, p2, _ecdsa(key, a_hash), bytes(esys.trsess_get_nonce_tpm(p2)), b"", b"ref", 0)
    assert e.value.rc == 0x5DB  # SIGNATURE, parameter 5 (signed over another session's nonce)


def test_policy_authorize_with_verified_ticket(esys) -> None:
    key, h, pub = _ext_key(esys)
    srk = esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("ecc256:aes128cfb",
                                                                             objectAttributes=0x30072))[0]
    approved = hashlib.sha256(bytes(32) + struct.pack(">I", 0x16B)).digest()  # PolicyAuthValue
    key_name = bytes(pub.publicArea.get_name())
    a_hash = hashlib.sha256(approved + b"").digest()
    ticket = esys.verify_signature(h, a_hash, _ecdsa(key, a_hash))
    trial = _session(esys, TPM2_SE.TRIAL)
    esys.policy_authorize(trial, b"", key_name, ticket)
    auth_policy = bytes(esys.policy_get_digest(trial))
    sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(b"pw"), data=TPM2B_SENSITIVE_DATA(b"az")))
    tpl = TPM2B_PUBLIC.parse("keyedhash", objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
    tpl.publicArea.authPolicy = TPM2B_DIGEST(auth_policy)
    sealed = esys.load(srk, *esys.create(srk, sens, tpl)[:2])
    esys.tr_set_auth(sealed, b"pw")
    p = _session(esys)
    esys.policy_auth_value(p)
    esys.policy_authorize(p, approved, key_name, ticket)
    assert bytes(esys.unseal(sealed, session1=p)) == b"az"
    p = _session(esys)
    with pytest.raises(TSS2_Exception) as e:  # current digest is not the approved one
        esys.policy_authorize(p, approved, key_name, ticket)
    assert e.value.rc == 0x1C4


def test_policy_nv_compares_index_contents(esys) -> None:
    attrs = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE | TPMA_NV.NO_DA
    nv = esys.nv_define_space(b"", TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=0x01000100, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=8)))
    esys.nv_write(nv, struct.pack(">Q", 5), 0)
    p = _session(esys)
    esys.policy_nv(nv, nv, p, struct.pack(">Q", 5), 0x0000)  # TPM_EO_EQ
    esys.policy_nv(nv, nv, p, struct.pack(">Q", 3), 0x0003)  # unsigned greater than
    with pytest.raises(TSS2_Exception) as e:
        esys.policy_nv(nv, nv, p, struct.pack(">Q", 9), 0x0003)
    assert e.value.rc == 0x126  # TPM_RC_POLICY


def test_start_auth_session_argument_checks(run) -> None:
    def start(nonce: bytes, salt: bytes = b"", typ: int = 0, sym: bytes = b"\x00\x10", alg: int = 0x000B) -> int:
        params = struct.pack(">H", len(nonce)) + nonce + struct.pack(">H", len(salt)) + salt + bytes((typ,)) + sym \
            + struct.pack(">H", alg)
        return rc_of(run(0x176, (0x40000007, 0x40000007), params))
    assert start(bytes(15)) == 0x1D5  # nonce too short: SIZE, parameter 1
    assert start(bytes(33)) == 0x1D5  # longer than the digest
    assert start(bytes(16), salt=b"x") == 0x2C4  # salt without a key: VALUE, parameter 2
    assert start(bytes(16), typ=2) == 0x3C4
    assert start(bytes(16), sym=bytes.fromhex("000600800042")) == 0x4C9  # AES-CBC: MODE, parameter 4
    assert start(bytes(16), alg=0x0010) == 0x5C3  # HASH, parameter 5
    assert start(bytes(32)) == 0


def test_policy_locality_and_cp_hash(esys) -> None:
    p = _session(esys)
    esys.policy_locality(p, 0x01)
    with pytest.raises(TSS2_Exception):
        esys.policy_locality(p, 0x02)
    esys.policy_cp_hash(p, b"\x11" * 32)
    with pytest.raises(TSS2_Exception) as e:
        esys.policy_cp_hash(p, b"\x22" * 32)
    assert e.value.rc == 0x151  # CPHASH
    d1 = hashlib.sha256(bytes(32) + struct.pack(">I", 0x16F) + b"\x01").digest()
    assert bytes(esys.policy_get_digest(p)) == hashlib.sha256(d1 + struct.pack(">I", 0x16E) + b"\x11" * 32).digest()


def test_policy_counter_timer_and_physical_presence(esys, clock) -> None:
    clock.now += 5  # TPM time is 5000 ms
    p = _session(esys)
    esys.policy_counter_timer(p, struct.pack(">Q", 0), 0x0003)  # time > 0 (unsigned greater than)
    with pytest.raises(TSS2_Exception) as e:
        esys.policy_counter_timer(p, struct.pack(">Q", 10**12), 0x0003)
    assert e.value.rc == 0x126
    esys.policy_physical_presence(p)
    args = hashlib.sha256(struct.pack(">Q", 0) + struct.pack(">HH", 0, 3)).digest()
    d1 = hashlib.sha256(bytes(32) + struct.pack(">I", 0x16D) + args).digest()
    assert bytes(esys.policy_get_digest(p)) == hashlib.sha256(d1 + struct.pack(">I", 0x187)).digest()


def test_policy_duplication_select_binds_the_new_parent(esys) -> None:
    src = esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("rsa2048:aes128cfb",
                                                                             objectAttributes=0x30072))[0]
    a = esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("ecc256:aes128cfb",
                                                                           objectAttributes=0x30072))[0]
    b = esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("ecc384:aes128cfb",
                                                                           objectAttributes=0x30072))[0]
    a_name = bytes(esys.read_public(a)[1])
    trial = _session(esys, TPM2_SE.TRIAL)
    esys.policy_duplication_select(trial, b"", a_name, False)
    policy = bytes(esys.policy_get_digest(trial))
    tpl = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT
                             | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SENSITIVEDATAORIGIN)
    tpl.publicArea.authPolicy = TPM2B_DIGEST(policy)
    priv, pub, *_ = esys.create(src, TPM2B_SENSITIVE_CREATE(), tpl)
    obj = esys.load(src, priv, pub)
    obj_name = bytes(esys.read_public(obj)[1])
    null = pytss.types.TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)
    p = _session(esys)
    esys.policy_duplication_select(p, obj_name, a_name, False)
    esys.duplicate(obj, a, b"", null, session1=p)
    p = _session(esys)
    esys.policy_duplication_select(p, obj_name, a_name, False)
    with pytest.raises(TSS2_Exception) as e:
        esys.duplicate(obj, b, b"", null, session1=p)
    assert e.value.rc == 0x99D  # POLICY_FAIL: another new parent


def test_policy_authorize_nv(esys) -> None:
    approved = hashlib.sha256(bytes(32) + struct.pack(">I", 0x16B)).digest()  # PolicyAuthValue
    attrs = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA
    nv = esys.nv_define_space(b"", TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=0x01000300, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=34)))
    esys.nv_write(nv, struct.pack(">H", 0x000B) + approved, 0)
    p = _session(esys)
    esys.policy_auth_value(p)
    esys.policy_authorize_nv(nv, p)
    _, nv_name = esys.nv_read_public(nv)
    expect = hashlib.sha256(bytes(32) + struct.pack(">I", 0x192) + bytes(nv_name)).digest()
    assert bytes(esys.policy_get_digest(p)) == expect
    p = _session(esys)
    with pytest.raises(TSS2_Exception) as e:
        esys.policy_authorize_nv(nv, p)  # current digest (zeros) is not the approved one
    assert e.value.rc == 0x084


def test_policy_secret_ticket_replays_through_policy_ticket(esys, clock) -> None:
    p = _session(esys)
    nonce = bytes(esys.trsess_get_nonce_tpm(p))
    timeout, ticket = esys.policy_secret(ESYS_TR.OWNER, p, nonce, b"", b"ref", -60)
    assert int(ticket.tag) == 0x8023 and int(ticket.hierarchy) == 0x40000001 and len(timeout.marshal()) == 10
    expect = bytes(esys.policy_get_digest(p))
    owner_name = struct.pack(">I", 0x40000001)
    p2 = _session(esys)
    esys.policy_ticket(p2, timeout, owner_name, ticket, b"", b"ref")
    assert bytes(esys.policy_get_digest(p2)) == expect
    p3 = _session(esys)
    with pytest.raises(TSS2_Exception) as e:  # a different policyRef does not match the ticket
        esys.policy_ticket(p3, timeout, owner_name, ticket, b"", b"other")
    assert e.value.rc == 0x5E0  # TICKET, parameter 5
    clock.now += 61
    with pytest.raises(TSS2_Exception) as e:
        esys.policy_ticket(p3, timeout, owner_name, ticket, b"", b"ref")
    assert e.value.rc == 0x1E3  # EXPIRED, parameter 1
    _, null_ticket = esys.policy_secret(ESYS_TR.OWNER, _session(esys), b"", b"", b"", -60)
    assert int(null_ticket.hierarchy) == 0x40000007  # no nonce: no ticket


def test_policy_template_restricts_create_primary(esys) -> None:
    good = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=0x30072)
    other = TPM2B_PUBLIC.parse("ecc384:aes128cfb", objectAttributes=0x30072)
    template_hash = hashlib.sha256(good.publicArea.marshal()).digest()
    trial = _session(esys, TPM2_SE.TRIAL)
    esys.policy_template(trial, template_hash)
    esys.set_primary_policy(ESYS_TR.OWNER, esys.policy_get_digest(trial), TPM2_ALG.SHA256)
    p = _session(esys)
    esys.policy_template(p, template_hash)
    esys.create_primary(TPM2B_SENSITIVE_CREATE(), good, session1=p)
    p = _session(esys)
    esys.policy_template(p, template_hash)
    with pytest.raises(TSS2_Exception) as e:
        esys.create_primary(TPM2B_SENSITIVE_CREATE(), other, session1=p)
    assert e.value.rc == 0x99D  # POLICY_FAIL, session 1


def test_policy_name_hash_and_nv_written(esys) -> None:
    srk = esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse("ecc256:aes128cfb",
                                                                             objectAttributes=0x30072))[0]
    attrs = TPMA_NV.AUTHREAD | TPMA_NV.POLICYWRITE | TPMA_NV.NO_DA
    trial = _session(esys, TPM2_SE.TRIAL)
    esys.policy_nv_written(trial, False)
    policy = bytes(esys.policy_get_digest(trial))
    nv = esys.nv_define_space(b"", TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
        nvIndex=0x01000500, nameAlg=TPM2_ALG.SHA256, attributes=attrs, authPolicy=policy, dataSize=4)))
    p = _session(esys)
    esys.policy_nv_written(p, False)
    esys.nv_write(nv, b"once", 0, auth_handle=nv, session1=p)  # write-once index
    p = _session(esys)
    esys.policy_nv_written(p, False)
    with pytest.raises(TSS2_Exception) as e:
        esys.nv_write(nv, b"twice", 0, auth_handle=nv, session1=p)
    assert e.value.rc == 0x99D  # POLICY_FAIL: the index is written now
    # PolicyNameHash binds the handles the command may use
    sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(b"nh")))
    tpl = TPM2B_PUBLIC.parse("keyedhash", objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                             | TPMA_OBJECT.USERWITHAUTH)
    priv, pub, *_ = esys.create(srk, sens, tpl)
    obj = esys.load(srk, priv, pub)
    name = bytes(esys.read_public(obj)[1])
    trial = _session(esys, TPM2_SE.TRIAL)
    esys.policy_name_hash(trial, hashlib.sha256(name).digest())
    d = bytes(esys.policy_get_digest(trial))
    assert d == hashlib.sha256(bytes(32) + struct.pack(">I", 0x170) + hashlib.sha256(name).digest()).digest()

"""The engine driven by real TSS code (tpm2-pytss ESAPI over an in-process Python TCTI).

ESAPI computes and checks every HMAC, nonce, cpHash/rpHash and parameter encryption itself, so
these tests catch the subtle session bugs a hand-written client would share with the engine.
"""

from __future__ import annotations

import pytest

pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_SE, TPMA_NV, TPMA_OBJECT, TPMA_SESSION, TSS2_Exception  # noqa: E402
from tpm2_pytss.types import (TPM2B_AUTH, TPM2B_DIGEST, TPM2B_NV_PUBLIC, TPM2B_PUBLIC,  # noqa: E402
                              TPM2B_SENSITIVE_CREATE, TPM2B_SENSITIVE_DATA, TPML_DIGEST, TPML_PCR_SELECTION,
                              TPMS_NV_PUBLIC, TPMS_SENSITIVE_CREATE, TPMT_SIG_SCHEME, TPMT_SYM_DEF,
                              TPMU_SYM_KEY_BITS, TPMU_SYM_MODE)

SRK_ATTRS = 0x00030072
SEAL_ATTRS = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.USERWITHAUTH
NULL_SYM = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)
AES_CFB = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128), mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB))
XOR = TPMT_SYM_DEF(algorithm=TPM2_ALG.XOR, keyBits=TPMU_SYM_KEY_BITS(exclusiveOr=TPM2_ALG.SHA256))
ENC = TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT


def _ak(alg: str) -> TPM2B_PUBLIC:
    """A restricted signing template (pytss adds AES to restricted templates; a TPM wants NULL)."""
    tpl = TPM2B_PUBLIC.parse(alg, objectAttributes=0x50072)
    if alg.startswith("rsa"):
        tpl.publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG.NULL
    else:
        tpl.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
    return tpl


def _primary(esys, alg: str = "rsa2048:aes128cfb", hierarchy=ESYS_TR.OWNER, **kw):
    h, pub, *_ = esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse(alg, objectAttributes=SRK_ATTRS),
                                     primary_handle=hierarchy, **kw)
    return h, pub


def _seal(esys, parent, secret: bytes, auth: bytes = b"pw", policy: bytes = b"", session=ESYS_TR.PASSWORD):
    attrs = SEAL_ATTRS if not policy else (TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
    sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(auth), data=TPM2B_SENSITIVE_DATA(secret)))
    pub = TPM2B_PUBLIC.parse("keyedhash", objectAttributes=attrs)
    pub.publicArea.authPolicy = TPM2B_DIGEST(policy)
    priv, opub, *_ = esys.create(parent, sens, pub, session1=session)
    h = esys.load(parent, priv, opub, session1=session)
    esys.tr_set_auth(h, auth)
    return h


def test_get_random_and_capabilities(esys) -> None:
    assert len(esys.get_random(32)) == 32
    more, cap = esys.get_capability(TPM2_CAP.ALGS, 0, 169)
    algs = {a.alg: int(a.algProperties) for a in cap.data.algorithms}
    assert algs[TPM2_ALG.SHA256] == 0x004 and TPM2_ALG.ECC in algs and not more


@pytest.mark.parametrize("tpm_key,bind", [("none", False), ("rsa", False), ("rsa", True), ("ecc", True)])
@pytest.mark.parametrize("sym", ["aes", "xor"])
def test_hmac_sessions_with_parameter_encryption(esys, tpm_key: str, bind: bool, sym: str) -> None:
    srk, _ = _primary(esys)
    ecc, _ = _primary(esys, "ecc256:aes128cfb") if tpm_key == "ecc" else (None, None)
    key = {"none": ESYS_TR.NONE, "rsa": srk, "ecc": ecc}[tpm_key]
    sealed = _seal(esys, srk, b"top secret")
    s = esys.start_auth_session(key, sealed if bind else ESYS_TR.NONE, TPM2_SE.HMAC,
                                AES_CFB if sym == "aes" else XOR, TPM2_ALG.SHA256)
    esys.trsess_set_attributes(s, ENC)
    for _ in range(3):  # nonces roll; every response HMAC is checked by ESAPI
        assert bytes(esys.unseal(sealed, session1=s)) == b"top secret"
    esys.flush_context(s)


def test_encrypted_session_as_extra_session(esys) -> None:
    srk, _ = _primary(esys)
    sealed = _seal(esys, srk, b"abc")
    enc = esys.start_auth_session(srk, ESYS_TR.NONE, TPM2_SE.HMAC, AES_CFB, TPM2_ALG.SHA256)
    esys.trsess_set_attributes(enc, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT)
    assert bytes(esys.unseal(sealed, session1=ESYS_TR.PASSWORD, session2=enc)) == b"abc"


def test_wrong_auth_is_refused(esys) -> None:
    srk, _ = _primary(esys)
    sealed = _seal(esys, srk, b"x")
    esys.tr_set_auth(sealed, b"wrong")
    with pytest.raises(TSS2_Exception) as exc:
        esys.unseal(sealed)
    assert exc.value.rc == 0x98E  # AUTH_FAIL, session 1 (DA-protected object)
    s = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, NULL_SYM, TPM2_ALG.SHA256)
    with pytest.raises(TSS2_Exception) as exc:
        esys.unseal(sealed, session1=s)
    assert exc.value.rc == 0x98E


def test_primary_is_deterministic_and_names_match(esys) -> None:
    h1, pub1 = _primary(esys)
    h2, pub2 = _primary(esys)
    assert bytes(pub1.publicArea.unique.rsa) == bytes(pub2.publicArea.unique.rsa)
    pub, name, qn = esys.read_public(h1)
    assert bytes(name) == bytes(pub.publicArea.get_name())


@pytest.mark.parametrize("alg", ["rsa2048:rsassa-sha256", "rsa2048:rsapss-sha256", "ecc256:ecdsa-sha256",
                                 "ecc384:ecdsa-sha384", "rsa3072:rsassa-sha384"])
def test_sign_and_verify(esys, alg: str) -> None:
    srk, _ = _primary(esys)
    tpl = TPM2B_PUBLIC.parse(alg, objectAttributes=0x40072)
    if alg.startswith("rsa"):
        tpl.publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG.NULL  # pytss adds AES for rsapss
    priv, pub, *_ = esys.create(srk, TPM2B_SENSITIVE_CREATE(), tpl)
    key = esys.load(srk, priv, pub)
    h = TPM2_ALG.SHA384 if alg.endswith("384") else TPM2_ALG.SHA256
    digest, ticket = esys.hash(b"message", h, ESYS_TR.OWNER)
    sig = esys.sign(key, digest, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket)
    esys.verify_signature(key, digest, sig)
    with pytest.raises(TSS2_Exception) as exc:
        esys.verify_signature(key, TPM2B_DIGEST(bytes(len(bytes(digest)))), sig)
    assert exc.value.rc == 0x2DB  # SIGNATURE, parameter 2


def test_policy_pcr_and_command_code(esys) -> None:
    srk, _ = _primary(esys)
    sel = TPML_PCR_SELECTION.parse("sha256:0,1")
    trial = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_pcr(trial, TPM2B_DIGEST(), sel)
    esys.policy_command_code(trial, 0x15E)
    policy = bytes(esys.policy_get_digest(trial))
    sealed = _seal(esys, srk, b"pcr-bound", policy=policy)
    p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_pcr(p, TPM2B_DIGEST(), sel)
    esys.policy_command_code(p, 0x15E)
    assert bytes(esys.unseal(sealed, session1=p)) == b"pcr-bound"
    esys.pcr_extend(ESYS_TR.PCR1, pytss.types.TPML_DIGEST_VALUES(
        [pytss.types.TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=pytss.types.TPMU_HA(sha256=b"\x01" * 32))]))
    esys.policy_restart(p)
    esys.policy_pcr(p, TPM2B_DIGEST(), sel)
    esys.policy_command_code(p, 0x15E)
    with pytest.raises(TSS2_Exception) as exc:
        esys.unseal(sealed, session1=p)
    assert exc.value.rc == 0x99D  # POLICY_FAIL, session 1


def test_policy_auth_value_password_or_secret(esys) -> None:
    srk, _ = _primary(esys)
    trial = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_auth_value(trial)
    d_auth = bytes(esys.policy_get_digest(trial))
    esys.policy_restart(trial)
    esys.policy_secret(ESYS_TR.OWNER, trial, b"", b"", b"", 0)
    d_secret = bytes(esys.policy_get_digest(trial))
    esys.policy_restart(trial)
    esys.policy_or(trial, TPML_DIGEST([d_auth, d_secret]))
    policy = bytes(esys.policy_get_digest(trial))
    sealed = _seal(esys, srk, b"or", auth=b"objpw", policy=policy)
    for variant in ("authvalue", "password", "secret"):
        p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
        if variant == "authvalue":
            esys.policy_auth_value(p)
        elif variant == "password":
            esys.policy_password(p)
        else:
            esys.policy_secret(ESYS_TR.OWNER, p, b"", b"", b"", 0)
        esys.policy_or(p, TPML_DIGEST([d_auth, d_secret]))
        assert bytes(esys.policy_get_digest(p)) == policy
        assert bytes(esys.unseal(sealed, session1=p)) == b"or"
        esys.flush_context(p)
    p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
    with pytest.raises(TSS2_Exception) as exc:
        esys.policy_or(p, TPML_DIGEST([d_auth, d_secret]))
    assert exc.value.rc == 0x1C4  # VALUE, parameter 1


def test_context_save_load_objects_and_sessions(esys) -> None:
    srk, _ = _primary(esys)
    sealed = _seal(esys, srk, b"ctx")
    blob = esys.context_save(sealed)
    esys.flush_context(sealed)
    again = esys.context_load(blob)
    esys.tr_set_auth(again, b"pw")
    s = esys.start_auth_session(srk, ESYS_TR.NONE, TPM2_SE.HMAC, AES_CFB, TPM2_ALG.SHA256)
    esys.trsess_set_attributes(s, ENC)
    sblob = esys.context_save(s)
    s2 = esys.context_load(sblob)
    assert bytes(esys.unseal(again, session1=s2)) == b"ctx"


def test_nv_with_hmac_and_encrypted_sessions(esys) -> None:
    srk, _ = _primary(esys)
    attrs = TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.OWNERREAD | TPMA_NV.OWNERWRITE
    pub = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(nvIndex=0x01000010, nameAlg=TPM2_ALG.SHA256, attributes=attrs,
                                                  dataSize=64))
    nv = esys.nv_define_space(b"nvpw", pub)
    s = esys.start_auth_session(srk, ESYS_TR.NONE, TPM2_SE.HMAC, AES_CFB, TPM2_ALG.SHA256)
    esys.trsess_set_attributes(s, ENC)
    esys.nv_write(nv, b"confidential", 4, auth_handle=nv, session1=s)
    assert bytes(esys.nv_read(nv, 12, 4, auth_handle=nv, session1=s)) == b"confidential"
    assert bytes(esys.nv_read(nv, 12, 4, auth_handle=ESYS_TR.OWNER)) == b"confidential"
    nvpub, name = esys.nv_read_public(nv)
    assert nvpub.nvPublic.attributes & TPMA_NV.WRITTEN


def test_hierarchy_change_auth_with_hmac_session(esys) -> None:
    s = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, NULL_SYM, TPM2_ALG.SHA256)
    esys.hierarchy_change_auth(ESYS_TR.OWNER, b"owner", session1=s)
    esys.tr_set_auth(ESYS_TR.OWNER, b"owner")
    _primary(esys, session1=s)
    esys.tr_set_auth(ESYS_TR.OWNER, b"bad")
    with pytest.raises(TSS2_Exception) as exc:
        _primary(esys)
    assert exc.value.rc == 0x9A2  # BAD_AUTH: hierarchies are DA-exempt


def test_make_and_activate_credential(esys) -> None:
    from tpm2_pytss.utils import make_credential
    from svsm.modules.tpm import ek_template_rsa2048
    ek_tpl = TPM2B_PUBLIC.unmarshal(len(ek_template_rsa2048().marshal()).to_bytes(2, "big")
                                    + ek_template_rsa2048().marshal())[0]
    ek, ek_pub, *_ = esys.create_primary(TPM2B_SENSITIVE_CREATE(), ek_tpl, primary_handle=ESYS_TR.ENDORSEMENT)
    srk, _ = _primary(esys)
    priv, pub, *_ = esys.create(srk, TPM2B_SENSITIVE_CREATE(),
                                _ak("rsa2048:rsassa-sha256"))
    ak = esys.load(srk, priv, pub)
    name = pub.publicArea.get_name()
    blob, secret = make_credential(ek_pub, b"credential-12345", name)  # independent implementation
    p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_secret(ESYS_TR.ENDORSEMENT, p, b"", b"", b"", 0)
    cert = esys.activate_credential(ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=p)
    assert bytes(cert) == b"credential-12345"
    # and the TPM's own MakeCredential is accepted too
    blob2, secret2 = esys.make_credential(ek, b"second", name)
    p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_secret(ESYS_TR.ENDORSEMENT, p, b"", b"", b"", 0)
    assert bytes(esys.activate_credential(ak, ek, blob2, secret2, session1=ESYS_TR.PASSWORD, session2=p)) == b"second"


def test_quote_verifies_with_cryptography(esys) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    srk, _ = _primary(esys)
    priv, pub, *_ = esys.create(srk, TPM2B_SENSITIVE_CREATE(),
                                _ak("ecc256:ecdsa-sha256"))
    ak = esys.load(srk, priv, pub)
    quoted, sig = esys.quote(ak, TPML_PCR_SELECTION.parse("sha256:0,1,2"), b"nonce123", TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    attest = bytes(quoted)[2:] if len(bytes(quoted)) and bytes(quoted)[:4] != b"\xffTCG" else bytes(quoted)
    assert attest[:4] == b"\xffTCG"
    key = pub.publicArea.to_cryptography() if hasattr(pub.publicArea, "to_cryptography") else None
    if key is None:
        from tpm2_pytss.cryptography import public_to_key
        key = public_to_key(pub.publicArea)
    r = int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big")
    s = int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big")
    key.verify(encode_dss_signature(r, s), attest, ec.ECDSA(hashes.SHA256()))


def test_audit_session_digest(esys) -> None:
    import hashlib
    import struct
    s = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, NULL_SYM, TPM2_ALG.SHA256)
    esys.trsess_set_attributes(s, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.AUDIT)
    digest = bytes(32)
    for n in (8, 16):
        rnd = bytes(esys.get_random(n, session1=s))  # ESAPI checks the response HMAC over the audit attributes
        cp = hashlib.sha256(struct.pack(">IH", 0x17B, n)).digest()
        rp = hashlib.sha256(bytes(4) + struct.pack(">IH", 0x17B, n) + rnd).digest()
        digest = hashlib.sha256(digest + cp + rp).digest()
    info, sig = esys.get_session_audit_digest(ESYS_TR.NULL, s, b"q")
    attest = bytes(info.marshal())[2:]
    assert attest[4:6] == b"\x80\x16" and attest.endswith(struct.pack(">H", 32) + digest)
    esys.trsess_set_attributes(s, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.AUDIT | TPMA_SESSION.AUDITEXCLUSIVE)
    with pytest.raises(TSS2_Exception) as exc:  # GetSessionAuditDigest ran in between: not exclusive any more
        esys.get_random(8, session1=s)
    assert exc.value.rc == 0x121


def test_nv_index_with_policy_read(esys) -> None:
    import hashlib
    import struct
    policy = hashlib.sha256(bytes(32) + struct.pack(">II", 0x16C, 0x14E)).digest()  # PolicyCommandCode(NV_Read)
    attrs = TPMA_NV.POLICYREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA
    pub = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(nvIndex=0x01000020, nameAlg=TPM2_ALG.SHA256, attributes=attrs,
                                                  authPolicy=policy, dataSize=4))
    nv = esys.nv_define_space(b"w", pub)
    esys.tr_set_auth(nv, b"w")
    esys.nv_write(nv, b"abcd", 0, auth_handle=nv)
    with pytest.raises(TSS2_Exception) as exc:
        esys.nv_read(nv, 4, 0, auth_handle=nv)  # password session: the index wants POLICYREAD
    assert exc.value.rc == 0x149
    p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_command_code(p, 0x14E)
    assert bytes(esys.nv_read(nv, 4, 0, auth_handle=nv, session1=p)) == b"abcd"


def test_salted_policy_session_with_auth_value_and_encryption(esys) -> None:
    srk, _ = _primary(esys)
    trial = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_auth_value(trial)
    sealed = _seal(esys, srk, b"salted policy", auth=b"pa", policy=bytes(esys.policy_get_digest(trial)))
    p = esys.start_auth_session(srk, ESYS_TR.NONE, TPM2_SE.POLICY, AES_CFB, TPM2_ALG.SHA256)
    esys.trsess_set_attributes(p, ENC)
    esys.policy_auth_value(p)
    assert bytes(esys.unseal(sealed, session1=p)) == b"salted policy"


def test_sequence_context_round_trip(esys) -> None:
    import hashlib
    seq = esys.hash_sequence_start(b"sq", TPM2_ALG.SHA256)
    esys.tr_set_auth(seq, b"sq")
    esys.sequence_update(seq, b"part one ")
    blob = esys.context_save(seq)
    esys.flush_context(seq)
    seq = esys.context_load(blob)
    esys.tr_set_auth(seq, b"sq")
    digest, _ = esys.sequence_complete(seq, b"part two", ESYS_TR.OWNER)
    assert bytes(digest) == hashlib.sha256(b"part one part two").digest()


@pytest.mark.parametrize("attrs", [TPMA_SESSION.DECRYPT, TPMA_SESSION.ENCRYPT,
                                   TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT])
def test_hmac_auth_session_with_separate_encryption_session(esys, attrs) -> None:
    """Session 0's HMAC then covers the other session's nonceTPM (nonceDecrypt/nonceEncrypt)."""
    srk, _ = _primary(esys)
    sealed = _seal(esys, srk, b"two sessions")
    auth = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.HMAC, NULL_SYM, TPM2_ALG.SHA256)
    enc = esys.start_auth_session(srk, ESYS_TR.NONE, TPM2_SE.HMAC, AES_CFB, TPM2_ALG.SHA256)
    esys.trsess_set_attributes(enc, TPMA_SESSION.CONTINUESESSION | attrs)
    sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(b"x"), data=TPM2B_SENSITIVE_DATA(b"d")))
    tpl = TPM2B_PUBLIC.parse("keyedhash", objectAttributes=SEAL_ATTRS)
    priv, pub, *_ = esys.create(srk, sens, tpl, session1=auth, session2=enc)  # inSensitive / outPrivate
    child = esys.load(srk, priv, pub)
    esys.tr_set_auth(child, b"x")
    assert bytes(esys.unseal(child)) == b"d"
    if attrs == TPMA_SESSION.ENCRYPT:
        assert bytes(esys.unseal(sealed, session1=auth, session2=enc)) == b"two sessions"


def test_policy_use_failures(esys, clock) -> None:
    srk, _ = _primary(esys)
    sel = TPML_PCR_SELECTION.parse("sha256:5")
    trial = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_pcr(trial, TPM2B_DIGEST(), sel)
    sealed = _seal(esys, srk, b"p", policy=bytes(esys.policy_get_digest(trial)))
    p = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_pcr(p, TPM2B_DIGEST(), sel)
    esys.pcr_extend(ESYS_TR.PCR5, pytss.types.TPML_DIGEST_VALUES(
        [pytss.types.TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=pytss.types.TPMU_HA(sha256=b"\x02" * 32))]))
    with pytest.raises(TSS2_Exception) as exc:
        esys.unseal(sealed, session1=p)
    assert exc.value.rc == 0x128  # PCR_CHANGED since PolicyPCR
    # PolicySecret with an expiration: the session expires
    trial2 = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_secret(ESYS_TR.OWNER, trial2, b"", b"", b"", 0)
    sealed2 = _seal(esys, srk, b"q", policy=bytes(esys.policy_get_digest(trial2)))
    p2 = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_secret(ESYS_TR.OWNER, p2, b"", b"", b"", 10)
    clock.now += 11
    with pytest.raises(TSS2_Exception) as exc:
        esys.unseal(sealed2, session1=p2)
    assert exc.value.rc == 0x9A3  # EXPIRED, session 1
    # a policy session on an object without authPolicy
    plain = _seal(esys, srk, b"r", policy=b"")
    p3 = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
    with pytest.raises(TSS2_Exception) as exc:
        esys.unseal(plain, session1=p3)
    assert exc.value.rc == 0x12F  # AUTH_UNAVAILABLE
    # PolicyCommandCode for another command
    trial3 = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_command_code(trial3, 0x15E)
    sealed3 = _seal(esys, srk, b"s", policy=bytes(esys.policy_get_digest(trial3)))
    p4 = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, NULL_SYM, TPM2_ALG.SHA256)
    esys.policy_command_code(p4, 0x15E)
    esys.trsess_set_attributes(p4, TPMA_SESSION.CONTINUESESSION)
    with pytest.raises(TSS2_Exception) as exc:  # the digest matches, but ObjectChangeAuth is not Unseal
        esys.object_change_auth(sealed3, srk, b"n", session1=p4)
    assert exc.value.rc == 0x9A4  # POLICY_CC, session 1

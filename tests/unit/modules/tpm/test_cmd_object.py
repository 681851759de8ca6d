"""Object commands: Create/Load wrapping and integrity, attribute validation, EvictControl, ObjectChangeAuth,
LoadExternal, CreateLoaded, Unseal rules."""

from __future__ import annotations

import pytest

pytss = pytest.importorskip("tpm2_pytss")
from tpm2_pytss import ESYS_TR, TPM2_ALG, TPMA_OBJECT, TSS2_Exception  # noqa: E402
from tpm2_pytss.types import (TPM2B_AUTH, TPM2B_PRIVATE, TPM2B_PUBLIC, TPM2B_SENSITIVE,  # noqa: E402
                              TPM2B_SENSITIVE_CREATE, TPM2B_SENSITIVE_DATA, TPMS_SENSITIVE_CREATE)

SRK = 0x00030072


def primary(esys, alg: str = "rsa2048:aes128cfb", hierarchy=ESYS_TR.OWNER):
    h, pub, *_ = esys.create_primary(TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC.parse(alg, objectAttributes=SRK),
                                     primary_handle=hierarchy)
    return h, pub


def sealed_template(attrs=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.USERWITHAUTH):
    return TPM2B_PUBLIC.parse("keyedhash", objectAttributes=attrs)


def sens(data: bytes = b"", auth: bytes = b"") -> TPM2B_SENSITIVE_CREATE:
    return TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(auth), data=TPM2B_SENSITIVE_DATA(data)))


def rc(exc: pytest.ExceptionInfo) -> int:
    return int(exc.value.rc)


def test_blob_from_one_parent_fails_integrity_under_another(esys) -> None:
    p1, _ = primary(esys)
    p2, _ = primary(esys, "ecc256:aes128cfb")
    priv, pub, *_ = esys.create(p1, sens(b"s"), sealed_template())
    with pytest.raises(TSS2_Exception) as e:
        esys.load(p2, priv, pub)
    assert rc(e) == 0x1DF  # INTEGRITY, parameter 1
    tampered = bytearray(bytes(priv.marshal())[2:])
    tampered[-1] ^= 1
    with pytest.raises(TSS2_Exception) as e:
        esys.load(p1, TPM2B_PRIVATE(bytes(tampered)), pub)
    assert rc(e) == 0x1DF
    other_pub = sealed_template(TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)  # different Name
    other_pub.publicArea.unique.keyedHash = pub.publicArea.unique.keyedHash
    with pytest.raises(TSS2_Exception) as e:
        esys.load(p1, priv, other_pub)
    assert rc(e) == 0x1DF


def test_attribute_validation(esys) -> None:
    p, _ = primary(esys)
    with pytest.raises(TSS2_Exception) as e:  # sensitiveDataOrigin with caller data
        esys.create(p, sens(b"x"), sealed_template(TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                                                   | TPMA_OBJECT.SENSITIVEDATAORIGIN))
    assert rc(e) == 0x2C2
    with pytest.raises(TSS2_Exception) as e:  # fixedTPM without fixedParent
        esys.create(p, sens(b"x"), sealed_template(TPMA_OBJECT.FIXEDTPM))
    assert rc(e) == 0x2C2
    bad = TPM2B_PUBLIC.parse("rsa2048", objectAttributes=SRK | TPMA_OBJECT.SIGN_ENCRYPT)  # restricted sign+decrypt
    with pytest.raises(TSS2_Exception) as e:
        esys.create(p, sens(), bad)
    assert rc(e) == 0x2C2
    reserved = sealed_template()
    reserved.publicArea.objectAttributes |= 0x100
    with pytest.raises(TSS2_Exception) as e:
        esys.create(p, sens(b"x"), reserved)
    assert rc(e) == 0x2E1  # RESERVED_BITS, parameter 2
    seal, _ = esys.create(p, sens(b"x"), sealed_template())[:2]
    sign_key = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=0x40072)
    with pytest.raises(TSS2_Exception) as e:  # a signing key is not a parent
        k = esys.load(p, *esys.create(p, sens(), sign_key)[:2])
        esys.create(k, sens(b"y"), sealed_template())
    assert rc(e) == 0x18A  # TYPE, handle 1


def test_evict_control_persist_use_and_remove(esys) -> None:
    p, pub = primary(esys)
    persistent = esys.evict_control(ESYS_TR.OWNER, p, 0x81000001)
    rpub, name, _ = esys.read_public(persistent)
    assert bytes(rpub.publicArea.unique.rsa) == bytes(pub.publicArea.unique.rsa)
    with pytest.raises(TSS2_Exception) as e:
        esys.evict_control(ESYS_TR.OWNER, p, 0x81000001)
    assert rc(e) == 0x14C  # NV_DEFINED
    with pytest.raises(TSS2_Exception) as e:
        esys.evict_control(ESYS_TR.OWNER, p, 0x81800000)
    assert rc(e) == 0x1CD  # RANGE, parameter 1 (platform range with owner auth)
    esys.evict_control(ESYS_TR.OWNER, persistent, 0x81000001)
    with pytest.raises(TSS2_Exception):
        esys.tr_from_tpmpublic(0x81000001)


def test_object_change_auth(esys) -> None:
    p, _ = primary(esys)
    priv, pub, *_ = esys.create(p, sens(b"data", b"old"), sealed_template())
    h = esys.load(p, priv, pub)
    esys.tr_set_auth(h, b"old")
    new_priv = esys.object_change_auth(h, p, b"new")
    h2 = esys.load(p, new_priv, pub)
    esys.tr_set_auth(h2, b"new")
    assert bytes(esys.unseal(h2)) == b"data"
    esys.tr_set_auth(h2, b"old")
    with pytest.raises(TSS2_Exception) as e:
        esys.unseal(h2)
    assert rc(e) == 0x98E


def test_load_external_public_and_private(esys) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = TPM2B_PUBLIC.from_pem(pem)
    h = esys.load_external(pub, hierarchy=ESYS_TR.OWNER)
    rpub, name, _ = esys.read_public(h)
    assert bytes(name) == bytes(pub.publicArea.get_name())
    priv = TPM2B_SENSITIVE.from_pem(pem)
    h2 = esys.load_external(pub, priv, hierarchy=ESYS_TR.NULL)
    assert esys.read_public(h2)[1] == name
    with pytest.raises(TSS2_Exception) as e:  # a private part is only allowed in the NULL hierarchy
        esys.load_external(pub, priv, hierarchy=ESYS_TR.OWNER)
    assert rc(e) == 0x3C5  # HIERARCHY, parameter 3


def template(pub: TPM2B_PUBLIC) -> "pytss.types.TPM2B_TEMPLATE":
    return pytss.types.TPM2B_TEMPLATE(pub.publicArea.marshal())


def test_create_loaded_child_and_primary(esys) -> None:
    p, _ = primary(esys)
    h, priv, pub = esys.create_loaded(p, sens(b"cl", b""), template(sealed_template()))
    assert bytes(esys.unseal(h)) == b"cl" and len(bytes(priv.marshal())) > 2
    h2, priv2, pub2 = esys.create_loaded(ESYS_TR.OWNER, sens(),
                                         template(TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=SRK)))
    assert len(bytes(priv2.marshal())) == 2  # a primary has no private blob


def test_unseal_refuses_keys(esys) -> None:
    p, _ = primary(esys)
    with pytest.raises(TSS2_Exception) as e:
        esys.unseal(p)
    assert rc(e) == 0x18A  # TYPE, handle 1


def test_load_external_rsa_public_verifies_foreign_signatures(esys) -> None:
    import hashlib
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from tpm2_pytss.types import TPMT_SIGNATURE
    key = rsa.generate_private_key(65537, 2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub = TPM2B_PUBLIC.from_pem(pem, objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH)
    h = esys.load_external(pub, hierarchy=ESYS_TR.OWNER)
    digest = hashlib.sha256(b"foreign").digest()
    sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.RSASSA)
    sig.signature.rsassa.hash = TPM2_ALG.SHA256
    sig.signature.rsassa.sig = key.sign(b"foreign", padding.PKCS1v15(), hashes.SHA256())
    ticket = esys.verify_signature(h, digest, sig)
    assert int(ticket.tag) == 0x8022 and int(ticket.hierarchy) == 0x40000001
    with pytest.raises(TSS2_Exception) as e:  # no private part: cannot sign
        esys.sign(h, digest, pytss.types.TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
                  pytss.types.TPMT_TK_HASHCHECK(tag=0x8024, hierarchy=0x40000007))
    assert e.value.rc == 0x18B  # HANDLE, handle 1


def test_load_external_sensitive_is_read_like_the_reference(tpm) -> None:
    """TPM2B_SENSITIVE: the inner TPMT_SENSITIVE is unmarshalled before its size is checked
    (swtpm/libtpms differential, TPMIO item 5): a garbage size with a bad type is TYPE on parameter 1."""
    import struct as _struct

    from tpm_test_helpers import cmd as _cmd, rc_of as _rc_of

    garbage = _struct.pack(">HH", 0xAC7C, 0x3027) + bytes(20)
    assert _rc_of(tpm.execute(_cmd(0x167, (), garbage))) == 0x1CA
    sens = _struct.pack(">H", 0x0025) + b"\x00\x00" + b"\x00\x00" + _struct.pack(">H", 4) + b"abcd"
    body = _struct.pack(">H", len(sens) + 1) + sens  # declared one byte longer than the structure: SIZE
    assert _rc_of(tpm.execute(_cmd(0x167, (), body + bytes(10)))) == 0x1D5

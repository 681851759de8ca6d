"""EK templates (TCG L-1/L-2), certificates at the TCG NV indices, and the EK a CreatePrimary yields."""

from __future__ import annotations

import datetime
import hashlib
import struct

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from tpm_test_helpers import cmd, rc_of

from svsm.modules.tpm import (EK_CERT_ECC_INDEX, EK_CERT_RSA_INDEX, Tpm, ek_ca_certificate, ek_template_ecc256,
                              ek_template_rsa2048, provision_ek)
from svsm.modules.tpm._ek import POLICY_A

NOW = datetime.datetime(2026, 1, 1)


def test_policy_a_is_policy_secret_endorsement() -> None:
    d1 = hashlib.sha256(bytes(32) + bytes.fromhex("00000151") + bytes.fromhex("4000000B")).digest()
    assert POLICY_A == hashlib.sha256(d1).digest()  # second hash over d1 || policyRef (empty)


def test_rsa_template_bytes_match_tcg_l1() -> None:
    expect = bytes.fromhex("0001000b000300b20020") + POLICY_A + bytes.fromhex("00060080004300100800000000000100") \
        + bytes(256)
    assert ek_template_rsa2048().marshal() == expect and len(expect) == 314


def test_ecc_template_unique_is_two_32_byte_zero_coordinates() -> None:
    raw = ek_template_ecc256().marshal()
    assert raw.endswith(b"\x00\x20" + bytes(32) + b"\x00\x20" + bytes(32)) and raw[:2] == b"\x00\x23"


def test_provisioned_manifest_equals_create_primary_output(tpm: Tpm) -> None:
    manifest = provision_ek(tpm, NOW)
    tpl = ek_template_rsa2048().marshal()
    params = b"\x00\x04\x00\x00\x00\x00" + struct.pack(">H", len(tpl)) + tpl + b"\x00\x00" + bytes(4)
    pwsess = struct.pack(">IH", 0x40000009, 0) + b"\x01\x00\x00"
    rsp = tpm.execute(cmd(0x131, (0x4000000B,), params, pwsess))
    assert rc_of(rsp) == 0
    size = struct.unpack(">H", rsp[18:20])[0]
    assert rsp[20:20 + size] == manifest


def test_certificates_are_readable_and_chain_to_the_ca(tpm: Tpm) -> None:
    provision_ek(tpm, NOW)
    ca = x509.load_pem_x509_certificate(ek_ca_certificate(tpm, NOW))
    for index in (EK_CERT_RSA_INDEX, EK_CERT_ECC_INDEX):
        pub = tpm.execute(cmd(0x169, (index,)))
        assert rc_of(pub) == 0
        size = struct.unpack(">H", pub[24:26])[0]  # TPMS_NV_PUBLIC.dataSize (empty authPolicy)
        data = b""
        while len(data) < size:  # NV_Read with the index as its own auth, in NV_BUFFER_MAX chunks
            n = min(1024, size - len(data))
            pwsess = struct.pack(">IH", 0x40000009, 0) + b"\x01\x00\x00"
            rsp = tpm.execute(cmd(0x14E, (index, index), struct.pack(">HH", n, len(data)), pwsess))
            assert rc_of(rsp) == 0
            data += rsp[16:16 + n]
        cert = x509.load_der_x509_certificate(data)
        assert cert.issuer == ca.subject and cert.subject == x509.Name([])
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert x509.ObjectIdentifier("2.23.133.8.1") in eku  # tcg-kp-EKCertificate
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def test_provisioning_is_idempotent(tpm: Tpm) -> None:
    first = provision_ek(tpm, NOW)
    certs = bytes(tpm.nv[EK_CERT_RSA_INDEX].data)
    assert provision_ek(tpm, NOW + datetime.timedelta(days=1)) == first
    assert bytes(tpm.nv[EK_CERT_RSA_INDEX].data) == certs


def test_constructor_can_provision_ek_certificates() -> None:
    from tpm_test_helpers import seeded_rng
    t = Tpm(rng=seeded_rng(), provision_ek_at=NOW)
    assert EK_CERT_RSA_INDEX in t.nv and EK_CERT_ECC_INDEX in t.nv and t.dirty
    again = Tpm(state=t.save_state(), provision_ek_at=NOW)  # idempotent on restored state
    assert bytes(again.nv[EK_CERT_RSA_INDEX].data) == bytes(t.nv[EK_CERT_RSA_INDEX].data)

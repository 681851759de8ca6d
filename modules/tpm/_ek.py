"""Endorsement keys from the TCG default templates and their certificates in NV (tpm.md 11).

The EK certificate is issued by a CA of the simulated platform.  Until the SDK gives modules a
platform CA through a syscall, the CA is this module's own: an ECDSA P-384 key derived from the
platform hierarchy seed (so it persists with the TPM state and needs no separate storage).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ._constants import ALG, ECC_CURVE, RH, TPMA_NV
from ._crypto import DRBG, derive_ecc
from ._nv import NvIndex
from ._objects import TpmObject, derive_primary
from ._structs import Public

if TYPE_CHECKING:
    from ._engine import Tpm

__all__ = ["POLICY_A", "ek_template_rsa2048", "ek_template_ecc256", "EK_CERT_RSA_INDEX", "EK_CERT_ECC_INDEX",
           "EK_CERT_NV_ATTRIBUTES", "create_ek", "provision_ek", "ek_ca_certificate"]

#: PolicySecret(TPM_RH_ENDORSEMENT), SHA-256 (TCG EK profile PolicyA, tpm.md 11).
POLICY_A = bytes.fromhex("837197674484B3F81A90CC8D46A5D724FD52D76E06520B64F2A1DA1B331469AA")
EK_ATTRIBUTES = 0x000300B2
EK_CERT_RSA_INDEX = 0x01C00002
EK_CERT_ECC_INDEX = 0x01C0000A
#: PPWRITE|PPREAD|OWNERREAD|AUTHREAD|NO_DA|WRITTEN|PLATFORMCREATE (tpm2_getekcertificate's comment).
EK_CERT_NV_ATTRIBUTES = 0x62070001
assert EK_CERT_NV_ATTRIBUTES == (TPMA_NV.PPWRITE | TPMA_NV.PPREAD | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD
                                 | TPMA_NV.NO_DA | TPMA_NV.WRITTEN | TPMA_NV.PLATFORMCREATE)
_AES128_CFB = (ALG.AES, 128, ALG.CFB)


def ek_template_rsa2048() -> Public:
    """TCG template L-1 (RSA 2048, 314 bytes marshalled)."""
    return Public(ALG.RSA, ALG.SHA256, EK_ATTRIBUTES, POLICY_A, sym=_AES128_CFB, key_bits=2048, exponent=0,
                  unique=bytes(256))


def ek_template_ecc256() -> Public:
    """TCG template L-2 (ECC NIST P-256)."""
    return Public(ALG.ECC, ALG.SHA256, EK_ATTRIBUTES, POLICY_A, sym=_AES128_CFB, curve=ECC_CURVE.NIST_P256,
                  unique=(bytes(32), bytes(32)))


assert len(ek_template_rsa2048().marshal()) == 314


def create_ek(tpm: "Tpm", template: Public) -> TpmObject:
    """The EK as CreatePrimary(TPM_RH_ENDORSEMENT, template) would make it (same seed, same key)."""
    from ._cmd_object import qualified_name
    from ._marshal import u32
    pub, key, seed, sens = derive_primary(tpm.seeds[RH.ENDORSEMENT], template, b"")
    obj = TpmObject(pub, RH.ENDORSEMENT, b"", seed, sens, b"", key=key)
    obj.qn = qualified_name(u32(RH.ENDORSEMENT), obj.name, pub.name_alg)
    return obj


def _ca_key(tpm: "Tpm") -> ec.EllipticCurvePrivateKey:
    return derive_ecc(DRBG(ALG.SHA384, tpm.seeds[RH.PLATFORM], b"pysvsm EK CA", b""), ECC_CURVE.NIST_P384)


_CA_NAME = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pysvsm"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "pysvsm vTPM EK CA")])


def ek_ca_certificate(tpm: "Tpm", now: datetime.datetime) -> bytes:
    """PEM of the (self-signed) module CA that issues the EK certificates."""
    key = _ca_key(tpm)
    cert = (x509.CertificateBuilder().subject_name(_CA_NAME).issuer_name(_CA_NAME).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _ek_cert(tpm: "Tpm", ek: TpmObject, now: datetime.datetime, serial: int) -> bytes:
    ca = _ca_key(tpm)
    rsa = ek.public.type == ALG.RSA
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=rsa,
                          data_encipherment=False, key_agreement=not rsa, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    tpm_info = x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:50595356"),
                          x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "pysvsm-vtpm"),
                          x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.3"), "id:00000001")])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(_CA_NAME)
            .public_key(ek.public_key()).serial_number(serial).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(tpm_info)]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier("2.23.133.8.1")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
            .sign(ca, hashes.SHA384()))
    return cert.public_bytes(serialization.Encoding.DER)


def provision_ek(tpm: "Tpm", now: datetime.datetime) -> bytes:
    """First boot: make the RSA and ECC EKs and store their certificates at the TCG NV indices.

    Works before TPM2_Startup (it touches state directly, as manufacturing does).  Idempotent:
    existing certificate indices are kept.

    :param now: certificate notBefore.
    :returns: the RSA EK's TPMT_PUBLIC (the vTPM service manifest).
    """
    rsa_ek = create_ek(tpm, ek_template_rsa2048())
    for index, ek in ((EK_CERT_RSA_INDEX, rsa_ek), (EK_CERT_ECC_INDEX, create_ek(tpm, ek_template_ecc256()))):
        if index in tpm.nv:
            continue
        serial = int.from_bytes(ek.name[2:18], "big") >> 1 or 1
        der = _ek_cert(tpm, ek, now, serial)
        tpm.nv[index] = NvIndex(index, ALG.SHA256, EK_CERT_NV_ATTRIBUTES, b"", len(der), b"", der)
        tpm.dirty = True
    return rsa_ek.public.marshal()

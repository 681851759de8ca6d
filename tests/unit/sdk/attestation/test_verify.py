"""VCEK extension decoding (untrusted certificates from the host's table) and signature checks,
with certificates made here -- no kernel involved (full chains: tests/unit/kernel/hw/psp)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.sdk.attestation import (
    AttestationReport,
    TcbVersion,
    VcekOid,
    VerificationError,
    build_report_bytes,
    vcek_extensions,
    verify_report_signature,
)

KEY = ec.derive_private_key(12345, ec.SECP384R1())
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def _cert(exts: dict[VcekOid, bytes]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(KEY.public_key())
         .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1)))  # fmt: skip
    for oid, value in exts.items():
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid.value), value), critical=False)
    return b.sign(KEY, hashes.SHA384())


GOOD = {
    VcekOid.STRUCT_VERSION: b"\x02\x01\x00", VcekOid.PRODUCT_NAME: b"\x16\x08Milan-B0",
    VcekOid.BL_SPL: b"\x02\x01\x03", VcekOid.TEE_SPL: b"\x02\x01\x00", VcekOid.SNP_SPL: b"\x02\x01\x17",
    VcekOid.UCODE_SPL: b"\x02\x02\x00\xd5", VcekOid.HWID: b"\x04\x40" + bytes(range(64)),
}  # fmt: skip


def test_decode_good_extensions() -> None:
    ext = vcek_extensions(_cert(GOOD))
    assert ext.tcb == TcbVersion(boot_loader=3, tee=0, snp=0x17, microcode=0xD5)
    assert ext.hwid == bytes(range(64)) and ext.product_name == "Milan-B0" and ext.struct_version == 0


@pytest.mark.parametrize("missing", [VcekOid.BL_SPL, VcekOid.HWID, VcekOid.UCODE_SPL])
def test_missing_extension(missing: VcekOid) -> None:
    with pytest.raises(VerificationError):
        vcek_extensions(_cert({k: v for k, v in GOOD.items() if k is not missing}))


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([VcekOid.BL_SPL, VcekOid.SNP_SPL, VcekOid.HWID, VcekOid.PRODUCT_NAME]), st.binary(max_size=80))
def test_fuzz_extension_values(oid: VcekOid, value: bytes) -> None:
    try:
        ext = vcek_extensions(_cert({**GOOD, oid: value}))
    except VerificationError:
        return
    assert all(0 <= v <= 0xFF for v in ext.tcb)


def test_signature_check_uses_little_endian_r_s() -> None:
    unsigned = build_report_bytes(version=3, signature_algo=1, cpuid_fam_id=0x19)
    r, s = decode_dss_signature(KEY.sign(unsigned[:0x2A0], ec.ECDSA(hashes.SHA384())))
    report = AttestationReport.from_bytes(build_report_bytes(version=3, signature_algo=1, cpuid_fam_id=0x19,
                                                             signature_r=r, signature_s=s))  # fmt: skip
    verify_report_signature(report, _cert(GOOD))
    swapped = AttestationReport.from_bytes(build_report_bytes(version=3, signature_algo=1, cpuid_fam_id=0x19,
                                                              signature_r=s, signature_s=r))  # fmt: skip
    with pytest.raises(VerificationError):
        verify_report_signature(swapped, _cert(GOOD))
    with pytest.raises(VerificationError):  # unknown algorithm
        verify_report_signature(AttestationReport.from_bytes(build_report_bytes(version=3, signature_algo=2)), _cert(GOOD))

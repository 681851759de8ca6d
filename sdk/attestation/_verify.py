"""Verify an attestation report against a VCEK and the ARK -> ASK -> VCEK chain.

Everything here raises instead of returning a flag (house rule 8): a report that
:func:`verify_report` returns from has a valid signature by a VCEK that chains to the
given ARK, and the VCEK's TCB and hwID extensions agree with the report.

Certificate profile (AMD's VCEK/KDS spec #57230 as implemented by go-sev-guest,
virtee/sev and CCF): ARK and ASK are RSA-4096 and sign with RSASSA-PSS, SHA-384,
MGF1-SHA-384, salt 48; the VCEK key is EC P-384; the VCEK carries the AMD extensions
listed in :class:`VcekOid`.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hmac
from collections.abc import Sequence
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from .._errors import InvalidParameter
from ._report import (
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    AttestationReport,
    TcbLayout,
    TcbVersion,
)

__all__ = [
    "CertChain",
    "PSS_PADDING",
    "VcekExtensions",
    "VcekOid",
    "VerificationError",
    "load_chain",
    "vcek_extensions",
    "verify_chain",
    "verify_report",
    "verify_report_signature",
]


class VerificationError(InvalidParameter):
    """The report or certificate chain did not verify.  Do not trust anything in it.

    The message says which check failed (for the trusted log); callers must not tell the
    untrusted side more than "rejected".
    """


#: The padding AMD's ARK/ASK use for every signature they make.
PSS_PADDING = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


class VcekOid(str, enum.Enum):
    """AMD VCEK certificate extension OIDs (VCEK/KDS spec #57230, table "VCEK extensions")."""

    STRUCT_VERSION = "1.3.6.1.4.1.3704.1.1"
    PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
    BL_SPL = "1.3.6.1.4.1.3704.1.3.1"
    TEE_SPL = "1.3.6.1.4.1.3704.1.3.2"
    SNP_SPL = "1.3.6.1.4.1.3704.1.3.3"
    SPL_4 = "1.3.6.1.4.1.3704.1.3.4"
    SPL_5 = "1.3.6.1.4.1.3704.1.3.5"
    SPL_6 = "1.3.6.1.4.1.3704.1.3.6"
    SPL_7 = "1.3.6.1.4.1.3704.1.3.7"
    UCODE_SPL = "1.3.6.1.4.1.3704.1.3.8"
    FMC_SPL = "1.3.6.1.4.1.3704.1.3.9"
    HWID = "1.3.6.1.4.1.3704.1.4"


class CertChain(NamedTuple):
    """ARK (root), ASK (intermediate) and VCEK (leaf)."""

    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate


@dataclasses.dataclass(frozen=True, slots=True)
class VcekExtensions:
    """The AMD extensions of a VCEK certificate, decoded."""

    struct_version: int
    product_name: str
    tcb: TcbVersion
    hwid: bytes


def load_chain(ark_pem: bytes, ask_pem: bytes, vcek_pem: bytes) -> CertChain:
    """Parse three PEM certificates.

    :raises VerificationError: a PEM does not parse.
    """
    try:
        return CertChain(*(x509.load_pem_x509_certificate(p) for p in (ark_pem, ask_pem, vcek_pem)))
    except ValueError as exc:
        raise VerificationError(f"bad certificate PEM: {exc}") from exc


def _check_signed_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != 4096:
        raise VerificationError(f"{what}: issuer key is not RSA-4096")
    if cert.issuer != issuer.subject:
        raise VerificationError(f"{what}: issuer name does not match")
    if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
        raise VerificationError(f"{what}: not signed with RSASSA-PSS")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, PSS_PADDING, hashes.SHA384())
    except InvalidSignature as exc:
        raise VerificationError(f"{what}: bad signature") from exc


def _check_validity(cert: x509.Certificate, now: datetime.datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise VerificationError(f"{what}: not valid at {now.isoformat()}")


def verify_chain(
    chain: CertChain,
    *,
    now: datetime.datetime | None = None,
    trusted_arks: Sequence[x509.Certificate] | None = None,
) -> None:
    """Check ARK self-signature, ARK -> ASK, ASK -> VCEK, CA flags, key types and validity.

    A self-signed ARK proves nothing by itself: pass ``trusted_arks`` (the roots you pin, e.g.
    the simulated chip's ``ark.pem``) so a chain under any other root is refused.

    :param chain: the three certificates.
    :param now: time to check validity at (injected; default: the current UTC time).
    :param trusted_arks: if given, the chain's ARK must be one of these (same DER).
    :raises VerificationError: any check fails.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if trusted_arks is not None:
        der = chain.ark.public_bytes(Encoding.DER)
        if not any(hmac.compare_digest(der, t.public_bytes(Encoding.DER)) for t in trusted_arks):
            raise VerificationError("ARK is not one of the trusted roots")
    _check_signed_by(chain.ark, chain.ark, "ARK")
    _check_signed_by(chain.ask, chain.ark, "ASK")
    _check_signed_by(chain.vcek, chain.ask, "VCEK")
    for cert, what in ((chain.ark, "ARK"), (chain.ask, "ASK")):
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound as exc:
            raise VerificationError(f"{what}: no basicConstraints") from exc
        if not bc.ca:
            raise VerificationError(f"{what}: not a CA")
    for cert, what in ((chain.ark, "ARK"), (chain.ask, "ASK"), (chain.vcek, "VCEK")):
        _check_validity(cert, now, what)
    key = chain.vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationError("VCEK: key is not EC P-384")


def _der_value(cert: x509.Certificate, oid: VcekOid) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid.value))
    except x509.ExtensionNotFound:
        return None
    return ext.value.value  # UnrecognizedExtension: the extnValue contents


def _der_tlv(data: bytes, tag: int) -> bytes:
    """One short-form or long-form DER TLV of ``tag`` spanning all of ``data``."""
    if len(data) < 2 or data[0] != tag:
        raise VerificationError(f"VCEK extension: expected DER tag {tag:#x}")
    length, pos = data[1], 2
    if length & 0x80:
        n = length & 0x7F
        length, pos = int.from_bytes(data[2 : 2 + n], "big"), 2 + n
    if pos + length != len(data):
        raise VerificationError("VCEK extension: bad DER length")
    return data[pos:]


def vcek_extensions(cert: x509.Certificate) -> VcekExtensions:
    """Decode the AMD extensions of a VCEK.

    :raises VerificationError: a required extension is missing or malformed.
    """

    def integer(oid: VcekOid, default: int | None = None) -> int:
        raw = _der_value(cert, oid)
        if raw is None:
            if default is None:
                raise VerificationError(f"VCEK: missing extension {oid.name}")
            return default
        value = _der_tlv(raw, 0x02)
        if not 1 <= len(value) <= 2 or int.from_bytes(value, "big") > 0xFF:
            raise VerificationError(f"VCEK: {oid.name} is not a u8 INTEGER")
        return int.from_bytes(value, "big")

    name_raw = _der_value(cert, VcekOid.PRODUCT_NAME)
    hwid_raw = _der_value(cert, VcekOid.HWID)
    if name_raw is None or hwid_raw is None:
        raise VerificationError("VCEK: missing productName or hwID")
    tcb = TcbVersion(
        boot_loader=integer(VcekOid.BL_SPL),
        tee=integer(VcekOid.TEE_SPL),
        snp=integer(VcekOid.SNP_SPL),
        microcode=integer(VcekOid.UCODE_SPL),
        fmc=integer(VcekOid.FMC_SPL, 0),
    )
    return VcekExtensions(
        struct_version=integer(VcekOid.STRUCT_VERSION),
        product_name=_der_tlv(name_raw, 0x16).decode("ascii", "replace"),
        tcb=tcb,
        hwid=_der_tlv(hwid_raw, 0x04),
    )


def verify_report_signature(report: AttestationReport, vcek: x509.Certificate) -> None:
    """Check only the ECDSA P-384 signature over ``report[0:0x2A0]``.

    :raises VerificationError: wrong algorithm, masked key, or bad signature.
    """
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise VerificationError(f"unknown signature algorithm {report.signature_algo}")
    if report.mask_chip_key or report.signing_key != 0:
        raise VerificationError("report is not signed by a VCEK")
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationError("VCEK: key is not EC P-384")
    sig = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(sig, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise VerificationError("bad report signature") from exc


def verify_report(
    report: AttestationReport | bytes,
    chain: CertChain,
    *,
    now: datetime.datetime | None = None,
    trusted_arks: Sequence[x509.Certificate] | None = None,
) -> AttestationReport:
    """Verify chain, signature and the VCEK's binding to the report's chip and TCB.

    :param report: raw bytes (parsed here) or an already parsed report.
    :param chain: ARK, ASK, VCEK (see :func:`load_chain`).
    :param now: validity time for the certificates (injected clock).
    :param trusted_arks: pinned roots (see :func:`verify_chain`); without them the caller
        must check ``chain.ark`` itself.
    :returns: the parsed, now trusted report.
    :raises ReportFormatError: malformed report bytes.
    :raises VerificationError: any check failed; discard the report.
    """
    if not isinstance(report, AttestationReport):
        report = AttestationReport.from_bytes(report)
    verify_chain(chain, now=now, trusted_arks=trusted_arks)
    verify_report_signature(report, chain.vcek)
    ext = vcek_extensions(chain.vcek)
    reported = report.tcb("reported_tcb")
    if report.layout is TcbLayout.MILAN_GENOA:
        reported = reported._replace(fmc=0)
    if ext.tcb != reported:
        raise VerificationError(f"VCEK TCB {ext.tcb} does not match REPORTED_TCB {reported}")
    if any(report.chip_id) and not hmac.compare_digest(ext.hwid, report.chip_id[: len(ext.hwid)]):
        raise VerificationError("VCEK hwID does not match CHIP_ID")
    return report


"""Who may receive (or send) a guest: the peer-verification policy of the migration channel.

The default is the strictest useful one: the peer must run exactly the same SVSM
measurement as this one, under the same pinned AMD root key, at VMPL0, without the
DEBUG policy bit, on firmware whose reported TCB is not older than a floor (by default this
SVSM's own: a guest must never move to a platform with known, since-fixed firmware flaws).
An allow-list widens the measurement check for planned upgrades.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
from collections.abc import Callable

from cryptography import x509

from svsm.sdk.attestation import AttestationReport, TcbVersion, load_chain, verify_report

from ._channel import ChannelError, Evidence

__all__ = ["MeasurementPolicy", "make_verifier"]

_POLICY_DEBUG = 1 << 19


@dataclasses.dataclass(frozen=True)
class MeasurementPolicy:
    """Launch measurements a peer may have.

    :ivar allowed: 48-byte measurements accepted (by default: this SVSM's own).
    :ivar allow_debug: accept a peer whose guest policy allows debugging (never by default).
    :ivar min_tcb: the oldest REPORTED_TCB accepted, component by component (``None``: no floor).
    """

    allowed: frozenset[bytes]
    allow_debug: bool = False
    min_tcb: TcbVersion | None = None

    @classmethod
    def same_as(cls, measurement: bytes, *extra: bytes) -> MeasurementPolicy:
        """The default policy: the peer runs the same measurement (plus ``extra``)."""
        return cls(frozenset((measurement, *extra)))


def _der(pem: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


#: Domain label of the SVSM's migration reports (the kernel's ``vm`` service applies it; a test
#: checks that ``svsm.kernel.migration`` uses the same bytes).
MIGRATION_REPORT_LABEL = b"pysvsm migration report v1\0"


def migration_report_data(binding: bytes) -> bytes:
    """REPORT_DATA of the report the ``vm`` service's ``attest`` returns for ``binding``.

    The kernel never lets the migration module pick a VMPL0 report's REPORT_DATA: it signs
    SHA-512(label || binding), so nothing the module obtains can pass as another VMPL0 binding
    (the services attestation's SHA-512(nonce || manifest), another module's report).
    """
    return hashlib.sha512(MIGRATION_REPORT_LABEL + bytes(binding)).digest()


def make_verifier(
    pinned_ark_pem: bytes,
    policy: MeasurementPolicy,
    *,
    now: Callable[[], datetime.datetime] | None = None,
) -> Callable[[Evidence, bytes], AttestationReport]:
    """Build the channel's peer verifier.

    :param pinned_ark_pem: the AMD root key this side trusts; the peer's ARK must be identical.
    :param policy: accepted measurements.
    :param now: clock for certificate validity (injected).
    :returns: ``verify(evidence, expected_report_data) -> AttestationReport``.
    """
    pinned = _der(pinned_ark_pem)

    def verify(evidence: Evidence, expected: bytes) -> AttestationReport:
        if not hmac.compare_digest(_der(evidence.ark_pem), pinned):
            raise ChannelError("peer attestation rejected")
        chain = load_chain(evidence.ark_pem, evidence.ask_pem, evidence.vcek_pem)
        report = verify_report(evidence.report, chain, now=now() if now else None)
        if not hmac.compare_digest(report.report_data, expected):
            raise ChannelError("peer attestation rejected")
        if report.vmpl != 0:
            raise ChannelError("peer attestation rejected")
        if report.policy & _POLICY_DEBUG and not policy.allow_debug:
            raise ChannelError("peer attestation rejected")
        if not any(hmac.compare_digest(report.measurement, m) for m in policy.allowed):
            raise ChannelError("peer attestation rejected")
        if policy.min_tcb is not None and any(
            have < need for have, need in zip(report.tcb("reported_tcb"), policy.min_tcb, strict=True)
        ):
            raise ChannelError("peer attestation rejected")
        return report

    return verify

"""The SVSM attestation protocol (1): ATTEST_SERVICES and ATTEST_SINGLE_SERVICE (coconut-svsm.md 2.4).

REPORT_DATA = SHA-512(nonce || services manifest); the VMPL0 report comes from the PSP through
the guest-request message channel (the certificates through the extended request).  Output
registers: RCX = manifest length, RDX = certificate length, R8 = report length.  They are set
*before* any "buffer too small" error, so the guest can resize and retry (INVALID_PARAMETER).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence

from svsm.sdk import InvalidParameter, UnsupportedProtocol
from svsm.sdk.guest._abi import (
    NONCE_SIZE,
    PAGE_SIZE,
    SVSM_REQ_ATTEST_SERVICES,
    SVSM_REQ_ATTEST_SINGLE_SERVICE,
    AttestServicesOp,
    AttestSingleServiceOp,
    ServicesManifest,
)

from ._dispatch import RequestParams
from ._guestmem import GuestMemory

__all__ = ["AttestProtocol", "CertificateBufferTooSmall", "ReportFetcher", "REPORT_SIZE", "CERT_TABLE_ENTRY_SIZE"]

log = logging.getLogger("svsm.kernel.protocols.attest")

#: Bytes of the report copied to the guest (0x4A0, snp.md 1).
REPORT_SIZE = 0x4A0
#: The certificate table's entry size; an all-zero first entry means "no certificates" (snp.md 2.4).
CERT_TABLE_ENTRY_SIZE = 24


class CertificateBufferTooSmall(InvalidParameter):
    """The PSP/host needs more certificate pages than the guest offered.

    :param pages: pages needed (the SVSM reports ``pages << 12`` in RDX).
    """

    def __init__(self, pages: int) -> None:
        super().__init__(f"certificate buffer needs {pages} pages")
        self.pages = pages


#: ``fetch(cpu, report_data, cert_capacity) -> (report, certificates)``: a VMPL0 report from the PSP.
#: ``cert_capacity`` None = standard request; otherwise the extended request with that many bytes
#: of certificate buffer (raises :class:`CertificateBufferTooSmall`).
ReportFetcher = Callable[[int, bytes, "int | None"], tuple[bytes, bytes]]


class AttestProtocol:
    """Handler for protocol 1.

    .. versionadded:: 0.1

    :param memory: checked guest-memory accessor.
    :param fetch_report: gets a signed VMPL0 report (and certificates) from the PSP.
    :param services: returns the (GUID, manifest) pairs of the running services, in order.
    """

    def __init__(
        self,
        memory: GuestMemory,
        fetch_report: ReportFetcher,
        services: Callable[[], Sequence[tuple[uuid.UUID, bytes]]],
    ) -> None:
        self._mem = memory
        self._fetch = fetch_report
        self._services = services

    def __call__(self, params: RequestParams) -> None:
        """Serve one attestation call.  Unknown calls answer UNSUPPORTED_PROTOCOL (upstream quirk)."""
        if params.call == SVSM_REQ_ATTEST_SERVICES:
            op = AttestServicesOp.from_bytes(self._mem.read(params.cpu, params.rcx, 0x40))
            manifest = ServicesManifest(tuple(self._services()))
            self._attest(params, op, manifest)
        elif params.call == SVSM_REQ_ATTEST_SINGLE_SERVICE:
            single = AttestSingleServiceOp.from_bytes(self._mem.read(params.cpu, params.rcx, 0x58))
            for guid, data in self._services():
                if guid == single.service_guid:
                    self._attest(params, single.op, ServicesManifest(((guid, data),)))
                    return
            raise UnsupportedProtocol(f"unknown service GUID {single.service_guid}")
        else:
            raise UnsupportedProtocol(f"attestation call {params.call}")

    def _attest(self, params: RequestParams, op: AttestServicesOp, manifest: ServicesManifest) -> None:
        cpu = params.cpu
        nonce = self._mem.read(cpu, op.nonce_gpa, NONCE_SIZE)
        blob = manifest.to_bytes()
        params.rcx, params.rdx, params.r8 = len(blob), 0, REPORT_SIZE
        if op.manifest_size < len(blob) or op.report_size < REPORT_SIZE:
            raise InvalidParameter("manifest or report buffer too small")
        # Buffers are checked before the PSP round trip so a bad address costs no sequence number.
        self._mem.check(op.report_gpa, REPORT_SIZE)
        self._mem.check(op.manifest_gpa, len(blob))
        if op.certificate_size:
            self._mem.check(op.certificate_gpa, op.certificate_size)
        report_data = hashlib.sha512(nonce + blob).digest()
        try:
            report, certs = self._fetch(cpu, report_data, op.certificate_size or None)
        except CertificateBufferTooSmall as exc:
            params.rdx = exc.pages * PAGE_SIZE
            raise
        if not op.certificate_size or not any(certs[:CERT_TABLE_ENTRY_SIZE]):
            certs = b""
        params.rdx = len(certs)
        if len(certs) > op.certificate_size:
            raise InvalidParameter("certificate buffer too small")
        self._mem.write(cpu, op.manifest_gpa, blob)
        self._mem.write(cpu, op.report_gpa, report[:REPORT_SIZE])
        if certs:
            self._mem.write(cpu, op.certificate_gpa, certs)
        log.debug("attestation on CPU %d: manifest %d bytes, certs %d bytes", cpu, len(blob), len(certs))

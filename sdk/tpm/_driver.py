"""The guest's vTPM driver: TPM commands over SVSM_VTPM_CMD, as Linux ``tpm_svsm`` does.

Linux (``drivers/char/tpm/tpm_svsm.c``) probes with SVSM_VTPM_QUERY and needs bit 8
(TPM_SEND_COMMAND) in RCX, then for each command fills one private 4 KiB buffer (the
little-endian platform header from :mod:`._vtpm` plus the command), makes the call with
RCX = the buffer's GPA, and reads the response back from the same buffer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Protocol

from .._errors import UnsupportedProtocol
from ._vtpm import (
    SVSM_VTPM_CMD,
    SVSM_VTPM_PROTOCOL,
    SVSM_VTPM_QUERY,
    TPM_SEND_COMMAND,
    VTPM_BUFFER_SIZE,
    decode_vtpm_response,
    encode_vtpm_request,
)

__all__ = ["VtpmDriver", "VtpmGuest", "DriverStatistics"]

log = logging.getLogger(__name__)


class VtpmGuest(Protocol):
    """What the driver needs from the guest OS (:class:`svsm.sdk.guest.Guest` provides it)."""

    mem: Any  #: guest memory view with ``read(gpa, n)`` and ``write(gpa, data)``
    pool: Any  #: private validated pages: ``take() -> gpa``, ``give(gpa)``

    def svsm_call(self, protocol: int, call: int, rcx: int = 0, rdx: int = 0, r8: int = 0, r9: int = 0) -> Any:
        """One SVSM call; returns the output registers (``rax``, ``rcx``, ``rdx``, ...)."""
        ...


@dataclasses.dataclass(frozen=True)
class DriverStatistics:
    """Counters of one :class:`VtpmDriver`."""

    commands: int
    failed_calls: int
    buffer_gpa: int


class VtpmDriver:
    """A :class:`~svsm.sdk.tpm.TpmDevice` reaching the vTPM through the SVSM.

    :param guest: the guest OS on one vCPU.
    :param buffer_gpa: GPA of the private command buffer; default: a page from the guest's pool,
        given back by :meth:`close`.
    :raises UnsupportedProtocol: the SVSM does not serve protocol 2 with TPM_SEND_COMMAND
        (the probe failed: the guest has no TPM).

    .. versionadded:: 0.1
    """

    def __init__(self, guest: VtpmGuest, *, buffer_gpa: int | None = None) -> None:
        self.guest = guest
        self.platform_commands, self.features = self.probe()
        if not self.platform_commands & (1 << TPM_SEND_COMMAND):
            raise UnsupportedProtocol(f"vTPM lacks TPM_SEND_COMMAND (commands {self.platform_commands:#x})")
        self._own_buffer = buffer_gpa is None
        self.gpa = guest.pool.take() if buffer_gpa is None else buffer_gpa
        self._lock = threading.Lock()  # one buffer: one command at a time
        self._commands = 0
        self._failed = 0

    def probe(self) -> tuple[int, int]:
        """SVSM_VTPM_QUERY: ``(platform command bitmap, features)``.

        :raises UnsupportedProtocol: the call failed (no vTPM protocol served).
        """
        r = self.guest.svsm_call(SVSM_VTPM_PROTOCOL, SVSM_VTPM_QUERY)
        if r.rax != 0:
            raise UnsupportedProtocol(f"SVSM_VTPM_QUERY failed with {r.rax:#x}", code=r.rax)
        return int(r.rcx), int(r.rdx)

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        """Send one TPM command, return the TPM response.

        :raises RequestError: the SVSM refused the call (the exception carries its result code).
        :raises TransportError: the response header written back is malformed.
        """
        request = encode_vtpm_request(bytes(command), locality)
        with self._lock:
            self.guest.mem.write(self.gpa, request)
            r = self.guest.svsm_call(SVSM_VTPM_PROTOCOL, SVSM_VTPM_CMD, rcx=self.gpa)
            if r.rax != 0:
                self._failed += 1
                r.raise_for_result()
            page = self.guest.mem.read(self.gpa, VTPM_BUFFER_SIZE)
            self._commands += 1
        return decode_vtpm_response(page)

    def statistics(self) -> DriverStatistics:
        """A snapshot of the counters."""
        return DriverStatistics(self._commands, self._failed, self.gpa)

    def close(self) -> None:
        """Give the buffer page back to the guest's pool (if the driver took it)."""
        if self._own_buffer:
            self.guest.pool.give(self.gpa)
            self._own_buffer = False

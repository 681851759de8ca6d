"""The SVSM panic path: a broken invariant kills the whole CVM, loudly and safely.

What upstream does (coconut-svsm.md 1.2 "Panic", 1.8): wipe VMPCK0-3 so no later message can be
forged or decrypted with them, log ``Panic on CPU[n]`` and a backtrace framed by
``---BACKTRACE---`` / ``---END---``, then ask the hypervisor to terminate the guest with the GHCB
MSR termination request (0x100, reason set in [15:12], reason code in [23:16], snp.md 4.2).

This module does no I/O of its own: the wipe and the termination request are callables the
kernel injects (they talk to the PSP secrets and the vCPU's GHCB MSR), so the path is testable.
"""

from __future__ import annotations

import enum
import logging
import threading
import traceback
from collections.abc import Callable
from typing import NoReturn

from svsm.sdk import FatalError

__all__ = ["SvsmPanic", "TerminationReason", "Panicker", "termination_request_msr", "GHCB_MSR_TERM_REQ"]

log = logging.getLogger("svsm.kernel.panic")

#: GHCB MSR protocol termination request (snp.md 4.2).
GHCB_MSR_TERM_REQ = 0x100


class TerminationReason(enum.IntEnum):
    """(reason set << 8 | code) pairs of the termination request (snp.md 4.2)."""

    #: Reason set 0, code 0: general termination request (what the SVSM panic sends).
    GENERAL = 0x000
    #: Reason set 0, code 1: GHCB protocol range unsupported.
    GHCB_PROTOCOL = 0x001
    #: Reason set 0, code 2: SNP features unsupported.
    SNP_FEATURES = 0x002

    @property
    def reason_set(self) -> int:
        """The reason set ([15:12] of the MSR value)."""
        return self.value >> 8

    @property
    def code(self) -> int:
        """The reason code ([23:16] of the MSR value)."""
        return self.value & 0xFF


def termination_request_msr(reason: TerminationReason) -> int:
    """The GHCB MSR value that requests termination for ``reason``."""
    return GHCB_MSR_TERM_REQ | (reason.reason_set & 0xF) << 12 | (reason.code & 0xFF) << 16


class SvsmPanic(FatalError):
    """The SVSM panicked; the CVM is terminated.

    Raised on the thread that panicked (and by the platform on every vCPU that tries to run
    afterwards).  Nothing may be retried: boot a new VM.

    :param cpu: the vCPU that panicked.
    :param reason: the termination reason sent to the hypervisor.
    :param backtrace: the logged backtrace lines.
    """

    def __init__(self, cpu: int, reason: TerminationReason, backtrace: tuple[str, ...], cause: str) -> None:
        super().__init__(f"SVSM panic on CPU[{cpu}]: {cause}")
        self.cpu = cpu
        self.reason = reason
        self.backtrace = backtrace


class Panicker:
    """Runs the panic sequence once per VM; later panics on other vCPUs only re-raise.

    :param wipe_vmpcks: zeroes VMPCK0-3 wherever the kernel holds them.
    :param terminate: sends the GHCB MSR termination request (the MSR value) from ``cpu``.
    """

    def __init__(self, wipe_vmpcks: Callable[[], None], terminate: Callable[[int, int], None]) -> None:
        self._wipe = wipe_vmpcks
        self._terminate = terminate
        self._lock = threading.Lock()
        self.panicked: SvsmPanic | None = None

    def panic(
        self, cpu: int, cause: BaseException | str, reason: TerminationReason = TerminationReason.GENERAL
    ) -> NoReturn:
        """Wipe VMPCKs, log the backtrace, request termination, raise :class:`SvsmPanic`.

        :param cpu: vCPU index the panic happened on.
        :param cause: the exception (its traceback is logged) or a message.
        :raises SvsmPanic: always.
        """
        with self._lock:
            first = self.panicked is None
            if first:
                # Keys first: nothing below may run with usable VMPCKs (upstream order).
                self._wipe()
                if isinstance(cause, BaseException):
                    frames = traceback.format_exception(cause)
                    text = f"{type(cause).__name__}: {cause}"
                else:
                    frames = traceback.format_stack()[:-1]
                    text = cause
                lines = tuple(line.rstrip("\n") for chunk in frames for line in chunk.splitlines())
                log.critical("Panic on CPU[%d]: %s", cpu, text)
                log.critical("---BACKTRACE---\n%s\n---END---", "\n".join(lines))
                self.panicked = SvsmPanic(cpu, reason, lines, text)
            exc = self.panicked
        assert exc is not None
        if first:
            self._terminate(cpu, termination_request_msr(reason))
        raise exc

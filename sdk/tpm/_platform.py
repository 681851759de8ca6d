"""The platform around a TPM: power and NV rails, locality, and the lock serialising commands.

The mssim and swtpm protocols both carry *platform* signals (power on/off, NV on/off,
reset) next to TPM command bytes.  :class:`TpmPlatform` holds that state once, so both
transports (and the SVSM path) see the same TPM the same way, and forwards each signal to
the engine when the engine implements it.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import threading
from typing import Protocol, runtime_checkable

from .._errors import RequestError

__all__ = [
    "TpmDevice",
    "TpmPlatform",
    "PlatformStatistics",
    "SignalNotSupported",
    "TPM_RC_FAILURE",
    "failure_response",
]

log = logging.getLogger(__name__)

#: TPM_RC_FAILURE (tpm.md section 1.2: what swtpm answers while the TPM is not running).
TPM_RC_FAILURE = 0x101
_ERROR_RESPONSE = struct.Struct(">HII")  # tag, responseSize, responseCode (tpm.md section 2)
assert _ERROR_RESPONSE.size == 10


def failure_response(rc: int = TPM_RC_FAILURE) -> bytes:
    """A 10-byte TPM error response ``80 01 00 00 00 0A`` + ``rc`` (tpm.md section 2)."""
    return _ERROR_RESPONSE.pack(0x8001, 10, rc)


@runtime_checkable
class TpmDevice(Protocol):
    """Anything that executes TPM 2.0 command bytes: the engine, the guest vTPM driver, a swtpm client.

    Optional methods a device may add, called by :class:`TpmPlatform` when present:
    ``power_on()``, ``power_off()``, ``nv_on()``, ``nv_off()``, ``reset()`` (``_TPM_Init``),
    ``hash_start()``, ``hash_data(data)``, ``hash_end()``, ``cancel_on()``, ``cancel_off()``.

    .. versionadded:: 0.1
    """

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        """Run one TPM command and return the whole response (header included)."""
        ...


class SignalNotSupported(Exception):
    """The device has no method for this platform signal; transports answer it with a failure code."""


@dataclasses.dataclass(frozen=True)
class PlatformStatistics:
    """Counters of one :class:`TpmPlatform` (house rule 10)."""

    powered: bool
    nv_enabled: bool
    commands: int
    command_bytes: int
    response_bytes: int
    signals: int
    refused_powered_off: int
    device_errors: int = 0


class TpmPlatform:
    """Power/NV state, the current locality and a lock around one :class:`TpmDevice`.

    :param device: the TPM to drive.
    :param powered: start with power on (``swtpm --flags not-need-init`` behaves so; mssim
        clients send POWER_ON themselves, which is then a no-op as in the reference).

    .. versionadded:: 0.1
    """

    def __init__(self, device: TpmDevice, *, powered: bool = True) -> None:
        self.device = device
        self._lock = threading.Lock()  # no locked method calls another one
        self._powered = False
        self._nv = False
        self.locality = 0
        self.established = False
        self._commands = 0
        self._cmd_bytes = 0
        self._rsp_bytes = 0
        self._signals = 0
        self._refused = 0
        self._device_errors = 0
        if powered:
            self.power_on()
            self.nv_on()

    @property
    def powered(self) -> bool:
        """Whether the TPM has power (commands are refused otherwise)."""
        return self._powered

    def _signal(self, name: str, *args: object) -> None:
        fn = getattr(self.device, name, None)
        self._signals += 1
        if fn is None:
            raise SignalNotSupported(name)
        fn(*args)

    def _signal_optional(self, name: str) -> None:
        """Forward a signal whose absence changes nothing observable (the device has no rail state)."""
        self._signals += 1
        fn = getattr(self.device, name, None)
        if fn is not None:
            fn()

    def power_on(self) -> None:
        """TPM_SIGNAL_POWER_ON: cold start (``_TPM_Init``); a no-op when already on (tpm.md 1.1)."""
        with self._lock:
            if self._powered:
                self._signals += 1
                return
            self._signal_optional("power_on")
            self._powered = True

    def power_off(self) -> None:
        """TPM_SIGNAL_POWER_OFF: volatile state is lost; commands get no response until power on."""
        with self._lock:
            self._signal_optional("power_off")
            self._powered = False

    def nv_on(self) -> None:
        """TPM_SIGNAL_NV_ON: NV becomes available."""
        with self._lock:
            self._signal_optional("nv_on")
            self._nv = True

    def nv_off(self) -> None:
        """TPM_SIGNAL_NV_OFF: NV becomes unavailable."""
        with self._lock:
            self._signal_optional("nv_off")
            self._nv = False

    def reset(self) -> None:
        """TPM_SIGNAL_RESET / swtpm CMD_INIT: ``_TPM_Init`` if power is on (tpm.md 1.1).

        A device without ``reset()`` is power-cycled instead, which has the same effect
        on a TPM whose volatile state lives only in memory.
        """
        with self._lock:
            if not self._powered:
                self._signals += 1
                return
            if getattr(self.device, "reset", None) is not None:
                self._signal("reset")
            else:
                self._signal_optional("power_off")
                self._signal_optional("power_on")

    def hash_start(self) -> None:
        """_TPM_Hash_Start (H-CRTM at locality 4)."""
        with self._lock:
            self._signal("hash_start")

    def hash_data(self, data: bytes) -> None:
        """_TPM_Hash_Data."""
        with self._lock:
            self._signal("hash_data", data)

    def hash_end(self) -> None:
        """_TPM_Hash_End."""
        with self._lock:
            self._signal("hash_end")

    def cancel(self, on: bool) -> None:
        """TPM_SIGNAL_CANCEL_ON/OFF.  Commands here run to completion, so only a device may care."""
        with self._lock:
            self._signal_optional("cancel_on" if on else "cancel_off")

    def execute(self, command: bytes, locality: int | None = None) -> bytes | None:
        """Run ``command`` at ``locality`` (default: the last locality set).

        :returns: the response, or ``None`` when the TPM has no power (mssim then answers
            ``rspSize = 0``, swtpm a TPM_RC_FAILURE response).
        """
        loc = self.locality if locality is None else locality
        with self._lock:
            if not self._powered:
                self._refused += 1
                return None
            try:
                response = self.device.execute(bytes(command), loc)
            except RequestError as exc:
                # The path to the TPM refused the call (e.g. the vTPM module is restarting and
                # the SVSM answered BUSY): the client sees a TPM failure, never a dropped link.
                self._device_errors += 1
                log.warning("TPM device failed a command (%s): answering TPM_RC_FAILURE", exc)
                response = failure_response()
            self._commands += 1
            self._cmd_bytes += len(command)
            self._rsp_bytes += len(response)
            return response

    def statistics(self) -> PlatformStatistics:
        """A snapshot of the counters."""
        with self._lock:
            return PlatformStatistics(
                powered=self._powered,
                nv_enabled=self._nv,
                commands=self._commands,
                command_bytes=self._cmd_bytes,
                response_bytes=self._rsp_bytes,
                signals=self._signals,
                refused_powered_off=self._refused,
                device_errors=self._device_errors,
            )

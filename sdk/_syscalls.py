"""The syscall client a module uses to ask the kernel for services.

Every call becomes one ABI frame (:mod:`svsm.sdk.abi`) and waits for its reply.
The kernel checks each against the capabilities it granted the module; a refusal
comes back as the :class:`~svsm.sdk.RequestError` leaf of its result code, e.g.
:class:`CapabilityDenied` (``INVALID_REQUEST``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from ._errors import (
    Busy,
    Incomplete,
    InvalidAddress,
    InvalidFormat,
    InvalidParameter,
    InvalidRequest,
    ProtocolError,
    RequestError,
    ResultCode,
    UnsupportedCall,
    UnsupportedProtocol,
)
from .abi import _messages as m

__all__ = ["CapabilityDenied", "Syscalls", "SyscallStatistics", "error_for_code"]

#: Sends one syscall message and returns the kernel's :class:`~svsm.sdk.abi.SyscallReply`.
Transport = Callable[[Any], "m.SyscallReply"]

_BY_CODE: dict[int, type[RequestError]] = {
    ResultCode.INCOMPLETE: Incomplete,
    ResultCode.UNSUPPORTED_PROTOCOL: UnsupportedProtocol,
    ResultCode.UNSUPPORTED_CALL: UnsupportedCall,
    ResultCode.INVALID_ADDRESS: InvalidAddress,
    ResultCode.INVALID_FORMAT: InvalidFormat,
    ResultCode.INVALID_PARAMETER: InvalidParameter,
    ResultCode.INVALID_REQUEST: InvalidRequest,
    ResultCode.BUSY: Busy,
}


class CapabilityDenied(InvalidRequest):
    """The module was not granted the capability this syscall needs.

    The kernel counts a strike: stop calling it (check ``ctx.capabilities`` first).
    """


def error_for_code(code: int, reason: str = "") -> RequestError:
    """Build the :class:`~svsm.sdk.RequestError` leaf that carries result ``code``.

    :param code: a non-zero SVSM result code.
    :param reason: human text for logs (never parsed).
    :returns: an exception instance to raise.
    """
    if code in _BY_CODE:
        return _BY_CODE[code](reason)
    if ResultCode.PROTOCOL_BASE <= code < ResultCode.PROTOCOL_BASE + 0x1000:
        return ProtocolError(code - ResultCode.PROTOCOL_BASE, reason)
    return RequestError(reason, code=code)


class SyscallStatistics(NamedTuple):
    """How many syscalls this client made and how many failed."""

    calls: int
    failures: int


class Syscalls:
    """Typed client for the kernel's syscalls; one per module process.

    :param transport: sends one syscall message, returns its reply (the runtime provides it).
    :param capabilities: what the kernel granted, from the handshake (informational:
        the kernel checks again).

    .. versionadded:: 0.1
    """

    def __init__(self, transport: Transport, capabilities: frozenset[str] = frozenset()) -> None:
        self._transport = transport
        self._ids = itertools.count(1)
        self.capabilities = capabilities
        self._calls = 0
        self._failures = 0

    def _do(self, cls: type, **fields: Any) -> m.SyscallReply:
        msg = cls(id=next(self._ids) & 0xFFFF_FFFF, **fields)
        self._calls += 1
        reply = self._transport(msg)
        if reply.code:
            self._failures += 1
            if reply.denied:
                raise CapabilityDenied(f"{cls.__name__} not granted")
            raise error_for_code(reply.code, f"{cls.__name__} failed")
        return reply

    # -- logging, randomness, time ------------------------------------------
    def log(self, level: int, message: str) -> None:
        """Write one line to the kernel's log under the module's name (capability ``log``)."""
        self._do(m.SysLog, level=max(0, min(50, int(level))), message=message[: m.MAX_TEXT])

    def random(self, size: int) -> bytes:
        """Return ``size`` (<= 4096) random bytes from the kernel's RNG (capability ``random``)."""
        return self._do(m.SysRandom, size=size).data

    def time_ns(self) -> int:
        """Return the kernel clock in nanoseconds (capability ``time``); tests inject a fake clock."""
        return self._do(m.SysTime).number

    # -- storage (namespaced per module) -------------------------------------
    def storage_get(self, key: str) -> bytes | None:
        """Return the value stored under ``key`` in this module's namespace, or ``None``."""
        reply = self._do(m.SysStorageGet, key=key)
        return reply.data if reply.number else None

    def storage_put(self, key: str, value: bytes) -> None:
        """Store ``value`` (<= 768 KiB) under ``key`` (capability ``storage``)."""
        self._do(m.SysStoragePut, key=key, value=bytes(value))

    def storage_delete(self, key: str) -> bool:
        """Delete ``key``; returns whether it existed."""
        return bool(self._do(m.SysStorageDelete, key=key).number)

    def storage_list(self, prefix: str = "") -> list[str]:
        """Keys of this module's namespace starting with ``prefix``, sorted."""
        return list(self._do(m.SysStorageList, prefix=prefix).names)

    # -- attestation and keys -------------------------------------------------
    def attestation_report(self, report_data: bytes) -> bytes:
        """Ask the PSP for an attestation report carrying ``report_data`` (64 bytes; capability ``attest``).

        A privileged capability (built-in or policy-listed modules only).  Verifiers should expect
        REPORT_DATA = :func:`svsm.sdk.module_report_data` (module name, ``ctx.measurement``,
        ``report_data``) once the kernel domain-separates module reports (docs/modules.md).

        :returns: the raw 1184-byte ATTESTATION_REPORT (parse with :mod:`svsm.sdk.attestation`).
        """
        return self._do(m.SysReport, report_data=bytes(report_data)).data

    def derived_key(self, context: bytes = b"", size: int = 32) -> bytes:
        """A key unique to this module's identity (name + measurement) and ``context`` (capability ``derive_key``).

        Stable across restarts and boots of the same measured module on the same platform.
        """
        return self._do(m.SysDerivedKey, context=bytes(context), size=size).data

    # -- grants ----------------------------------------------------------------
    def grant_map(self, grant: int) -> bytes:
        """Read the whole window of grant ``grant`` (capability ``grant``).

        :raises InvalidRequest: the grant was revoked (its request completed) or never existed.
        """
        return self._do(m.SysGrantMap, grant=grant).data

    def grant_write(self, grant: int, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` inside a writable grant.

        :raises InvalidAddress: the write would leave the window.
        """
        self._do(m.SysGrantWrite, grant=grant, offset=offset, data=bytes(data))

    def grant_unmap(self, grant: int) -> None:
        """Give the grant back before the request completes."""
        self._do(m.SysGrantUnmap, grant=grant)

    # -- the host's (untrusted) disk ------------------------------------------
    def disk_read(self, offset: int, size: int) -> bytes:
        """Read ``size`` bytes of the host disk at ``offset`` (capability ``disk``; untrusted data)."""
        return self._do(m.SysDiskRead, offset=offset, size=size).data

    def disk_write(self, offset: int, data: bytes) -> None:
        """Write ``data`` to the host disk at ``offset`` (capability ``disk``)."""
        self._do(m.SysDiskWrite, offset=offset, data=bytes(data))

    def disk_flush(self) -> None:
        """Ask the host to make earlier writes durable (capability ``disk``)."""
        self._do(m.SysDiskFlush)

    def disk_size(self) -> int:
        """Size of the host disk in bytes (capability ``disk``)."""
        return self._do(m.SysDiskSize).number

    # -- kernel services ---------------------------------------------------------
    def service(self, service: str, op: str, payload: bytes = b"") -> bytes:
        """Ask kernel service ``service`` to perform ``op`` (capability ``svc:<service>``).

        Kernel code registers services per VM (``ModuleHost.register_service``); the
        payload and reply formats are the service's own.

        :param service: the service name (<= 32 characters), declared in ``Manifest.services``.
        :param op: the operation (<= 32 characters).
        :param payload: the request bytes (<= 768 KiB).
        :returns: the service's reply bytes (<= 768 KiB).
        :raises CapabilityDenied: ``svc:<service>`` was not granted.
        :raises UnsupportedCall: no such service on this host.
        :raises RequestError: the service's own error code (its leaf).

        .. versionadded:: 0.2
        """
        return self._do(m.SysService, service=service, op=op, payload=payload).data

    def statistics(self) -> SyscallStatistics:
        """Counters of this client."""
        return SyscallStatistics(self._calls, self._failures)


class SyscallLogHandler(logging.Handler):
    """A logging handler that forwards records through :meth:`Syscalls.log`."""

    def __init__(self, syscalls: Syscalls) -> None:
        super().__init__()
        self._sys = syscalls

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sys.log(record.levelno, self.format(record))
        except RequestError:
            self.handleError(record)

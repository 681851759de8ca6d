"""Kernel side of the syscalls: one checked, typed handler per syscall (no I/O).

:meth:`SyscallHandler.handle` takes a decoded syscall message of one module and
returns the :class:`~svsm.sdk.abi.SyscallReply`.  Each syscall is checked against the
module's granted capabilities first; a refusal is a reply with ``denied=True`` and
counts a strike.  Providers (clock, RNG, PSP report, key derivation, disk) are
injected, so tests are deterministic (house rule 9).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from svsm.sdk import InvalidRequest, RequestError, ResultCode, UnsupportedCall, module_report_data
from svsm.sdk.abi import _messages as m

from ._grants import GrantTable
from ._storage import StorageRouter

__all__ = [
    "DiskProvider",
    "Providers",
    "SERVICE_NAME",
    "ServiceHandler",
    "SyscallHandler",
    "SyscallStatistics",
    "REQUIRED_CAPABILITY",
]

log = logging.getLogger("svsm.kernel.ipc.syscalls")

#: Capability each syscall needs.
REQUIRED_CAPABILITY: dict[type, str] = {
    m.SysLog: "log",
    m.SysRandom: "random",
    m.SysTime: "time",
    m.SysStorageGet: "storage",
    m.SysStoragePut: "storage",
    m.SysStorageDelete: "storage",
    m.SysStorageList: "storage",
    m.SysReport: "attest",
    m.SysDerivedKey: "derive_key",
    m.SysGrantMap: "grant",
    m.SysGrantWrite: "grant",
    m.SysGrantUnmap: "grant",
    m.SysDiskRead: "disk",
    m.SysDiskWrite: "disk",
    m.SysDiskFlush: "disk",
    m.SysDiskSize: "disk",
    m.SysService: "svc:",  # + the service name (checked per message)
}
assert set(REQUIRED_CAPABILITY) == set(m.SYSCALLS)

#: ``handler(module_name, op, payload) -> reply bytes``; raise a RequestError leaf for an error code.
ServiceHandler = Callable[[str, str, bytes], bytes]

#: A kernel service name: what ``Manifest.services`` lists and ``svc:<name>`` grants.
SERVICE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class DiskProvider(Protocol):
    """The host's untrusted block device as the ``disk`` syscalls see it."""

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def size(self) -> int: ...


def _default_report(report_data: bytes) -> bytes:
    raise UnsupportedCall("no PSP attached to this module host")


@dataclass
class Providers:
    """Everything the syscalls reach outside the module host, injectable.

    :param clock: nanoseconds (``time.monotonic_ns`` by default; tests pass a fake clock).
    :param rng: ``rng(n) -> n random bytes``.
    :param report: ``report(report_data) -> raw attestation report`` (the PSP; VMPL0).
    :param key_root: 32+ byte secret that module keys are derived from (the PSP's derived
        key bound to the SVSM measurement); a random per-host key if not given.
    :param disk: the host block device, if any.
    :param storage: the storage router shared by every module.
    :param services: kernel services by name (``svc:<name>``), usually filled through
        ``ModuleHost.register_service``; one registry per host (per VM).
    """

    clock: Callable[[], int] = time.monotonic_ns
    rng: Callable[[int], bytes] = os.urandom
    report: Callable[[bytes], bytes] = _default_report
    key_root: bytes = field(default_factory=lambda: os.urandom(32))
    disk: DiskProvider | None = None
    storage: StorageRouter = field(default_factory=StorageRouter)
    services: dict[str, ServiceHandler] = field(default_factory=dict)


class SyscallStatistics(NamedTuple):
    """Syscall counters of one module."""

    calls: int
    denied: int
    failed: int


class SyscallHandler:
    """Serves the syscalls of one module.

    :param module: the module's name (its storage namespace and log name).
    :param capabilities: what policy granted it.
    :param measurement: SHA-384 of its code (binds derived keys to its identity).
    :param providers: the injected services.
    :param grants: its grant table.
    """

    def __init__(
        self,
        module: str,
        capabilities: frozenset[str],
        measurement: bytes,
        providers: Providers,
        grants: GrantTable | None = None,
    ) -> None:
        self.module = module
        self.capabilities = capabilities
        self.measurement = measurement
        self.providers = providers
        self.grants = grants if grants is not None else GrantTable()
        self._log = logging.getLogger(f"svsm.kernel.modules.{module}")
        self._calls = self._denied = self._failed = 0
        self._table: dict[type, Callable[[Any], m.SyscallReply]] = {
            m.SysLog: self._log_line,
            m.SysRandom: self._random,
            m.SysTime: self._time,
            m.SysStorageGet: self._sget,
            m.SysStoragePut: self._sput,
            m.SysStorageDelete: self._sdel,
            m.SysStorageList: self._slist,
            m.SysReport: self._report,
            m.SysDerivedKey: self._key,
            m.SysGrantMap: self._gmap,
            m.SysGrantWrite: self._gwrite,
            m.SysGrantUnmap: self._gunmap,
            m.SysDiskRead: self._dread,
            m.SysDiskWrite: self._dwrite,
            m.SysDiskFlush: self._dflush,
            m.SysDiskSize: self._dsize,
            m.SysService: self._service,
        }
        self._svc = self._table[m.SysService]

    def handle(self, msg: Any) -> tuple[m.SyscallReply, bool]:
        """Serve one syscall.

        :param msg: a decoded syscall message (one of :data:`svsm.sdk.abi.SYSCALLS`).
        :returns: (reply, misbehaved): ``misbehaved`` is True for a denied syscall (a strike).
        """
        self._calls += 1
        fn = self._table.get(type(msg))
        if fn is None:  # not a syscall: the caller routes only syscalls here
            self._failed += 1
            return m.SyscallReply(id=getattr(msg, "id", 0), code=ResultCode.INVALID_REQUEST), True
        cap = REQUIRED_CAPABILITY[type(msg)]
        if fn is self._svc:
            cap += msg.service
        if cap not in self.capabilities:
            self._denied += 1
            self._log.warning("denied %s: capability %r not granted", type(msg).__name__, cap)
            return m.SyscallReply(id=msg.id, code=ResultCode.INVALID_REQUEST, denied=True), True
        try:
            return fn(msg), False
        except RequestError as exc:
            self._failed += 1
            return m.SyscallReply(id=msg.id, code=exc.code), False
        except OSError as exc:  # the host's disk or another provider failed: the module's problem to handle
            self._failed += 1
            self._log.error("%s failed in the host: %s", type(msg).__name__, exc)
            return m.SyscallReply(id=msg.id, code=ResultCode.INVALID_REQUEST), False

    def statistics(self) -> SyscallStatistics:
        """Counters."""
        return SyscallStatistics(self._calls, self._denied, self._failed)

    # -- individual syscalls -------------------------------------------------------
    def _log_line(self, msg: m.SysLog) -> m.SyscallReply:
        text = msg.message.replace("\n", "\\n").replace("\r", "\\r")
        self._log.log(max(msg.level, logging.DEBUG), "%s", text)
        return m.SyscallReply(id=msg.id)

    def _random(self, msg: m.SysRandom) -> m.SyscallReply:
        return m.SyscallReply(id=msg.id, data=self.providers.rng(msg.size))

    def _time(self, msg: m.SysTime) -> m.SyscallReply:
        return m.SyscallReply(id=msg.id, number=int(self.providers.clock()) & 0xFFFF_FFFF_FFFF_FFFF)

    def _storage(self) -> Any:
        return self.providers.storage.backend_for(self.module)

    def _sget(self, msg: m.SysStorageGet) -> m.SyscallReply:
        value = self._storage().get(self.module, msg.key)
        return m.SyscallReply(id=msg.id, data=value or b"", number=int(value is not None))

    def _sput(self, msg: m.SysStoragePut) -> m.SyscallReply:
        self._storage().put(self.module, msg.key, msg.value)
        return m.SyscallReply(id=msg.id)

    def _sdel(self, msg: m.SysStorageDelete) -> m.SyscallReply:
        return m.SyscallReply(id=msg.id, number=int(bool(self._storage().delete(self.module, msg.key))))

    def _slist(self, msg: m.SysStorageList) -> m.SyscallReply:
        names = self._storage().list(self.module, msg.prefix)[: m.MAX_LIST]
        return m.SyscallReply(id=msg.id, names=names)

    def _report(self, msg: m.SysReport) -> m.SyscallReply:
        # Domain separation: a module's 64 bytes never become REPORT_DATA verbatim, so no module can
        # obtain a VMPL0 report that passes for the SVSM's own (e.g. ATTEST_SERVICES binds
        # SHA-512(nonce || manifest)); verifiers recompute svsm.sdk.module_report_data().
        return m.SyscallReply(id=msg.id, data=self.providers.report(module_report_data(self.module, self.measurement, msg.report_data)))

    def _key(self, msg: m.SysDerivedKey) -> m.SyscallReply:
        # HKDF-SHA512 from the platform root over (name, measurement, context): unique per module identity.
        info = b"%s\0%s\0%s" % (self.module.encode(), self.measurement, msg.context)
        okm = HKDF(hashes.SHA512(), msg.size, b"pysvsm module key v1", info).derive(self.providers.key_root)
        return m.SyscallReply(id=msg.id, data=okm)

    def _gmap(self, msg: m.SysGrantMap) -> m.SyscallReply:
        return m.SyscallReply(id=msg.id, data=self.grants.map(msg.grant))

    def _gwrite(self, msg: m.SysGrantWrite) -> m.SyscallReply:
        self.grants.write(msg.grant, msg.offset, msg.data)
        return m.SyscallReply(id=msg.id)

    def _gunmap(self, msg: m.SysGrantUnmap) -> m.SyscallReply:
        self.grants.unmap(msg.grant)
        return m.SyscallReply(id=msg.id)

    def _disk(self) -> DiskProvider:
        if self.providers.disk is None:
            raise UnsupportedCall("no disk attached")
        return self.providers.disk

    def _dread(self, msg: m.SysDiskRead) -> m.SyscallReply:
        return m.SyscallReply(id=msg.id, data=self._disk().read(msg.offset, msg.size))

    def _dwrite(self, msg: m.SysDiskWrite) -> m.SyscallReply:
        self._disk().write(msg.offset, msg.data)
        return m.SyscallReply(id=msg.id)

    def _dflush(self, msg: m.SysDiskFlush) -> m.SyscallReply:
        self._disk().flush()
        return m.SyscallReply(id=msg.id)

    def _dsize(self, msg: m.SysDiskSize) -> m.SyscallReply:
        return m.SyscallReply(id=msg.id, number=self._disk().size())

    def _service(self, msg: m.SysService) -> m.SyscallReply:
        handler = self.providers.services.get(msg.service)
        if handler is None:
            raise UnsupportedCall(f"no kernel service {msg.service!r}")
        data = handler(self.module, msg.op, msg.payload)
        if len(data) > m.MAX_BLOB:  # a kernel bug, but the module must get an answer it can decode
            self._log.error("service %s op %s replied %d bytes (> MAX_BLOB)", msg.service, msg.op, len(data))
            raise InvalidRequest(f"service {msg.service} reply too large")
        return m.SyscallReply(id=msg.id, data=data)

"""SVSM request dispatch: registers in, protocol handler, registers out (requests.rs).

The request loop reads the guest's RAX/RCX/RDX/R8/R9 into a :class:`RequestParams`, hands it to
:meth:`Dispatcher.dispatch`, and writes RCX/RDX/R8 back whatever happened (the attestation
protocol reports buffer sizes together with an error).  RAX is 0 on success or the result code
of the :class:`~svsm.sdk.RequestError`; anything else is a broken invariant and panics.

Core (0) and attestation (1) are served in the kernel.  Every other protocol goes to the
*module host* (:class:`ModuleHost`), the ring-3 module runtime, if it serves that protocol;
otherwise the answer is UNSUPPORTED_PROTOCOL.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol, runtime_checkable

from svsm.sdk import UnsupportedProtocol
from svsm.sdk.guest import SVSM_ATTEST_PROTOCOL, SVSM_CORE_PROTOCOL

__all__ = [
    "RequestParams",
    "GuestMemoryWindow",
    "ModuleHost",
    "Dispatcher",
    "DispatchStatistics",
    "Handler",
    "KERNEL_PROTOCOL_VERSIONS",
]

#: (min, max) version of the protocols the kernel serves itself (coconut-svsm.md 2.1: all 1..1).
KERNEL_PROTOCOL_VERSIONS: dict[int, tuple[int, int]] = {SVSM_CORE_PROTOCOL: (1, 1), SVSM_ATTEST_PROTOCOL: (1, 1)}

_U64 = (1 << 64) - 1


class RequestParams:
    """One SVSM call's registers.  Handlers read the inputs and set the outputs in place.

    ``rcx``, ``rdx`` and ``r8`` are written back to the guest VMSA after the handler, also when
    it raised a :class:`~svsm.sdk.RequestError` (upstream ``RequestParams::write_back``).

    :param cpu: index of the vCPU the call arrived on.
    :param sev_features: SEV_FEATURES of the calling VMSA (CREATE_VCPU compares against it).
    """

    __slots__ = ("cpu", "protocol", "call", "rcx", "rdx", "r8", "r9", "sev_features")

    def __init__(
        self, cpu: int, rax: int, rcx: int = 0, rdx: int = 0, r8: int = 0, r9: int = 0, sev_features: int = 0
    ) -> None:
        self.cpu = cpu
        self.protocol = (rax >> 32) & 0xFFFF_FFFF
        self.call = rax & 0xFFFF_FFFF
        self.rcx, self.rdx, self.r8, self.r9 = rcx & _U64, rdx & _U64, r8 & _U64, r9 & _U64
        self.sev_features = sev_features

    def outputs(self) -> tuple[int, int, int]:
        """(RCX, RDX, R8) to write back, each truncated to 64 bits."""
        return self.rcx & _U64, self.rdx & _U64, self.r8 & _U64

    def __repr__(self) -> str:
        return (
            f"RequestParams(cpu={self.cpu}, protocol={self.protocol}, call={self.call}, "
            f"rcx={self.rcx:#x}, rdx={self.rdx:#x}, r8={self.r8:#x}, r9={self.r9:#x})"
        )


@runtime_checkable
class GuestMemoryWindow(Protocol):
    """Guest memory as one request may touch it (VMPL0 view, guest-region checks applied).

    Valid only while the request is being served; afterwards every call raises
    :class:`~svsm.sdk.InvalidAddress`.
    """

    def read(self, gpa: int, length: int) -> bytes:
        """Read ``length`` bytes at ``gpa``.  :raises InvalidAddress: outside the guest's memory."""
        ...

    def write(self, gpa: int, data: bytes) -> None:
        """Write ``data`` at ``gpa``.  :raises InvalidAddress: outside the guest's memory."""
        ...


@runtime_checkable
class ModuleHost(Protocol):
    """What dispatch needs from the ring-3 module runtime (CONTRACTS.md "Kernel <-> module runtime").

    Implemented by ``svsm.kernel.ipc``; the kernel passes one to :func:`svsm.kernel.boot`.  Every
    method may be called concurrently from several vCPU threads.
    """

    def serves(self, protocol: int) -> bool:
        """True if a running module serves ``protocol``."""
        ...

    def protocol_versions(self, protocol: int) -> tuple[int, int] | None:
        """(min, max) version of ``protocol``, or None if no module serves it."""
        ...

    def handle_request(self, params: RequestParams, memory: GuestMemoryWindow) -> None:
        """Serve one call: read ``params`` inputs, set ``params.rcx/rdx/r8`` outputs.

        :raises RequestError: the result code for the guest (module crash -> its code too).
        """
        ...

    def service_manifests(self) -> Sequence[tuple[uuid.UUID, bytes]]:
        """(service GUID, manifest bytes) of each running service, for ATTEST_SERVICES."""
        ...


class Handler(Protocol):
    """A kernel protocol: ``handle(params)`` serves one call or raises a RequestError."""

    def __call__(self, params: RequestParams) -> None: ...


class DispatchStatistics(NamedTuple):
    """Calls served per protocol number, and by outcome."""

    by_protocol: dict[int, int]
    succeeded: int
    failed: int


class Dispatcher:
    """Routes calls by protocol: kernel handlers first, then the module host.

    .. versionadded:: 0.1

    :param handlers: protocol number -> kernel handler (core, attestation).
    :param module_host: the module runtime, or None when no modules run.
    :param memory_for: builds the per-request :class:`GuestMemoryWindow` for the module host.
    :param park: ``park(cpu)`` is entered around a module request: the vCPU's kernel context is
        parked while its thread waits for the module (other kernel work may use it meanwhile).
    """

    def __init__(
        self,
        handlers: dict[int, Handler],
        module_host: ModuleHost | None = None,
        memory_for: Callable[[RequestParams], GuestMemoryWindow] | None = None,
        park: Callable[[int], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self._handlers = dict(handlers)
        self.module_host = module_host
        self._memory_for = memory_for
        self.park = park
        self._lock = threading.Lock()
        self._by_protocol: Counter[int] = Counter()
        self._ok = 0
        self._failed = 0

    def register(self, protocol: int, handler: Handler) -> None:
        """Serve ``protocol`` in the kernel with ``handler`` (boot wires core and attestation).

        :raises ValueError: the protocol already has a kernel handler.
        """
        if protocol in self._handlers:
            raise ValueError(f"protocol {protocol} already has a kernel handler")
        self._handlers[protocol] = handler

    def protocol_versions(self, protocol: int) -> tuple[int, int] | None:
        """(min, max) version of a protocol this SVSM serves, or None (QUERY_PROTOCOL)."""
        if protocol in self._handlers:
            return KERNEL_PROTOCOL_VERSIONS.get(protocol, (1, 1))
        if self.module_host is not None and self.module_host.serves(protocol):
            return self.module_host.protocol_versions(protocol)
        return None

    def dispatch(self, params: RequestParams) -> None:
        """Serve one call.

        :raises RequestError: answer the guest with its code.
        :raises UnsupportedProtocol: no kernel handler and no module serves the protocol.
        """
        ok = False
        try:
            handler = self._handlers.get(params.protocol)
            if handler is not None:
                handler(params)
            elif self.module_host is not None and self.module_host.serves(params.protocol):
                if self._memory_for is None:
                    raise UnsupportedProtocol("no guest-memory window for module requests")
                window = self._memory_for(params)
                try:
                    if self.park is not None:
                        with self.park(params.cpu):
                            self.module_host.handle_request(params, window)
                    else:
                        self.module_host.handle_request(params, window)
                finally:
                    revoke = getattr(window, "revoke", None)
                    if revoke is not None:
                        revoke()
            else:
                raise UnsupportedProtocol(f"protocol {params.protocol} not served")
            ok = True
        finally:
            with self._lock:
                self._by_protocol[params.protocol] += 1
                if ok:
                    self._ok += 1
                else:
                    self._failed += 1

    def statistics(self) -> DispatchStatistics:
        """Snapshot of the call counters."""
        with self._lock:
            return DispatchStatistics(dict(self._by_protocol), self._ok, self._failed)

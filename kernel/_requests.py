"""The SVSM request path on each vCPU (coconut-svsm.md 1.10) and the SVSM's own VMGEXITs.

Each vCPU gets a :class:`PerCpu` record and the request-loop step :meth:`RequestLoop.entry`,
registered as that vCPU's VMPL0 entry.  The hardware calls it on the thread that ran the guest's
RUN_VMPL(0), so every vCPU has its own loop and a slow call on one never delays another.

One step, as upstream ``request_loop``: read the guest VMSA's RAX/RCX/RDX/R8/R9 and
SEV_FEATURES, read the calling area, and only if ``call_pending == 1`` clear it and dispatch;
write RCX/RDX/R8 and then RAX back to the guest VMSA; RUN_VMPL back to the guest VMPL through
the GHCB MSR protocol.  A :class:`~svsm.sdk.RequestError` becomes RAX; anything else goes through
``to_result_code`` and, being unmapped, panics the SVSM.

:class:`SvsmGhcb` is the SVSM side of the GHCB (its own page per vCPU, in shared memory):
registration, MSR-protocol requests, and full NAE events (AP creation, guest requests).
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from svsm.kernel.hw import (
    MSR_GHCB,
    VMSA,
    GhcbPage,
    HardwareFault,
    RegisterGhcbRequest,
    RegisterGhcbResponse,
    RunVmplRequest,
    RunVmplResponse,
    SwExitCode,
    Vcpu,
    decode_msr,
)
from svsm.kernel.protocols import Dispatcher, RequestParams, to_result_code
from svsm.sdk import FatalError
from svsm.sdk.guest import CallingAreaHeader

from ._panic import Panicker, SvsmPanic

__all__ = ["PerCpu", "RequestLoop", "SvsmGhcb", "RequestLoopStatistics", "GhcbCallError", "KernelWork", "KernelContext",
           "current_cpu"]

log = logging.getLogger("svsm.kernel.requests")

_tls = threading.local()


def current_cpu() -> int | None:
    """Index of the vCPU whose request loop runs on this thread (at VMPL0), or None."""
    return getattr(_tls, "cpu", None)

_Q = struct.Struct("<Q")
_OFF = {n: getattr(VMSA, n).offset for n in ("rax", "rcx", "rdx", "r8", "r9", "sev_features", "guest_exit_code")}
#: VMSA offsets of RequestParams' inputs, in its order (RAX, RCX, RDX, R8, R9, SEV_FEATURES).
_INPUT_OFFS = tuple(_OFF[n] for n in ("rax", "rcx", "rdx", "r8", "r9", "sev_features"))
_EXIT_CODE_OFF, _RAX_OFF, _RCX_OFF, _R8_OFF = _OFF["guest_exit_code"], _OFF["rax"], _OFF["rcx"], _OFF["r8"]
_Q2 = struct.Struct("<QQ")
assert _OFF["rdx"] == _RCX_OFF + 8  # RCX and RDX are written together
#: Bytes of the guest VMSA read per call: up to and including GUEST_EXIT_CODE.
_VMSA_READ = _OFF["guest_exit_code"] + 8
#: The hypervisor's RUN_VMPL success answer (GHCB MSR value).
_RUN_VMPL_OK = RunVmplResponse(0).encode()
#: GUEST_EXIT_CODE of a VMGEXIT (coconut-svsm.md 1.10 step 3).
VMEXIT_VMGEXIT = 0x403


class GhcbCallError(FatalError):
    """The hypervisor refused or broke an SVSM GHCB request the SVSM cannot do without.

    :param info1: SW_EXITINFO1 returned.
    :param info2: SW_EXITINFO2 returned.
    """

    def __init__(self, what: str, info1: int, info2: int) -> None:
        super().__init__(f"GHCB {what} failed: info1={info1:#x} info2={info2:#x}")
        self.info1, self.info2 = info1, info2


class KernelWork:
    """Kernel work that needs a VMPL0 context on some vCPU (its GHCB), e.g. a guest request.

    Whichever vCPU gets to it first runs it (:meth:`claim` decides), once: a vCPU entering the
    SVSM for a guest call, or one the host interrupted into VMPL0 for it.  The submitter waits
    on :attr:`done`, then reads :attr:`result` or re-raises :attr:`error`.
    """

    __slots__ = ("fn", "done", "result", "error", "cpu", "abandoned", "_claimed", "_lock")

    def __init__(self, fn: Callable[[Vcpu], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        #: The vCPU it ran on.
        self.cpu: int | None = None
        #: The submitter gave up on it (claimed it without running it).
        self.abandoned = False
        self._claimed = False
        self._lock = threading.Lock()

    @property
    def claimed(self) -> bool:
        """Someone runs (or ran, or abandoned) it."""
        return self._claimed

    def claim(self) -> bool:
        """True for the one caller that may run (or abandon) this work."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def run(self, vcpu: Vcpu) -> None:
        """Run on ``vcpu`` at VMPL0 (after :meth:`claim`); never raises, the submitter does."""
        self.cpu = vcpu.index
        try:
            self.result = self.fn(vcpu)
        except BaseException as exc:  # noqa: BLE001 -- handed to the submitter, who re-raises it
            self.error = exc
        finally:
            self.done.set()


class KernelContext:
    """A vCPU's VMPL0 kernel context (its SVSM GHCB and GHCB MSR): one user at a time.

    The vCPU's request loop holds it while it runs SVSM code and *parks* it (:meth:`parked`)
    while its thread waits for a module; kernel work from another thread may use the vCPU then,
    as upstream runs other kernel tasks on a CPU whose request loop is blocked.
    """

    __slots__ = ("_lock", "owner", "is_parked")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None
        #: The vCPU's thread waits for a module with the context parked.
        self.is_parked = False

    def acquire(self, blocking: bool = True) -> bool:
        """Take the context.  :returns: False if ``blocking`` is False and it is in use."""
        if not self._lock.acquire(blocking):
            return False
        self.owner = threading.get_ident()
        return True

    def release(self) -> None:
        """Give it back (the holder only)."""
        self.owner = None
        self._lock.release()

    def held_by_me(self) -> bool:
        """True on the thread that holds it."""
        return self.owner == threading.get_ident()

    def parked(self) -> _Parked:
        """``with ctx.parked():`` -- let others use the context while this thread waits."""
        return _Parked(self)


class _Parked:
    __slots__ = ("ctx", "held")

    def __init__(self, ctx: KernelContext) -> None:
        self.ctx = ctx
        self.held = False

    def __enter__(self) -> None:
        ctx = self.ctx
        self.held = ctx.held_by_me()
        if self.held:
            ctx.is_parked = True
            ctx.release()

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.ctx.acquire()
            self.ctx.is_parked = False


class PerCpu:
    """The SVSM's state for one vCPU (upstream ``PerCpu``): its guest VMSA/CAA and GHCB.

    ``attach``/``current`` are called from other vCPUs (CREATE_VCPU targets another CPU), so
    the pair is swapped under a small lock; a generation counter tells the loop it changed.
    """

    def __init__(self, index: int, apic_id: int, ghcb_gpa: int, area: Any = None) -> None:
        self.index = index
        self.apic_id = apic_id
        self.ghcb_gpa = ghcb_gpa
        #: The KINFRA per-CPU area (page tables + mapping window) of this CPU.
        self.area = area
        #: (generation, VMSA paddr, CAA paddr) of the current per-CPU mappings ("TLB").
        self.mapped: tuple[int, int, int] | None = None
        self.ghcb_registered = False
        self._lock = threading.Lock()
        self._guest: tuple[int, int] | None = None
        self.generation = 0
        self.calls = 0
        self.busy_seconds = 0.0
        #: This vCPU's VMPL0 kernel context.
        self.context = KernelContext()

    def attach(self, vmsa_gpa: int | None, caa_gpa: int | None) -> None:
        """Serve the guest VMSA/CAA pair (None, None: no guest on this CPU)."""
        with self._lock:
            self._guest = None if vmsa_gpa is None or caa_gpa is None else (vmsa_gpa, caa_gpa)
            self.generation += 1

    def current(self) -> tuple[int, int] | None:
        """(guest VMSA GPA, CAA GPA) this CPU serves, or None."""
        with self._lock:
            return self._guest

    def current_with_generation(self) -> tuple[tuple[int, int] | None, int]:
        """The pair and the generation it belongs to, read together."""
        with self._lock:
            return self._guest, self.generation

    def map_guest_context(self) -> tuple[int, int] | None:
        """Map the guest VMSA and CAA into this CPU's window (upstream ``GuestVmsaRef``).

        Called on this CPU's own thread; remaps when CREATE_VCPU or REMAP_CA bumped the
        generation.  The two virtual addresses are translated once through this CPU's page
        tables and the result is kept like a TLB entry until the next remap (a walk per
        access would cost more than the call itself).

        :returns: (VMSA physical address, CAA physical address), or None without a guest.
        """
        mapped = self.mapped
        if mapped is not None and mapped[0] == self.generation:  # unchanged since mapped: no lock
            return mapped[1], mapped[2]
        cur, gen = self.current_with_generation()
        if cur is None:
            if self.mapped is not None:
                self.area.unmap_guest_context()
                self.mapped = None
            return None
        if self.mapped is None or self.mapped[0] != gen:
            pt = self.area.page_table
            vmsa = pt.translate(self.area.map_vmsa(cur[0]), write=True)
            caa = pt.translate(self.area.map_caa(cur[1]), write=True)
            if not (vmsa.encrypted and caa.encrypted):
                raise FatalError("guest VMSA/CAA mapped without the C-bit")
            self.mapped = (gen, vmsa.paddr, caa.paddr)
        return self.mapped[1], self.mapped[2]


class SvsmGhcb:
    """VMGEXITs the SVSM makes on a vCPU at VMPL0 (GHCB MSR protocol and full GHCB)."""

    @staticmethod
    def msr_request(vcpu: Vcpu, value: int) -> int:
        """Write the GHCB MSR, VMGEXIT, return the MSR afterwards."""
        vcpu.wrmsr(MSR_GHCB, value)
        vcpu.vmgexit()
        return vcpu.rdmsr(MSR_GHCB)

    def register(self, vcpu: Vcpu, pc: PerCpu) -> None:
        """Register this CPU's GHCB page with the hypervisor (MSR 0x012/0x013).

        :raises GhcbCallError: the hypervisor echoed another GFN.
        """
        gfn = pc.ghcb_gpa >> 12
        resp = decode_msr(self.msr_request(vcpu, RegisterGhcbRequest(gfn).encode()))
        if not isinstance(resp, RegisterGhcbResponse) or resp.gfn != gfn:
            raise GhcbCallError("GHCB registration", 0, 0)
        pc.ghcb_registered = True

    def nae(
        self, vcpu: Vcpu, pc: PerCpu, exit_code: SwExitCode, info1: int, info2: int,
        shared: bytes | None = None, **regs: int,
    ) -> GhcbPage:
        """One full-GHCB NAE event; returns the GHCB the hypervisor left.

        :param shared: bytes for the GHCB shared buffer (e.g. a PSC request).
        :param regs: extra GHCB fields to set (``rax``, ``rbx``, ``sw_scratch``).
        """
        if not pc.ghcb_registered:
            self.register(vcpu, pc)
        ghcb = GhcbPage()
        ghcb.clear()
        ghcb.set("sw_exit_code", int(exit_code))
        ghcb.set("sw_exit_info_1", info1)
        ghcb.set("sw_exit_info_2", info2)
        for name, value in regs.items():
            ghcb.set(name, value)
        if shared is not None:
            ghcb.write_shared_buffer(shared)
        view = vcpu.view(0)
        view.write(pc.ghcb_gpa, ghcb.to_bytes(), c_bit=False)
        self.msr_request(vcpu, pc.ghcb_gpa)
        return GhcbPage(view.read(pc.ghcb_gpa, 4096, c_bit=False))


class RequestLoopStatistics(NamedTuple):
    """Per-vCPU calls served and time spent serving them."""

    calls_per_cpu: tuple[int, ...]
    busy_seconds_per_cpu: tuple[float, ...]
    not_pending: int
    panics: int
    fixups: int = 0  #: calling-area accesses that faulted (calls not served)


class RequestLoop:
    """The per-vCPU request loop of the SVSM.

    :param percpu: one :class:`PerCpu` per vCPU, by index.
    :param dispatcher: routes calls to the protocols.
    :param guest_vmpl: the VMPL the loop returns to.
    :param panicker: the panic path for broken invariants.
    :param ghcb: the SVSM's GHCB helper.
    :param clock: monotonic clock (injected, house rule 9).
    """

    def __init__(
        self,
        percpu: list[PerCpu],
        dispatcher: Dispatcher,
        guest_vmpl: int,
        panicker: Panicker,
        ghcb: SvsmGhcb,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.percpu = percpu
        self.dispatcher = dispatcher
        self.guest_vmpl = guest_vmpl
        self.panicker = panicker
        self.ghcb = ghcb
        self._clock = clock
        self._lock = threading.Lock()
        self._not_pending = 0
        self._fixups = 0
        #: Kernel work waiting for a vCPU at VMPL0 (served after the guest's call, before the
        #: loop returns to the guest, as upstream's request loop runs kernel tasks).
        self.kernel_work: collections.deque[KernelWork] = collections.deque()
        self.kernel_work_done = 0
        self._run_guest = RunVmplRequest(guest_vmpl).encode()

    def entry(self, vcpu: Vcpu) -> None:
        """The VMPL0 entry: serve at most one pending call, then RUN_VMPL back to the guest."""
        pc = self.percpu[vcpu.index]
        if self.panicker.panicked is not None:
            raise self.panicker.panicked
        ctx = pc.context
        ctx.acquire()  # kernel work borrowing this vCPU finishes first
        try:
            self._entry(vcpu, pc)
        finally:
            ctx.release()

    def _entry(self, vcpu: Vcpu, pc: PerCpu) -> None:
        outer = current_cpu()
        _tls.cpu = vcpu.index
        try:
            if not pc.ghcb_registered:
                self.ghcb.register(vcpu, pc)
            if pc.area is not None:
                with pc.area.activate():  # this thread now runs as that CPU (its tables, its window)
                    self._serve(vcpu, pc)
                    if self.kernel_work:
                        self._run_kernel_work(vcpu)
            else:
                self._serve(vcpu, pc)
                if self.kernel_work:
                    self._run_kernel_work(vcpu)
        except SvsmPanic:
            raise
        except Exception as exc:  # noqa: BLE001 -- a fault outside any fixup: the kernel is broken
            # Anything escaping _serve happened outside a protocol handler (reading the guest
            # VMSA or CAA, registering the GHCB): there is no fixup for it, as in upstream
            # kernel mode, so it panics.
            self.panicker.panic(vcpu.index, exc)
        finally:
            _tls.cpu = outer
        self._return_to_guest(vcpu)

    def _run_kernel_work(self, vcpu: Vcpu) -> None:
        while True:
            try:
                work = self.kernel_work.popleft()
            except IndexError:
                return
            if work.claim():
                work.run(vcpu)
                with self._lock:
                    self.kernel_work_done += 1

    def drop_abandoned(self) -> int:
        """Remove queued work its submitter gave up on; returns how many (kernel housekeeping)."""
        dropped = 0
        for _ in range(len(self.kernel_work)):
            try:
                work = self.kernel_work.popleft()
            except IndexError:
                break
            if work.abandoned or work.done.is_set():
                dropped += 1
            else:
                self.kernel_work.append(work)
        return dropped

    def parked(self, cpu: int) -> _Parked:
        """The dispatcher's ``park``: CPU ``cpu``'s context, parked while it waits for a module."""
        return self.percpu[cpu].context.parked()

    def run_work_interrupted(self, vcpu: Vcpu, work: KernelWork) -> None:
        """The VMPL0 handler of a host-delivered interrupt: run ``work`` as this vCPU's SVSM.

        Called through :meth:`Hypervisor.deliver_vmpl_interrupt`; the guest on that vCPU (if
        any) resumes afterwards.  Work already claimed elsewhere is left alone.
        """
        ctx = self.percpu[vcpu.index].context
        if not ctx.acquire(blocking=False):
            return
        try:
            self._run_borrowed(vcpu, work)
        finally:
            ctx.release()

    def run_work_parked(self, vcpu: Vcpu, work: KernelWork) -> bool:
        """Run ``work`` on a vCPU that is in the SVSM with its context parked (its thread waits
        for a module): the vCPU is at VMPL0 already, nothing is switched.

        :returns: False if the vCPU is not parked now or its context is in use (try another).
        """
        ctx = self.percpu[vcpu.index].context
        if not ctx.is_parked or not ctx.acquire(blocking=False):
            return False
        try:
            if not ctx.is_parked:  # its thread came back before we got the context
                return False
            self._run_borrowed(vcpu, work)
            return True
        finally:
            ctx.release()

    def _run_borrowed(self, vcpu: Vcpu, work: KernelWork) -> None:
        if not work.claim():
            return
        pc = self.percpu[vcpu.index]
        outer = current_cpu()
        _tls.cpu = vcpu.index
        try:
            if pc.area is not None:
                with pc.area.activate():
                    work.run(vcpu)
            else:
                work.run(vcpu)
        finally:
            _tls.cpu = outer
        with self._lock:
            self.kernel_work_done += 1

    def _serve(self, vcpu: Vcpu, pc: PerCpu) -> None:
        ctx = pc.map_guest_context()
        if ctx is None:
            return  # NoMappings: nothing to serve, back to idle
        vmsa, caa = ctx
        mem = vcpu.view(0)
        # The guest VMSA is the SVSM's page (the guest cannot make it fault, only the host can):
        # a fault reading it has no fixup and panics, as upstream.
        regs = mem.read(vmsa, _VMSA_READ)
        if _Q.unpack_from(regs, _EXIT_CODE_OFF)[0] != VMEXIT_VMGEXIT:
            with self._lock:
                self._not_pending += 1
            return  # the guest did not exit with VMGEXIT: nothing to serve
        try:  # the CAA is guest memory (upstream GuestPtr): the guest may have made it fault
            header = CallingAreaHeader.from_bytes(mem.read(caa, 8))
            if header.pending:
                mem.write(caa, b"\0")
        except HardwareFault as exc:
            self._fixup(vcpu, "access to the calling area", exc)
            return  # the call is not served, the loop carries on
        if not header.pending:
            with self._lock:
                self._not_pending += 1
            return
        q = _Q.unpack_from
        params = RequestParams(vcpu.index, *[q(regs, off)[0] for off in _INPUT_OFFS])
        t0 = self._clock()
        try:
            self.dispatcher.dispatch(params)
            rax = 0
        except Exception as exc:  # noqa: BLE001 -- the one place exceptions become result codes
            try:
                rax = to_result_code(exc)
            except FatalError:
                self.panicker.panic(vcpu.index, exc)
            log.debug("CPU %d %r -> %#x (%s)", vcpu.index, params, rax, type(exc).__name__, exc_info=exc)
        rcx, rdx, r8 = params.outputs()
        # RCX, RDX, R8 and then RAX, into the guest VMSA page (one RMP check for the page)
        mem.write_fields(vmsa, ((_RCX_OFF, _Q2.pack(rcx, rdx)), (_R8_OFF, _Q.pack(r8)), (_RAX_OFF, _Q.pack(rax))))
        pc.calls += 1
        pc.busy_seconds += self._clock() - t0

    def _fixup(self, vcpu: Vcpu, what: str, exc: BaseException) -> None:
        with self._lock:
            self._fixups += 1
        log.warning("CPU %d: %s faulted (%s); call not served", vcpu.index, what, exc)

    def _return_to_guest(self, vcpu: Vcpu) -> None:
        value = self.ghcb.msr_request(vcpu, self._run_guest)
        if value == _RUN_VMPL_OK:
            return
        resp = decode_msr(value)
        if not isinstance(resp, RunVmplResponse) or resp.error:
            log.warning("CPU %d: RUN_VMPL(%d) refused: %r", vcpu.index, self.guest_vmpl, resp)

    def statistics(self) -> RequestLoopStatistics:
        """Snapshot of the loop counters."""
        with self._lock:
            nope, fixups = self._not_pending, self._fixups
        return RequestLoopStatistics(
            tuple(p.calls for p in self.percpu),
            tuple(p.busy_seconds for p in self.percpu),
            nope,
            int(self.panicker.panicked is not None),
            fixups,
        )

"""One module's kernel-side handle: spawn, handshake, calls, syscalls, failure and restart.

The thread that needs an answer (a vCPU serving a guest call, or the supervisor
thread) drives the channel itself: it sends the request and reads frames until the
matching answer, serving the module's syscalls inline.  No reader thread, no hop.
Every frame is validated by the sans-IO :class:`~svsm.sdk.abi.Channel`; whatever
the module does wrong is a *strike*, answered with an :class:`~svsm.sdk.abi.ErrorFrame`;
too many strikes, a deadline missed or the process gone is a *failure*: the process
is killed, the request in flight answers BUSY, and the module restarts with backoff
(or is disabled after a crash loop).

Why this file is over 600 lines: it is one class whose methods share one lock and one
channel state (deadline, strikes, ids, the command in progress); splitting the channel I/O,
the guest-call path and the kernel-invoked hooks into separate files would spread that lock
discipline over several files.  Process launch (spawn + reports) lives in ``_launch``.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from svsm.sdk import (
    Busy,
    InvalidParameter,
    InvalidRequest,
    RequestError,
    ResultCode,
    UnsupportedCall,
    UnsupportedProtocol,
)
from svsm.sdk._syscalls import error_for_code
from svsm.sdk.abi import _messages as m
from svsm.sdk.abi._channel import CLOSED, NEED_DATA, AbiError, Channel, Recorder

from ._child import CRASH_FILE
from ._discovery import ModuleSpec
from ._grants import GrantTable, MemoryWindow
from ._lifecycle import Lifecycle, ModuleEvent, ModuleState
from ._launch import Launched, ModuleFailure, launch_process, module_uid
from ._process import Link, spawn_thread
from ._syscalls import Providers, SyscallHandler

__all__ = [
    "Limits",
    "ModuleFailure",
    "ModuleInfo",
    "ModuleSupervisor",
    "SupervisorStatistics",
]

log = logging.getLogger("svsm.kernel.ipc.supervisor")

_UNSET = object()

#: The deadline of a command run without a timeout (``ModuleHost.command(..., timeout=None)``).
_FOREVER = float("inf")

#: Longest single blocking wait on a module channel (seconds); deadlines are checked between slices.
_SLICE = 0.25
_SLICE_TV = struct.pack("ll", 0, int(_SLICE * 1_000_000))

_VALID_CODES = frozenset(int(c) for c in ResultCode if c not in (ResultCode.SUCCESS, ResultCode.PROTOCOL_BASE))


@dataclass(frozen=True)
class Limits:
    """Supervision knobs (kernel policy, not module choice)."""

    #: strikes (rejected frames, denied syscalls) before a module is stopped.
    max_strikes: int = 8
    #: failures within :attr:`crash_window` seconds that disable a module.
    crash_loop: int = 4
    crash_window: float = 60.0
    #: restart backoff: base * 2**(failures-1), capped.
    backoff_base: float = 0.05
    backoff_max: float = 5.0
    #: seconds for spawn + handshake + start (each restart runs on its own thread).
    start_timeout: float = 20.0
    #: seconds for a stop / save / restore / manifest / storage exchange.
    hook_timeout: float = 10.0
    #: cap on any manifest's request_timeout.
    request_timeout_cap: float = 60.0


class ModuleInfo(NamedTuple):
    """What ``svsm modules list`` shows about one module."""

    name: str
    version: str
    state: str
    mode: str
    pid: int | None
    protections: tuple[str, ...]
    requested: tuple[str, ...]
    granted: tuple[str, ...]
    protocols: tuple[int, ...]
    measurement: str
    restarts: int
    source: str
    last_failure: str


class SupervisorStatistics(NamedTuple):
    """Counters of one module."""

    calls: int
    errors: int
    failures: int
    restarts: int
    strikes: int
    syscalls: int
    denied: int


@dataclass
class HostContext:
    """What every supervisor of one host shares."""

    providers: Providers
    limits: Limits
    runtime_dir: str
    recorder: Recorder | None = None
    clock: Callable[[], float] = time.monotonic
    read_only: list[str] = field(default_factory=list)
    address_space: int = 1 << 30
    cpu_seconds: int = 600
    open_files: int = 64
    speculation_mitigations: bool = True
    #: the thread that forks module processes (lives as long as the host).
    spawner: Any = None
    uid_base: int = 200_000
    #: False when the Python installation is not readable by other uids (then capabilities are dropped instead).
    uid_switch: bool = True
    _uids: Any = field(default_factory=lambda: itertools.count(1))


class ModuleSupervisor:
    """Kernel-side handle of one module; every public method is thread-safe.

    :param spec: the discovered module.
    :param granted: capabilities granted by policy.
    :param mode: ``"process"`` (sandboxed) or ``"inprocess"`` (a thread; tests only).
    :param launched: a module process discovery started to learn the manifest; adopted by the first start.
    """

    def __init__(
        self, spec: ModuleSpec, granted: frozenset[str], mode: str, ctx: HostContext, launched: Launched | None = None
    ) -> None:
        if mode not in ("process", "inprocess"):
            raise ValueError(f"unknown module mode {mode!r}")
        self.spec = spec
        self.name = spec.name
        self.manifest = spec.manifest
        self.granted = granted
        self.mode = mode
        self._ctx = ctx
        self._lock = threading.RLock()
        self.lifecycle = Lifecycle()
        self.grants = GrantTable()
        self.syscalls = SyscallHandler(self.name, granted, spec.measurement, ctx.providers, self.grants)
        self._link: Link | None = None
        self._chan: Channel | None = None
        self._rbuf = bytearray(256 * 1024)
        self._rview = memoryview(self._rbuf)
        self._ids = itertools.count(1)
        # An unprivileged uid only if it can read the interpreter and this module's code;
        # otherwise the process keeps uid 0 with every capability dropped ("no-caps").
        self._uid = launched.uid if launched is not None else module_uid(spec.code_paths, ctx)
        self._prelaunched = launched  # a process discovery already started (it read the manifest)
        self.protections: tuple[str, ...] = ()
        self.strikes = 0
        self._failure_times: list[float] = []
        self._next_restart = 0.0
        self._checkpoint: bytes | None = None
        self._since_checkpoint = 0
        self.last_failure = ""
        self._calls = self._errors = self._failures = self._restarts = self._strikes_total = 0
        self._timeout = min(self.manifest.request_timeout, ctx.limits.request_timeout_cap)
        self._call_specs = {(p.number, c.call): c for p in self.manifest.protocols for c in p.calls}
        self.ready = threading.Event()
        self._deadline = 0.0  # of the exchange in progress
        self._pollin: Any = None
        self._command: str | None = None  # name of the kernel command in progress
        self._restarting = False  # a restart thread owns the start
        self._manifest_cache: object = _UNSET  # svsm_service_manifest bytes of this process

    # -- state -----------------------------------------------------------------------
    @property
    def state(self) -> ModuleState:
        """Where the module is in its lifecycle."""
        return self.lifecycle.state

    @property
    def pid(self) -> int | None:
        """The module process id (``None`` in-process or when not running)."""
        return self._link.pid if self._link is not None else None

    def info(self) -> ModuleInfo:
        """A snapshot for ``svsm modules list``."""
        return ModuleInfo(
            self.name,
            self.manifest.version,
            self.state.value,
            self.mode,
            self.pid,
            self.protections,
            tuple(sorted([*(c.value for c in self.manifest.capabilities), *(f"svc:{x}" for x in self.manifest.services)])),
            tuple(sorted(self.granted)),
            tuple(p.number for p in self.manifest.protocols),
            self.spec.measurement.hex(),
            self._restarts,
            self.spec.source,
            self.last_failure,
        )

    def statistics(self) -> SupervisorStatistics:
        """Counters of this module."""
        s = self.syscalls.statistics()
        return SupervisorStatistics(
            self._calls, self._errors, self._failures, self._restarts, self._strikes_total, s.calls, s.denied
        )

    # -- start / stop ------------------------------------------------------------------
    def start(self) -> bool:
        """Spawn, handshake, run ``svsm_module_start`` (and restore the checkpoint).

        :returns: True if the module is serving; on failure it is scheduled for restart or disabled.
        """
        with self._lock:
            if self.state is ModuleState.DEAD:
                return False
            if self._link is not None:
                return self.state is ModuleState.SERVING  # already started (the supervisor restarts it)
            try:
                self._start_locked()
                return True
            except ModuleFailure as exc:
                self._fail(str(exc))
                return False

    def _start_locked(self) -> None:
        self._manifest_cache = _UNSET
        deadline = self._ctx.clock() + self._ctx.limits.start_timeout
        self._deadline = deadline
        self.strikes = 0
        if self.mode == "inprocess":
            self._chan = Channel("kernel", recorder=self._ctx.recorder)
            self._link = self._spawn()
            self.protections = ()
        else:
            launched, self._prelaunched = self._prelaunched, None
            if launched is None:
                launched = launch_process(self.spec, self.name, self._uid, self._ctx, deadline)
            self._chan, self._link, self.protections = launched.chan, launched.link, launched.protections
            if launched.manifest != self.manifest:
                raise ModuleFailure("the module's manifest changed since discovery")
        # Blocking I/O bounded by SO_RCVTIMEO/SO_SNDTIMEO slices: one recv per read on the hot path
        # (a poll() before each recv costs ~15 us per round trip in wake-up latency); the deadline is
        # re-checked after every slice, and a poll() covers the last partial slice exactly.
        sock = self._link.sock
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _SLICE_TV)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _SLICE_TV)
        self._pollin = select.poll()
        self._pollin.register(self._link.sock, select.POLLIN)
        self._send(
            m.Hello(
                abi_major=m.ABI_MAJOR,
                abi_minor=m.ABI_MINOR,
                module=self.name,
                capabilities=sorted(self.granted),
                measurement=self.spec.measurement,
            )
        )
        ack = self._read(deadline)
        if not isinstance(ack, m.HelloAck) or ack.name != self.name:
            raise ModuleFailure(f"bad handshake: {type(ack).__name__}")
        if ack.abi_major != m.ABI_MAJOR:
            self.last_failure = f"ABI major {ack.abi_major} != {m.ABI_MAJOR}"
            self._kill()
            self.lifecycle.fire(ModuleEvent.DISABLED)
            raise ModuleFailure(self.last_failure)
        self.lifecycle.fire(ModuleEvent.HANDSHAKE_OK)
        res = self._exchange(m.Start(id=self._next_id()), m.HookResult, deadline)
        if res.code:
            raise ModuleFailure(f"svsm_module_start failed: {res.reason}")
        if self._checkpoint is not None:
            res = self._exchange(m.RestoreState(id=self._next_id(), state=self._checkpoint), m.HookResult, deadline)
            if res.code:
                raise ModuleFailure(f"svsm_restore_state failed: {res.reason}")
        self.lifecycle.fire(ModuleEvent.STARTED)
        self.ready.set()
        log.info("module %s serving (%s, pid %s)", self.name, self.mode, self.pid)

    def _spawn(self) -> Link:
        """In-process mode: serve the module object on a thread."""
        obj = self.spec.obj if self.spec.obj is not None else self.spec.ref.resolve()
        return spawn_thread(obj, name=self.name, recorder=None)

    def stop(self) -> None:
        """Run ``svsm_module_stop`` and end the process (or cancel a pending restart).

        A command in progress (no deadline) is cut short: the process is killed and the
        command's caller gets :class:`~svsm.sdk.Busy`.
        """
        link = self._link
        if self._command is not None and link is not None:
            log.warning("module %s: stopped during command %r", self.name, self._command)
            link.kill()
        with self._lock:
            st = self.state
            if st is ModuleState.DEAD:
                return
            self.lifecycle.fire(ModuleEvent.STOP_REQUESTED)
            if st is ModuleState.RESTARTING:
                return
            if self._link is None:  # never started
                if self._prelaunched is not None:
                    self._prelaunched.link.kill()
                    self._prelaunched.link.join(1.0)
                    self._prelaunched = None
                self.lifecycle.fire(ModuleEvent.EXITED)
                return
            try:
                self._exchange(m.Stop(id=self._next_id()), m.HookResult, self._ctx.clock() + self._ctx.limits.hook_timeout)
                if self._link is not None:
                    self._link.join(2.0)
                self.lifecycle.fire(ModuleEvent.EXITED)
            except ModuleFailure as exc:
                self.lifecycle.fire(ModuleEvent.FAILED)
                self.last_failure = f"stop: {exc}"
            finally:
                self._kill()
                self.ready.clear()

    def _kill(self) -> None:
        if self._link is not None:
            self._link.kill()
            self._link.join(1.0)
        self.grants.revoke_all()

    # -- failure and restart --------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        """Kill the module; schedule a restart with backoff, or disable it after a crash loop."""
        now = self._ctx.clock()
        self._failures += 1
        self.last_failure = reason + self._crash_tail()
        self.ready.clear()
        self._kill()
        lim = self._ctx.limits
        self._failure_times = [t for t in self._failure_times if now - t < lim.crash_window] + [now]
        if self.state is ModuleState.DEAD:
            return
        if self.state is ModuleState.DRAINING:
            self.lifecycle.fire(ModuleEvent.FAILED)
            return
        if len(self._failure_times) >= lim.crash_loop:
            log.error("module %s disabled after %d failures: %s", self.name, len(self._failure_times), reason)
            self.lifecycle.fire(ModuleEvent.DISABLED)
            return
        log.warning("module %s failed (%s); restarting", self.name, reason)
        if self.state is not ModuleState.RESTARTING:
            self.lifecycle.fire(ModuleEvent.FAILED)
        delay = min(lim.backoff_max, lim.backoff_base * 2 ** (len(self._failure_times) - 1))
        self._next_restart = now + delay

    def _crash_tail(self) -> str:
        """The last line of the module's crash file (untrusted text, for logs only)."""
        if self.mode != "process":
            return ""
        path = os.path.join(self._ctx.runtime_dir, self.name, CRASH_FILE)
        try:
            with open(path, errors="replace") as f:
                text = f.read(8192)
            os.unlink(path)
        except OSError:
            return ""
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return f" [{lines[-1][:200]!r}]" if lines else ""

    def poll(self) -> None:
        """Supervisor tick: notice a dead idle process; start a restart when the backoff expired.

        The restart itself (spawn, handshake, start: up to ``start_timeout``) runs on its own
        thread, so a module stuck in ``svsm_module_start`` delays nobody else's restart.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            st = self.state
            if st is ModuleState.SERVING and self._link is not None and not self._link.is_alive():
                self._fail(f"exited with status {self._link.exitcode}")
            elif st is ModuleState.RESTARTING and not self._restarting and self._ctx.clock() >= self._next_restart:
                self.lifecycle.fire(ModuleEvent.RESPAWNED)
                self._restarts += 1
                self._restarting = True
                threading.Thread(target=self._restart, name=f"svsm-restart-{self.name}", daemon=True).start()
        finally:
            self._lock.release()

    def _restart(self) -> None:
        with self._lock:
            try:
                if self.state is not ModuleState.SPAWNED:  # stopped meanwhile
                    return
                self._start_locked()
            except ModuleFailure as exc:
                self._fail(str(exc))
            finally:
                self._restarting = False

    # -- channel I/O --------------------------------------------------------------------------
    def _next_id(self) -> int:
        return next(self._ids) & 0xFFFF_FFFF

    def _send(self, msg: Any) -> None:
        """Write one frame; a module that stops reading cannot stall us past the deadline."""
        assert self._chan is not None and self._link is not None
        sock = self._link.sock
        frame = self._chan.send(msg)
        try:
            sent = sock.send(frame)  # the common case: the whole frame at once
            if sent == len(frame):
                return
            view = memoryview(frame)[sent:]
        except BlockingIOError:
            view = memoryview(frame)
        except OSError as exc:
            raise ModuleFailure(f"channel write failed: {exc}") from None
        try:
            while view:
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:  # a slice passed with the module's receive buffer full
                    left = self._deadline - self._ctx.clock()
                    if left <= 0 or (left < _SLICE and not self._wait(select.POLLOUT, left)):
                        raise ModuleFailure("deadline missed (module not reading its channel)") from None
        except OSError as exc:
            raise ModuleFailure(f"channel write failed: {exc}") from None

    def _wait(self, events: int, timeout: float) -> bool:
        """poll() the channel for ``events`` up to ``timeout`` seconds; False on timeout."""
        if timeout <= 0:
            return False
        assert self._link is not None
        if events == select.POLLIN and self._pollin is not None:
            poller = self._pollin
        else:
            poller = select.poll()
            poller.register(self._link.sock, events)
        return bool(poller.poll(None if timeout == _FOREVER else timeout * 1000))

    def _strike(self, reason: str, code: int = ResultCode.INVALID_FORMAT) -> None:
        self.strikes += 1
        self._strikes_total += 1
        log.warning("module %s: strike %d: %s", self.name, self.strikes, reason)
        if self.strikes >= self._ctx.limits.max_strikes:
            raise ModuleFailure(f"misbehaving ({self.strikes} strikes; last: {reason})")
        self._send(m.ErrorFrame(code=code, reason=reason[: m.MAX_TEXT], strikes=self.strikes))

    def _read(self, deadline: float) -> Any:
        """The next valid frame; rejects (and strikes) invalid ones."""
        self._deadline = deadline
        assert self._chan is not None and self._link is not None
        chan, sock, rbuf = self._chan, self._link.sock, self._rview
        while True:
            try:
                if chan.buffered():
                    ev = chan.next_event()
                    if ev is not NEED_DATA:
                        if ev is CLOSED:
                            raise ModuleFailure("channel closed (process exited)")
                        return ev
                left = deadline - self._ctx.clock()
                if left <= 0 or (left < _SLICE and not self._wait(select.POLLIN, left)):
                    raise ModuleFailure("deadline missed (hung)")
                try:
                    n = sock.recv_into(rbuf)  # blocks at most one slice (SO_RCVTIMEO)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise ModuleFailure(f"channel read failed: {exc}") from None
                ev = chan.receive_frame(rbuf[:n])  # one read, one frame: decoded in place
            except AbiError as exc:
                self._strike(f"{type(exc).__name__}: {exc}")
                continue
            if ev is NEED_DATA:
                continue
            if ev is CLOSED:
                raise ModuleFailure("channel closed (process exited)")
            return ev

    def _exchange(self, msg: Any, want: type, deadline: float) -> Any:
        """Send ``msg``; serve syscalls until the ``want`` answer with the same id."""
        self._deadline = deadline
        self._send(msg)
        while True:
            ev = self._read(deadline)
            if ev.__class__ is want and ev.id == msg.id:
                return ev
            if type(ev) in self.syscalls._table:
                if self._ctx.clock() > deadline:  # a stream of valid syscalls must not outlive the deadline
                    raise ModuleFailure("deadline missed (still making syscalls)")
                try:
                    reply, misbehaved = self.syscalls.handle(ev)
                except BaseException:  # a kernel service's bug: the module cannot get an answer
                    self._fail(f"kernel failed serving {type(ev).__name__}")
                    raise
                if misbehaved:
                    self.strikes += 1
                    self._strikes_total += 1
                    if self.strikes >= self._ctx.limits.max_strikes:
                        raise ModuleFailure(f"misbehaving ({self.strikes} strikes; syscall not granted)")
                self._send(reply)
            else:
                self._strike(f"unexpected {type(ev).__name__} (out of order)", ResultCode.INVALID_REQUEST)

    # -- guest calls --------------------------------------------------------------------------
    def handle_request(self, params: Any, memory: MemoryWindow) -> None:
        """Serve one guest call routed to this module (see ``ModuleHost.handle_request``).

        :raises UnsupportedCall: the manifest does not declare the call.
        :raises InvalidParameter: a register-given buffer size above the declared maximum.
        :raises InvalidAddress: the guest buffer is not accessible (from ``memory``).
        :raises Busy: the module is restarting, or failed during this call.
        :raises RequestError: the module's own error code.
        """
        cs = self._call_specs.get((params.protocol, params.call))
        if cs is None:
            if self.manifest.protocol(params.protocol) is None:
                raise UnsupportedProtocol(f"{self.name} does not serve protocol {params.protocol:#x}")
            raise UnsupportedCall(f"{self.name}: protocol {params.protocol:#x} has no call {params.call}")
        if self._command is not None:
            raise Busy(f"module {self.name} is running command {self._command!r}")
        if self._restarting:  # never wait for a restart (up to start_timeout) on a vCPU
            raise Busy(f"module {self.name} is restarting")
        with self._lock:
            st = self.state
            if st is ModuleState.RESTARTING or self._restarting:
                raise Busy(f"module {self.name} is restarting")
            if st is not ModuleState.SERVING:
                raise UnsupportedProtocol(f"module {self.name} is {st.value}")
            self._calls += 1
            try:
                self._call_locked(params, memory, cs)
            except RequestError:
                self._errors += 1
                raise

    def _call_locked(self, params: Any, memory: MemoryWindow, cs: Any) -> None:
        buf, grant, gpa, size = None, None, 0, 0
        b = cs.buffer
        if b is not None:
            gpa = getattr(params, b.gpa_register)
            size = b.size if b.size is not None else getattr(params, b.size_register)
            if size > b.max_size or size <= 0:
                raise InvalidParameter(f"buffer size {size} outside 1..{b.max_size}")
            if b.mode == "copy":
                buf = memory.read(gpa, size)
            else:
                memory.read(gpa, 1)  # both ends of the window must be valid guest memory
                memory.read(gpa + size - 1, 1)
                gid = self.grants.create(memory, gpa, size, b.writable)
                grant = m.GrantInfo(id=gid, gpa=gpa, size=size, writable=b.writable)
        req = m.CallRequest(
            id=self._next_id(),
            protocol=params.protocol,
            call=params.call,
            rcx=params.rcx,
            rdx=params.rdx,
            r8=params.r8,
            r9=params.r9,
            buffer=buf,
            grant=grant,
        )
        try:
            res = self._exchange(req, m.CallResult, self._ctx.clock() + self._timeout)
        except ModuleFailure as exc:
            self._fail(str(exc))
            raise Busy(f"module {self.name} failed: {exc}") from None
        finally:
            if grant is not None:
                self.grants.revoke(grant.id)
        if res.rcx is not None:
            params.rcx = res.rcx & 0xFFFF_FFFF_FFFF_FFFF
        if res.rdx is not None:
            params.rdx = res.rdx & 0xFFFF_FFFF_FFFF_FFFF
        if res.r8 is not None:
            params.r8 = res.r8 & 0xFFFF_FFFF_FFFF_FFFF
        if res.code:
            if res.code not in _VALID_CODES and not (
                ResultCode.PROTOCOL_BASE <= res.code < ResultCode.PROTOCOL_BASE + 0x1000
            ):
                self._note_strike(f"result code {res.code:#x} is not an SVSM result code")
                raise InvalidRequest("module answered with an invalid result code")
            raise error_for_code(res.code, res.reason)
        if res.buffer is not None:
            if b is None or b.mode != "copy" or not b.writable or len(res.buffer) > size:
                self._note_strike("reply buffer not allowed by the manifest")
                raise InvalidRequest("module returned a buffer it may not write")
            memory.write(gpa, res.buffer)
        self._after_success()

    def _note_strike(self, reason: str) -> None:
        try:
            self._strike(reason, ResultCode.INVALID_REQUEST)
        except ModuleFailure as exc:
            self._fail(str(exc))

    def _after_success(self) -> None:
        every = self.manifest.checkpoint_every
        if not every:
            return
        self._since_checkpoint += 1
        if self._since_checkpoint >= every:
            self._since_checkpoint = 0
            state = self._hook(m.SaveState(id=self._next_id()))
            if state is not None:
                self._checkpoint = state.data if state.found else None

    # -- lifecycle hooks between calls -------------------------------------------------------------
    def _hook(self, msg: Any) -> m.HookResult | None:
        """Run a lifecycle hook; ``None`` if the module failed meanwhile."""
        try:
            return self._exchange(msg, m.HookResult, self._ctx.clock() + self._ctx.limits.hook_timeout)
        except ModuleFailure as exc:
            self._fail(str(exc))
            return None

    def _serving_hook(self, msg: Any) -> m.HookResult:
        if self._command is not None:
            raise Busy(f"module {self.name} is running command {self._command!r}")
        with self._lock:
            if self.state is not ModuleState.SERVING:
                raise Busy(f"module {self.name} is {self.state.value}")
            res = self._hook(msg)
        if res is None:
            raise Busy(f"module {self.name} failed")
        if res.code:
            raise error_for_code(res.code, res.reason)
        return res

    def save_state(self) -> bytes | None:
        """``svsm_save_state``: the module's state (migration).  :raises Busy: not serving."""
        res = self._serving_hook(m.SaveState(id=self._next_id()))
        return res.data if res.found else None

    def restore_state(self, state: bytes) -> None:
        """``svsm_restore_state`` (migration destination); also kept as the crash checkpoint."""
        self._manifest_cache = _UNSET
        self._serving_hook(m.RestoreState(id=self._next_id(), state=state))
        self._checkpoint = bytes(state)

    def service_manifest(self) -> bytes | None:
        """``svsm_service_manifest``: the bytes for the attestation services manifest.

        Cached until the module restarts, restores a state or runs a command (the hook must
        return stable bytes), so an attestation does not wait on the module each time.
        """
        cached = self._manifest_cache
        if cached is not _UNSET:
            return cached  # type: ignore[return-value]
        res = self._serving_hook(m.ManifestRequest(id=self._next_id()))
        data = res.data if res.found else None
        self._manifest_cache = data
        return data

    def command(self, name: str, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """Run ``svsm_module_command(name, payload)`` in the module; serve its syscalls meanwhile.

        Guest calls to this module answer BUSY while it runs; other modules are not affected.

        :param timeout: seconds before the module is declared hung (killed, restarted);
            ``None``: no deadline (``stop()`` still ends it).
        :returns: the bytes the hook returned.
        :raises Busy: the module is not serving, or failed (crash, hang, killed) during the command.
        :raises UnsupportedCall: no implementation of the hook answered ``name``.
        :raises RequestError: the module's own error code.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive or None")
        if len(name) > 64 or len(payload) > m.MAX_BLOB:
            raise InvalidParameter("command name or payload too long")
        with self._lock:
            if self.state is not ModuleState.SERVING:
                raise Busy(f"module {self.name} is {self.state.value}")
            self._command = name
            self._manifest_cache = _UNSET
            try:
                deadline = _FOREVER if timeout is None else self._ctx.clock() + timeout
                res = self._exchange(m.Command(id=self._next_id(), name=name, payload=bytes(payload)), m.HookResult, deadline)
            except ModuleFailure as exc:
                self._fail(f"command {name}: {exc}")
                raise Busy(f"module {self.name} failed during command {name!r}: {exc}") from None
            finally:
                self._command = None
        if res.code:
            raise error_for_code(res.code, res.reason)
        if not res.found:
            raise UnsupportedCall(f"module {self.name} has no command {name!r}")
        return res.data

    def storage(self, op: str, namespace: str, key: str = "", value: bytes = b"") -> m.HookResult:
        """Forward another module's storage syscall to this (storage-serving) module."""
        return self._serving_hook(m.StorageRequest(id=self._next_id(), op=op, namespace=namespace, key=key, value=value))

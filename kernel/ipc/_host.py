"""The module host: the kernel's ring-3 runtime, as dispatch sees it.

Implements ``svsm.kernel.protocols.ModuleHost`` (docs/dev/requests.md): which
protocols are served, and one call at a time per module, from any vCPU thread.
It owns the modules' supervisors, the shared providers (clock, RNG, PSP, storage)
and a supervisor thread that restarts failed modules with backoff.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from svsm.sdk import Busy, InvalidFormat, InvalidRequest, Manifest, RequestError, UnsupportedProtocol
from svsm.sdk.abi import Recorder

from ._discovery import EntryPointModule, ModuleSpec, discover, spec_for
from ._launch import Launched, ModuleFailure, launch_process, module_uid
from ._lifecycle import ModuleState
from ._measurements import MODULE_MEASUREMENTS_GUID, MeasurementEntry, encode_measurements
from ._policy import Policy
from ._sandbox import make_kernel_undumpable, others_can_read
from ._supervisor import HostContext, Limits, ModuleInfo, ModuleSupervisor
from ._syscalls import SERVICE_NAME, Providers, ServiceHandler

__all__ = ["CallOutcome", "HostStatistics", "ModuleHost", "ModuleStorageBackend"]

log = logging.getLogger("svsm.kernel.ipc.host")


class CallOutcome(NamedTuple):
    """Result of :meth:`ModuleHost.call`: RAX and the output registers."""

    rax: int
    rcx: int
    rdx: int
    r8: int


class HostStatistics(NamedTuple):
    """Counters over all modules."""

    modules: int
    serving: int
    calls: int
    failures: int
    restarts: int
    strikes: int


class _Params:
    """Minimal ``RequestParams`` for :meth:`ModuleHost.call` (tests, CLI)."""

    __slots__ = ("cpu", "protocol", "call", "rcx", "rdx", "r8", "r9")

    def __init__(self, protocol: int, call: int, rcx: int, rdx: int, r8: int, r9: int) -> None:
        self.cpu, self.protocol, self.call = 0, protocol, call
        self.rcx, self.rdx, self.r8, self.r9 = rcx, rdx, r8, r9


class _NoMemory:
    def read(self, gpa: int, length: int) -> bytes:
        from svsm.sdk import InvalidAddress

        raise InvalidAddress("no guest memory attached")

    def write(self, gpa: int, data: bytes) -> None:
        from svsm.sdk import InvalidAddress

        raise InvalidAddress("no guest memory attached")


class ModuleStorageBackend:
    """Storage syscalls of other modules, served by a module with ``serve_storage``.

    Fails closed: while the provider restarts storage answers BUSY, and once it is disabled
    every storage syscall is refused (INVALID_REQUEST) -- a module never falls back to a
    volatile store behind the persistence module's back (e.g. a vTPM re-manufacturing).
    """

    def __init__(self, supervisor: ModuleSupervisor) -> None:
        self._sup = supervisor

    def _call(self, op: str, namespace: str, key: str, value: bytes = b"") -> Any:
        if self._sup.state is ModuleState.DEAD:
            raise InvalidRequest(f"storage provider {self._sup.name} is disabled")
        return self._sup.storage(op, namespace, key, value)

    def get(self, namespace: str, key: str) -> bytes | None:
        res = self._call("get", namespace, key)
        return res.data if res.found else None

    def put(self, namespace: str, key: str, value: bytes) -> None:
        self._call("put", namespace, key, value)

    def delete(self, namespace: str, key: str) -> bool:
        return bool(self._call("delete", namespace, key).found)

    def list(self, namespace: str, prefix: str) -> list[str]:
        return list(self._call("list", namespace, prefix).names)


def _builtin(spec: ModuleSpec) -> bool:
    """A module shipped with pysvsm (its code is under ``svsm.modules``): may hold privileged capabilities."""
    t = spec.ref.target
    return spec.ref.kind == "import" and (t == "svsm.modules" or t.startswith("svsm.modules."))


def _default_read_only() -> list[str]:
    import svsm.sdk

    # The Python installation and the SDK; a module's own code is added per module.
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(svsm.sdk.__file__)}
    paths.update(p for p in sys.path if p and os.path.isabs(p) and p != os.getcwd() and "site-packages" in p)
    return sorted(p for p in paths if os.path.exists(p))


class ModuleHost:
    """Runs ring-3 modules and routes guest calls to them.

    :param modules: module objects or :class:`ModuleSpec` to add (see :meth:`add`).
    :param mode: ``"process"`` (sandboxed processes) or ``"inprocess"`` (threads, tests only).
    :param providers: clock/RNG/PSP/disk/storage providers for syscalls.
    :param policy: the module policy (denials, limits).
    :param limits: supervision limits.
    :param recorder: observer of every ABI frame on the kernel side (tests).
    :param clock: monotonic seconds for deadlines and backoff.
    :param runtime_dir: parent of the modules' private directories (a temp dir by default).
    :param tick: seconds between supervision rounds (crash detection, due restarts).
    :param scheduler: the booted kernel's ``svsm.kernel.sched.Scheduler``: supervision then runs as its
        periodic timer (``call_every(tick)``) instead of a thread of its own.  Restarts still run on
        threads of their own (a start may take ``start_timeout``).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        modules: Iterable[Any] = (),
        *,
        mode: str = "process",
        providers: Providers | None = None,
        policy: Policy | None = None,
        limits: Limits | None = None,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        runtime_dir: str | None = None,
        tick: float = 0.02,
        scheduler: Any = None,
    ) -> None:
        self.mode = mode
        self.policy = policy or Policy()
        self.providers = providers or Providers()
        lim = limits or Limits(request_timeout_cap=self.policy.request_timeout_cap)
        self._own_dir = runtime_dir is None
        rdir = runtime_dir or tempfile.mkdtemp(prefix="svsm-modules-")
        os.chmod(rdir, 0o711)
        self._ctx = HostContext(
            providers=self.providers,
            limits=lim,
            runtime_dir=rdir,
            recorder=recorder,
            clock=clock,
            read_only=_default_read_only(),
            address_space=self.policy.address_space,
            cpu_seconds=self.policy.cpu_seconds,
            open_files=self.policy.open_files,
            speculation_mitigations=self.policy.speculation_mitigations,
        )
        self._ctx.spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="svsm-module-spawner")
        self._ctx.uid_switch = others_can_read([sys.base_prefix, sys.prefix, *self._ctx.read_only])
        self._sups: dict[str, ModuleSupervisor] = {}
        self._by_protocol: dict[int, ModuleSupervisor] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick = tick
        self._scheduler = scheduler
        self._timer: Any = None
        self.kernel_undumpable = False
        self.skipped: dict[str, str] = {}
        for obj in modules:
            self.add(obj)

    @classmethod
    def from_installed(cls, *, blocked: Iterable[str] = (), policy: Policy | None = None, **kwargs: Any) -> ModuleHost:
        """A host with every installed module (entry points ``svsm.modules``) the policy allows.

        In process mode no module code runs in the kernel: each module is started in its
        sandboxed process, which reports the validated manifest (the process is then kept and
        serves once the host starts); a module that fails to load or validate is skipped.
        """
        host = cls(policy=policy, **kwargs)
        launched: dict[str, Launched] = {}
        probe = None
        if host.mode == "process":
            host.kernel_undumpable = make_kernel_undumpable()  # before any module process exists
            probe = lambda cands: host._probe(cands, launched)  # noqa: E731
        try:
            specs, skipped = discover(policy=policy, blocked=blocked, probe=probe)
            host.skipped.update(skipped)
            for spec in specs:
                try:
                    host.add(spec, launched=launched.get(spec.source))
                    launched.pop(spec.source, None)  # adopted by its supervisor
                except InvalidFormat as exc:
                    host.skipped[spec.name] = str(exc)
        finally:
            for rest in launched.values():  # denied by policy or rejected by add(): never served
                rest.link.kill()
                rest.link.join(1.0)
        return host

    def _probe(self, candidates: list[EntryPointModule], out: dict[str, Launched]) -> list[Manifest | InvalidFormat]:
        """Start each candidate's sandboxed process (concurrently) and collect the manifests it reports."""
        deadline = self._ctx.clock() + self._ctx.limits.start_timeout
        lock = threading.Lock()

        def one(epm: EntryPointModule) -> Manifest | InvalidFormat:
            tmp = ".probe-" + hashlib.sha256(epm.ep_name.encode()).hexdigest()[:16]
            try:
                got = launch_process(epm, tmp, module_uid(epm.code_paths, self._ctx), self._ctx, deadline)
            except ModuleFailure as exc:
                shutil.rmtree(os.path.join(self._ctx.runtime_dir, tmp), ignore_errors=True)
                return InvalidFormat(f"{epm.source}: {exc}")
            target = os.path.join(self._ctx.runtime_dir, got.manifest.name)
            with lock:  # the process keeps its directory (cwd and Landlock rules follow the inode)
                try:
                    if os.path.lexists(target):
                        raise FileExistsError(target)
                    os.rename(os.path.join(self._ctx.runtime_dir, tmp), target)
                except OSError:
                    got.link.kill()
                    return InvalidFormat(f"module name {got.manifest.name} already in use")
            out[epm.source] = got
            return got.manifest

        if not candidates:
            return []
        with concurrent.futures.ThreadPoolExecutor(min(8, len(candidates)), thread_name_prefix="svsm-probe") as pool:
            return list(pool.map(one, candidates))

    # -- composition ------------------------------------------------------------------------------
    def add(self, module: Any, *, mode: str | None = None, launched: Launched | None = None) -> ModuleSupervisor:
        """Add a module (object or spec) before or after :meth:`start`.

        :param launched: its already started process (discovery); adopted by the first start.
        :raises InvalidFormat: invalid module, name taken, protocol already served, or denied by policy.
        """
        spec = module if isinstance(module, ModuleSpec) else spec_for(module)
        if not self.policy.allows(spec.name):
            raise InvalidFormat(f"module {spec.name} denied by policy")
        if spec.name in self._sups:
            raise InvalidFormat(f"module name {spec.name} already in use")
        for p in spec.manifest.protocols:
            if p.number in self._by_protocol:
                raise InvalidFormat(f"protocol {p.number:#x} already served by {self._by_protocol[p.number].name}")
        mode = mode or self.mode
        # In-process modules run unsandboxed in the kernel: withholding capabilities protects nothing there.
        granted = self.policy.grant(spec.manifest, builtin=_builtin(spec) or mode == "inprocess")
        sup = ModuleSupervisor(spec, granted, mode, self._ctx, launched)
        self._sups[spec.name] = sup
        for p in spec.manifest.protocols:
            self._by_protocol[p.number] = sup
        if self._thread is not None or self._timer is not None:
            self._start_one(sup)
        return sup

    def start(self) -> ModuleHost:
        """Start every module (storage providers first) and the supervisor thread; idempotent."""
        if self._thread is not None or self._timer is not None:
            return self
        if any(s.mode == "process" for s in self._sups.values()):
            self.kernel_undumpable = make_kernel_undumpable()
        order = sorted(self._sups.values(), key=lambda s: "serve_storage" not in s.granted)
        for sup in order:
            self._start_one(sup)
        if self._scheduler is not None:
            self._timer = self._scheduler.call_every(self._tick, self._poll_all)
        else:
            self._thread = threading.Thread(target=self._supervise, name="svsm-module-supervisor", daemon=True)
            self._thread.start()
        return self

    def _start_one(self, sup: ModuleSupervisor) -> None:
        started = sup.start()
        if "serve_storage" in sup.granted and self.providers.storage.provider_namespace is None:
            # Fail closed: even if the provider did not start, storage goes to it (BUSY while it
            # restarts, refused once disabled) -- never silently to a volatile store.
            if not started:
                log.error("storage provider %s did not start: %s", sup.name, sup.last_failure)
            self.providers.storage.set_provider(ModuleStorageBackend(sup), sup.name)

    def _poll_all(self) -> None:
        """One supervision round: notice dead processes, start due restarts (never blocks on a start)."""
        if self._stop.is_set():
            return
        for sup in list(self._sups.values()):
            sup.poll()

    def _supervise(self) -> None:
        while not self._stop.wait(self._tick):
            self._poll_all()

    def close(self) -> None:
        """Stop every module (storage providers last) and the supervisor thread."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._thread.join(2.0)
        order = sorted(self._sups.values(), key=lambda s: "serve_storage" in s.granted)
        for sup in order:
            sup.stop()
        self._ctx.spawner.shutdown(wait=True)
        if self._own_dir:
            shutil.rmtree(self._ctx.runtime_dir, ignore_errors=True)

    def __enter__(self) -> ModuleHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the ModuleHost interface dispatch uses ----------------------------------------------------
    def _serving(self, protocol: int) -> ModuleSupervisor | None:
        sup = self._by_protocol.get(protocol)
        if sup is None or sup.state in (ModuleState.DEAD, ModuleState.DRAINING):
            return None
        return sup

    def serves(self, protocol: int) -> bool:
        """True if a module that is not dead or disabled serves ``protocol`` (restarting counts)."""
        return self._serving(protocol) is not None

    def protocol_versions(self, protocol: int) -> tuple[int, int] | None:
        """(min, max) version of ``protocol`` for QUERY_PROTOCOL, or ``None``."""
        sup = self._serving(protocol)
        if sup is None:
            return None
        p = sup.manifest.protocol(protocol)
        return None if p is None else (p.min_version, p.max_version)

    def handle_request(self, params: Any, memory: Any) -> None:
        """Route one guest call to the module serving ``params.protocol``.

        :raises UnsupportedProtocol: nobody (alive) serves it.
        :raises RequestError: every other failure, including a module crash (BUSY).
        """
        sup = self._serving(params.protocol)
        if sup is None:
            raise UnsupportedProtocol(f"no module serves protocol {params.protocol:#x}")
        sup.handle_request(params, memory)

    def service_manifests(self) -> Sequence[tuple[uuid.UUID, bytes]]:
        """(GUID, bytes) per serving module with a service GUID, then the module measurements.

        A GUID is one service's name in the attestation: a module may not claim the reserved
        module-measurement GUID, and when several modules claim one GUID only a built-in module
        keeps it (a third-party module must not replace, say, the vTPM's EK entry); with no
        built-in among the claimants the GUID is left out.  Either way the guest's
        ATTEST_SERVICES keeps working, and the refusal is logged.
        """
        claims: dict[uuid.UUID, list[tuple[bool, str, bytes]]] = {}
        for name in sorted(self._sups):
            sup = self._sups[name]
            if sup.manifest.service_guid is None or sup.state is not ModuleState.SERVING:
                continue
            guid = uuid.UUID(sup.manifest.service_guid)
            if guid == MODULE_MEASUREMENTS_GUID:
                log.error("module %s claims the reserved module-measurement GUID; left out of the attestation", name)
                continue
            try:
                data = sup.service_manifest()
            except Busy:
                continue
            if data is not None:
                claims.setdefault(guid, []).append((_builtin(sup.spec), name, data))
        out: list[tuple[uuid.UUID, bytes]] = []
        for guid, who in claims.items():
            builtins = [c for c in who if c[0]]
            keep = builtins if len(builtins) == 1 else who if len(who) == 1 else []
            if len(who) > 1:
                log.error("modules %s all claim service GUID %s; %s", [c[1] for c in who], guid,
                          f"kept built-in {keep[0][1]}" if keep else "left out of the attestation")
            out += [(guid, keep[0][2])] if keep else []
        out.append((MODULE_MEASUREMENTS_GUID, self.measurements()))
        return out

    def measurements(self) -> bytes:
        """The module-measurement entry (every module the host runs or tries to run)."""
        return encode_measurements(
            MeasurementEntry(s.name, s.manifest.version, s.spec.measurement)
            for s in self._sups.values()
            if s.state is not ModuleState.DEAD or s.last_failure
        )

    # -- conveniences --------------------------------------------------------------------------------
    def call(
        self, protocol: int, call: int, rcx: int = 0, rdx: int = 0, r8: int = 0, r9: int = 0, memory: Any = None
    ) -> CallOutcome:
        """Make one call as dispatch would; errors become RAX (never raised).

        :returns: (RAX, RCX, RDX, R8) as the guest would see them.
        """
        params = _Params(protocol, call, rcx, rdx, r8, r9)
        try:
            self.handle_request(params, memory if memory is not None else _NoMemory())
            rax = 0
        except RequestError as exc:
            rax = int(exc.code)
        return CallOutcome(rax, params.rcx, params.rdx, params.r8)

    def module(self, name: str) -> ModuleSupervisor:
        """The supervisor of module ``name``.  :raises KeyError: no such module."""
        return self._sups[name]

    def wait_module_ready(self, name: str, timeout: float = 30.0) -> bool:
        """Wait until module ``name`` is serving (e.g. after a restart); False on timeout."""
        return self._sups[name].ready.wait(timeout)

    def modules(self) -> list[ModuleInfo]:
        """Per-module snapshots, by name."""
        return [self._sups[n].info() for n in sorted(self._sups)]

    def save_state(self, name: str) -> bytes | None:
        """Module ``name``'s state (migration)."""
        return self._sups[name].save_state()

    def restore_state(self, name: str, state: bytes) -> None:
        """Give module ``name`` a saved state (migration destination)."""
        self._sups[name].restore_state(state)

    # -- generic extension points (kernel services, module commands) ---------------------------------
    def register_service(self, name: str, handler: ServiceHandler) -> None:
        """Offer kernel service ``name`` to this host's modules (``Syscalls.service(name, op, payload)``).

        A module reaches it only if its manifest lists ``name`` in ``services`` and policy
        grants ``svc:<name>``.  ``handler(module_name, op, payload) -> bytes`` runs on the
        thread driving that module's channel (a vCPU, the supervisor or a ``command`` caller);
        raise a :class:`~svsm.sdk.RequestError` leaf for an error reply with its code; any
        other exception is a kernel bug (the module is failed and the exception propagates).
        Replies are limited to ``MAX_BLOB`` bytes.  Unknown services answer UNSUPPORTED_CALL.

        :raises ValueError: ``name`` is not ``[a-z][a-z0-9_]{0,31}`` or already registered.

        .. versionadded:: 0.2
        """
        if not SERVICE_NAME.fullmatch(name):
            raise ValueError(f"bad service name {name!r}")
        if name in self.providers.services:
            raise ValueError(f"service {name!r} already registered")
        self.providers.services[name] = handler

    def unregister_service(self, name: str) -> None:
        """Withdraw kernel service ``name`` (later calls answer UNSUPPORTED_CALL); no-op if absent."""
        self.providers.services.pop(name, None)

    def command(self, module_name: str, name: str, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """Run command ``name`` in module ``module_name`` (hook ``svsm_module_command``) and return its reply.

        Runs on the calling thread, serving the module's syscalls (kernel services included)
        until the hook returns; with ``timeout=None`` there is no deadline.  Guest calls to
        other modules proceed concurrently; calls to this module answer BUSY meanwhile.

        :raises KeyError: no module ``module_name``.
        :raises Busy: the module is not serving, or failed during the command (it restarts).
        :raises UnsupportedCall: the module has no command ``name``.
        :raises RequestError: the module's own error code.

        .. versionadded:: 0.2
        """
        return self._sups[module_name].command(name, payload, timeout)

    def save_states(self) -> dict[str, bytes]:
        """Every serving module's state, by name (migration source; modules without state omitted).

        :raises Busy: a module is restarting (retry: migration must not lose its state).
        """
        out: dict[str, bytes] = {}
        for name in sorted(self._sups):
            sup = self._sups[name]
            if sup.state is ModuleState.RESTARTING:
                raise Busy(f"module {name} is restarting")
            if sup.state is ModuleState.SERVING:
                state = sup.save_state()
                if state is not None:
                    out[name] = state
        return out

    def restore_states(self, states: dict[str, bytes]) -> None:
        """Give each named module its state (migration destination).

        :raises KeyError: a state for a module this host does not run.
        """
        for name, state in sorted(states.items()):
            self._sups[name].restore_state(state)

    def statistics(self) -> HostStatistics:
        """Counters over all modules."""
        stats = [s.statistics() for s in self._sups.values()]
        return HostStatistics(
            len(self._sups),
            sum(s.state is ModuleState.SERVING for s in self._sups.values()),
            sum(s.calls for s in stats),
            sum(s.failures for s in stats),
            sum(s.restarts for s in stats),
            sum(s.strikes for s in stats),
        )

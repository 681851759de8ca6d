"""ModuleHost with in-process modules: routing, buffers, grants, errors, supervision, storage."""

from __future__ import annotations

import time
from typing import Any

import pytest

from svsm.kernel.ipc import Limits, ModuleHost, ModuleState, Policy, decode_measurements, MODULE_MEASUREMENTS_GUID
from svsm.sdk import (
    BufferSpec,
    CallSpec,
    InvalidFormat,
    InvalidParameter,
    Manifest,
    Module,
    ProtocolSpec,
    Reply,
    ResultCode,
    hookimpl,
)
from svsm.sdk.abi import CallRequest, ErrorFrame, SysLog
from svsm.sdk.testing import FakeGuestMemory, check_module

P = 0x4000_0010


class Calc(Module):
    MANIFEST = Manifest(
        name="calc",
        version="1.0",
        protocols=[
            ProtocolSpec(
                number=P,
                max_version=2,
                calls=[
                    CallSpec(call=0),
                    CallSpec(call=1, buffer=BufferSpec(gpa_register="rcx", size=16, writable=True)),
                    CallSpec(
                        call=2,
                        buffer=BufferSpec(gpa_register="rcx", size_register="rdx", max_size=8192, writable=True, mode="grant"),
                    ),
                    CallSpec(call=3),
                ],
            )
        ],
        capabilities=["log", "storage", "grant", "time"],
        service_guid="12345678-1234-4234-8234-123456789abc",
        checkpoint_every=1,
    )

    def __init__(self) -> None:
        self.total = 0

    @hookimpl
    def svsm_handle_request(self, request: Any, ctx: Any) -> Reply | None:
        if request.call == 0:
            if request.rcx > 1000:
                raise InvalidParameter("too big")
            self.total += request.rcx
            ctx.syscalls.storage_put("total", str(self.total).encode())
            return Reply(rcx=self.total, rdx=ctx.syscalls.time_ns() & 0xFFFF)
        if request.call == 1:
            return Reply(buffer=request.buffer[::-1])
        if request.call == 2:
            data = request.grant.read()
            request.grant.write(0, data[:4].upper())
            return Reply(r8=len(data))
        if request.call == 3:
            raise SystemExit  # the "process" dies mid-request
        return None

    @hookimpl
    def svsm_save_state(self) -> bytes:
        return str(self.total).encode()

    @hookimpl
    def svsm_restore_state(self, state: bytes) -> None:
        self.total = int(state)

    @hookimpl
    def svsm_service_manifest(self) -> bytes:
        return b"calc-manifest"


def host(*mods: Any, **kw: Any) -> ModuleHost:
    kw.setdefault("limits", Limits(backoff_base=0.01))
    return ModuleHost(mods or (Calc,), mode="inprocess", **kw).start()


def test_routing_registers_and_errors() -> None:
    with host() as h:
        assert h.serves(P) and not h.serves(P + 1)
        assert h.protocol_versions(P) == (1, 2)
        out = h.call(P, 0, rcx=5)
        assert (out.rax, out.rcx) == (0, 5)
        assert h.call(P, 0, rcx=7).rcx == 12
        assert h.call(P, 0, rcx=5000).rax == ResultCode.INVALID_PARAMETER
        assert h.call(P, 9).rax == ResultCode.UNSUPPORTED_CALL
        assert h.call(P + 1, 0).rax == ResultCode.UNSUPPORTED_PROTOCOL


def test_copy_buffer_round_trip_and_bad_address() -> None:
    mem = FakeGuestMemory(0x3000)
    mem.write(0x1000, bytes(range(16)))
    with host() as h:
        assert h.call(P, 1, rcx=0x1000, memory=mem).rax == 0
        assert mem.read(0x1000, 16) == bytes(range(16))[::-1]
        assert h.call(P, 1, rcx=0x2FF8, memory=mem).rax == ResultCode.INVALID_ADDRESS


def test_grant_is_exactly_the_window_and_revoked_after() -> None:
    mem = FakeGuestMemory(0x4000)
    mem.write(0x1000, b"abcdefgh")
    with host() as h:
        out = h.call(P, 2, rcx=0x1000, rdx=8, memory=mem)
        assert (out.rax, out.r8) == (0, 8)
        assert mem.read(0x1000, 8) == b"ABCDefgh"
        assert h.call(P, 2, rcx=0x1000, rdx=9000, memory=mem).rax == ResultCode.INVALID_PARAMETER
        assert h.call(P, 2, rcx=0x3F00, rdx=0x200, memory=mem).rax == ResultCode.INVALID_ADDRESS  # window past the end
        sup = h.module("calc")
        assert sup.grants.statistics().live == 0 and sup.grants.statistics().created == 1


def test_crash_fails_request_busy_then_restart_restores_checkpoint() -> None:
    with host() as h:
        assert h.call(P, 0, rcx=40).rcx == 40  # checkpoint "40" taken after the call
        assert h.call(P, 3).rax == ResultCode.BUSY
        sup = h.module("calc")
        assert sup.state in (ModuleState.RESTARTING, ModuleState.SERVING)
        assert h.wait_module_ready("calc", 10)
        assert h.call(P, 0, rcx=2).rcx == 42  # state restored from the checkpoint
        assert sup.statistics().restarts == 1


def test_crash_loop_disables_and_protocol_disappears() -> None:
    with host(limits=Limits(backoff_base=0.001, crash_loop=3)) as h:
        for _ in range(3):
            h.wait_module_ready("calc", 10)
            assert h.call(P, 3).rax in (ResultCode.BUSY, ResultCode.UNSUPPORTED_PROTOCOL)
        assert h.module("calc").state is ModuleState.DEAD
        assert not h.serves(P) and h.protocol_versions(P) is None
        assert h.call(P, 0).rax == ResultCode.UNSUPPORTED_PROTOCOL


class Sleepy(Module):
    MANIFEST = Manifest(
        name="sleepy",
        version="1",
        protocols=[ProtocolSpec(number=P + 5, calls=[CallSpec(call=0)])],
        request_timeout=1.0,
    )

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        time.sleep(request.rcx / 1000)
        return Reply(rcx=1)


def test_deadline_missed_is_busy_and_restarts() -> None:
    with host(Sleepy) as h:
        assert h.call(P + 5, 0, rcx=0).rcx == 1
        assert h.call(P + 5, 0, rcx=3000).rax == ResultCode.BUSY
        assert "deadline" in h.module("sleepy").last_failure
        assert h.wait_module_ready("sleepy", 10)
        assert h.call(P + 5, 0, rcx=0).rax == 0


class Noisy(Module):
    MANIFEST = Manifest(name="noisy", version="1", protocols=[ProtocolSpec(number=P + 6, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_handle_request(self, request: Any, ctx: Any) -> Reply:
        for _ in range(request.rcx):
            try:
                ctx.syscalls.random(4)  # not granted
            except Exception:
                pass
        return Reply(rcx=2)


def test_denied_syscalls_are_strikes_and_too_many_stop_the_module(abi_frames: Any) -> None:
    with host(Noisy, limits=Limits(max_strikes=3, backoff_base=0.01), recorder=abi_frames) as h:
        assert h.call(P + 6, 0, rcx=2).rcx == 2
        assert h.call(P + 6, 0, rcx=5).rax == ResultCode.BUSY
        assert "strikes" in h.module("noisy").last_failure
        assert h.wait_module_ready("noisy", 10)
        assert h.call(P + 6, 0, rcx=0).rax == 0
        assert abi_frames.of_type(CallRequest, "out")


def test_policy_denies_capabilities_and_modules() -> None:
    pol = Policy(deny_capabilities={"calc": ["storage"]})
    with host(policy=pol) as h:
        assert "storage" not in h.module("calc").granted
        assert h.call(P, 0, rcx=1).rax == ResultCode.INVALID_REQUEST  # storage_put refused inside the handler
    with pytest.raises(InvalidFormat):
        ModuleHost([Calc], mode="inprocess", policy=Policy(deny_modules=["calc"]))


def test_protocol_conflict_rejected() -> None:
    class Other(Calc):
        MANIFEST = Manifest(name="other", version="1", protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0)])])

    with pytest.raises(InvalidFormat):
        ModuleHost([Calc, Other], mode="inprocess")


def test_service_manifests_include_module_and_measurements() -> None:
    with host() as h:
        entries = dict(h.service_manifests())
        import uuid

        assert entries[uuid.UUID("12345678-1234-4234-8234-123456789abc")] == b"calc-manifest"
        (m,) = decode_measurements(entries[MODULE_MEASUREMENTS_GUID])
        assert (m.name, m.version, m.measurement) == ("calc", "1.0", h.module("calc").spec.measurement)


class Store(Module):
    MANIFEST = Manifest(name="store", version="1", capabilities=["serve_storage"])

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], bytes] = {}

    @hookimpl
    def svsm_storage_request(self, op: str, namespace: str, key: str, value: bytes) -> Any:
        if op == "put":
            self.data[namespace, key] = value
            return None
        if op == "get":
            return self.data.get((namespace, key))
        if op == "delete":
            return self.data.pop((namespace, key), None) is not None
        return sorted(k for ns, k in self.data if ns == namespace and k.startswith(key))


def test_storage_routed_to_serving_module() -> None:
    with host(Calc, Store, policy=Policy(privileged_modules=["store"])) as h:
        assert h.call(P, 0, rcx=3).rax == 0
        store = h.module("store").spec.obj
        assert h.providers.storage.provider_namespace == "store"
        res = h.module("store").storage("get", "calc", "total")
        assert res.data == b"3"
        assert isinstance(store, type)


def test_save_restore_for_migration() -> None:
    with host() as h:
        h.call(P, 0, rcx=9)
        state = h.save_state("calc")
    with host() as h2:
        h2.restore_state("calc", state)
        assert h2.call(P, 0, rcx=1).rcx == 10


class Tame(Calc):
    MANIFEST = Manifest(
        name="tame",
        version="1",
        protocols=[ProtocolSpec(number=P, calls=Calc.MANIFEST.protocols[0].calls[:3])],
        capabilities=["log", "storage", "grant", "time"],
    )


def test_save_and_restore_all_states() -> None:
    with host(Calc, Sleepy) as h:
        h.call(P, 0, rcx=11)
        states = h.save_states()
    assert states == {"calc": b"11"}
    with host(Calc, Sleepy) as h2:
        h2.restore_states(states)
        assert h2.call(P, 0, rcx=1).rcx == 12
        with pytest.raises(KeyError):
            h2.restore_states({"nope": b""})


def test_check_module_conformance_passes_a_good_module_and_catches_a_crash() -> None:
    report = check_module(Tame)
    assert (report.name, report.calls_checked, report.state_round_trip) == ("tame", 3, True)
    with pytest.raises(AssertionError):
        check_module(Calc)  # call 3 kills the module


def test_statistics() -> None:
    with host() as h:
        h.call(P, 0, rcx=1)
        st = h.statistics()
        assert (st.modules, st.serving, st.calls) == (1, 1, 1)
        assert h.module("calc").statistics().syscalls >= 2


class Liar(Module):
    MANIFEST = Manifest(
        name="liar",
        version="1",
        protocols=[ProtocolSpec(number=P + 7, calls=[CallSpec(call=0), CallSpec(call=1), CallSpec(call=2)])],
    )

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Any:
        from svsm.sdk import RequestError

        if request.call == 0:
            raise RequestError(code=5)  # not an SVSM result code
        if request.call == 1:
            return Reply(buffer=b"unasked")  # no writable buffer declared
        return "not a Reply"


def test_module_cannot_invent_result_codes_or_write_undeclared_buffers() -> None:
    with host(Liar) as h:
        assert h.call(P + 7, 0).rax == ResultCode.INVALID_REQUEST
        assert h.call(P + 7, 1).rax == ResultCode.INVALID_REQUEST
        assert h.call(P + 7, 2).rax == ResultCode.INVALID_REQUEST
        sup = h.module("liar")
        assert sup.strikes == 2 and sup.state is ModuleState.SERVING


class BadStart(Module):
    MANIFEST = Manifest(name="badstart", version="1", protocols=[ProtocolSpec(number=P + 8, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_module_start(self) -> None:
        raise RuntimeError("cannot start")


def test_failing_start_is_retried_then_disabled() -> None:
    with host(BadStart, limits=Limits(backoff_base=0.001, crash_loop=3)) as h:
        sup = h.module("badstart")
        deadline = time.monotonic() + 10
        while sup.state is not ModuleState.DEAD and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sup.state is ModuleState.DEAD and "svsm_module_start failed" in sup.last_failure
        assert sup.statistics().failures == 3
        assert not h.serves(P + 8)


def _fake_peer(reply: Any) -> Any:
    """A ThreadLink whose 'module' speaks raw frames: ``reply(hello) -> frame to answer``."""
    import socket
    import threading

    from svsm.kernel.ipc._process import ThreadLink
    from svsm.sdk.abi import NEED_DATA, Channel

    class Peer(ThreadLink):
        def __init__(self, obj: Any, *, name: str, recorder: Any = None) -> None:
            self.sock, end = socket.socketpair()
            self._module_end, self._exit = end, None

            def run() -> None:
                ch = Channel("module")
                while (ev := ch.next_event()) is NEED_DATA:
                    ch.receive_data(end.recv(4096))
                end.sendall(ch.send(reply(ev)))
                end.recv(4096)  # wait until the kernel closes

            self._thread = threading.Thread(target=run, daemon=True)
            self._thread.start()

    return Peer


def test_abi_major_mismatch_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    from svsm.kernel.ipc import _supervisor
    from svsm.sdk.abi import HelloAck

    monkeypatch.setattr(
        _supervisor, "spawn_thread", _fake_peer(lambda hello: HelloAck(abi_major=hello.abi_major + 1, abi_minor=0, name="calc"))
    )
    with host() as h:
        sup = h.module("calc")
        assert sup.state is ModuleState.DEAD and "ABI major" in sup.last_failure
        assert h.call(P, 0).rax == ResultCode.UNSUPPORTED_PROTOCOL


def test_handshake_with_wrong_name_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from svsm.kernel.ipc import _supervisor
    from svsm.sdk.abi import HelloAck

    monkeypatch.setattr(_supervisor, "spawn_thread", _fake_peer(lambda hello: HelloAck(abi_major=1, abi_minor=0, name="evil")))
    with host(limits=Limits(backoff_base=60)) as h:
        sup = h.module("calc")
        assert sup.state is ModuleState.RESTARTING and "handshake" in sup.last_failure
        assert h.call(P, 0).rax == ResultCode.BUSY


def test_concurrent_vcpus_are_serialised_per_module() -> None:
    import threading

    with host(Calc, Sleepy) as h:
        errors: list[int] = []

        def vcpu() -> None:
            for _ in range(25):
                out = h.call(P, 0, rcx=1)
                if out.rax:
                    errors.append(out.rax)
                h.call(P + 5, 0, rcx=0)

        threads = [threading.Thread(target=vcpu) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert h.call(P, 0, rcx=0).rcx == 100  # every increment landed exactly once


def test_backoff_doubles_on_the_injected_clock() -> None:
    from svsm.sdk.testing import FakeClock

    clock = FakeClock()
    h = ModuleHost([Calc], mode="inprocess", clock=clock, tick=3600, limits=Limits(backoff_base=1.0, crash_loop=10))
    with h:
        sup = h.module("calc")
        delays = []
        for _ in range(3):
            assert h.call(P, 3).rax == ResultCode.BUSY  # crash
            assert sup.state is ModuleState.RESTARTING
            waited = 0.0
            while sup.state is not ModuleState.SERVING:
                sup.poll()
                if sup.state is ModuleState.RESTARTING:
                    clock.advance(0.25)
                    waited += 0.25
            delays.append(waited)
        assert delays == [1.0, 2.0, 4.0]


class Chatty(Module):
    MANIFEST = Manifest(
        name="chatty",
        version="1",
        protocols=[ProtocolSpec(number=P + 9, calls=[CallSpec(call=0)])],
        capabilities=["time"],
        request_timeout=0.3,
    )

    @hookimpl
    def svsm_handle_request(self, ctx: Any) -> Reply:
        while True:  # valid syscalls forever: the deadline still applies
            ctx.syscalls.time_ns()


def test_endless_valid_syscalls_hit_the_deadline() -> None:
    with host(Chatty) as h:
        assert h.call(P + 9, 0).rax == ResultCode.BUSY
        assert "deadline" in h.module("chatty").last_failure


class BrokenStore(Store):
    MANIFEST = Manifest(name="brokenstore", version="1", capabilities=["serve_storage"])

    @hookimpl
    def svsm_module_start(self) -> None:
        raise RuntimeError("no disk")


def test_storage_fails_closed_when_the_provider_cannot_start() -> None:
    with host(BrokenStore, Calc, limits=Limits(backoff_base=0.001, crash_loop=2), policy=Policy(privileged_modules=["brokenstore"])) as h:
        assert h.providers.storage.provider_namespace == "brokenstore"
        assert h.call(P, 0, rcx=4).rax in (ResultCode.BUSY, ResultCode.INVALID_REQUEST)  # put refused
        assert h.providers.storage.fallback.get("calc", "total") is None  # nothing went to volatile

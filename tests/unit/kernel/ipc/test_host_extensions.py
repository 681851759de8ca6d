"""ModuleHost's generic extension points: kernel services (``svc:<name>``) and module commands."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from svsm.kernel.ipc import Limits, ModuleHost, ModuleState, Policy
from svsm.sdk import (
    Busy,
    CallSpec,
    InvalidParameter,
    InvalidRequest,
    Manifest,
    Module,
    ProtocolSpec,
    Reply,
    ResultCode,
    UnsupportedCall,
    hookimpl,
)
from svsm.sdk._syscalls import CapabilityDenied
from svsm.sdk.abi import MAX_BLOB, Command, SysService
from svsm.sdk.testing import FakeClock

P = 0x4000_0070


class Mover(Module):
    """Relays commands to the kernel's ``vm`` service, like the migrate module."""

    MANIFEST = Manifest(
        name="mover",
        version="1",
        protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0)])],
        services=["vm"],
        request_timeout=0.5,
    )

    @hookimpl
    def svsm_handle_request(self) -> Reply:
        return Reply(rcx=7)

    @hookimpl
    def svsm_module_command(self, name: str, payload: bytes, ctx: Any) -> bytes | None:
        if name == "relay":  # payload: b"<service>:<op>:<data>"
            service, op, data = payload.split(b":", 2)
            try:
                return b"ok:" + ctx.syscalls.service(service.decode(), op.decode(), data)
            except CapabilityDenied:
                return b"denied"
            except UnsupportedCall:
                return b"unsupported"
            except InvalidParameter:
                return b"invalid-parameter"
        if name == "loop":  # service calls until the kernel says stop
            n = 0
            while ctx.syscalls.service("vm", "step", b"") == b"more":
                n += 1
            return str(n).encode()
        if name == "fail":
            raise InvalidParameter("bad command payload")
        return None


class Other(Module):
    MANIFEST = Manifest(name="other", version="1", protocols=[ProtocolSpec(number=P + 1, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        return Reply(rcx=request.rcx + 1)


def _host(*mods: Any, **kw: Any) -> ModuleHost:
    kw.setdefault("limits", Limits(backoff_base=0.01))
    kw.setdefault("policy", Policy(privileged_modules=["mover"]))  # kernel services are privileged
    return ModuleHost(mods or (Mover, Other), mode="inprocess", **kw).start()


def test_service_round_trip_with_large_payloads() -> None:
    seen: list[tuple[str, str, int]] = []

    def vm(module: str, op: str, payload: bytes) -> bytes:
        seen.append((module, op, len(payload)))
        return payload[::-1] + b"!" * (512 * 1024 - len(payload))

    with _host() as h:
        h.register_service("vm", vm)
        data = bytes(range(256)) * 2048  # 512 KiB each way (a migration batch)
        out = h.command("mover", "relay", b"vm:read:" + data)
        assert out == b"ok:" + data[::-1]
        assert seen == [("mover", "read", len(data))]


def test_service_errors_unknown_and_denied() -> None:
    def vm(module: str, op: str, payload: bytes) -> bytes:
        raise InvalidParameter(op)

    with _host() as h:
        assert h.command("mover", "relay", b"vm:x:") == b"unsupported"  # not registered yet
        h.register_service("vm", vm)
        assert h.command("mover", "relay", b"vm:x:") == b"invalid-parameter"
        h.register_service("disk2", lambda *a: b"")
        assert h.command("mover", "relay", b"disk2:x:") == b"denied"  # not in the manifest
        assert h.module("mover").statistics().denied == 1
        h.unregister_service("vm")
        assert h.command("mover", "relay", b"vm:x:") == b"unsupported"
        with pytest.raises(ValueError):
            h.register_service("Bad-Name", vm)
        with pytest.raises(ValueError):
            h.register_service("disk2", vm)


def test_policy_can_deny_a_service() -> None:
    called: list[str] = []
    pol = Policy(deny_capabilities={"mover": ["svc:vm"]}, privileged_modules=["mover"])
    with _host(policy=pol) as h:
        h.register_service("vm", lambda m, op, p: called.append(op) or b"")
        assert "svc:vm" not in h.module("mover").granted
        info = h.module("mover").info()
        assert "svc:vm" in info.requested and "svc:vm" not in info.granted  # svsm modules list strikes it out
        assert h.command("mover", "relay", b"vm:x:") == b"denied"
        assert called == []


def test_oversized_service_reply_is_an_error_not_a_broken_channel() -> None:
    with _host() as h:
        h.register_service("vm", lambda m, op, p: b"x" * (MAX_BLOB + 1))
        with pytest.raises(InvalidRequest):  # the module's syscall failed; its hook did not catch it
            h.command("mover", "relay", b"vm:x:")
        assert h.module("mover").state is ModuleState.SERVING
        assert h.call(P, 0).rcx == 7


def test_command_errors() -> None:
    with _host() as h:
        with pytest.raises(UnsupportedCall):
            h.command("mover", "no-such-command")
        with pytest.raises(InvalidParameter):
            h.command("mover", "fail")
        with pytest.raises(UnsupportedCall):
            h.command("other", "relay")  # a module without the hook
        with pytest.raises(KeyError):
            h.command("nobody", "relay")
        assert h.module("mover").state is ModuleState.SERVING


def test_command_has_no_deadline_without_timeout_and_one_with() -> None:
    clock = FakeClock()
    left = [5]

    def vm(module: str, op: str, payload: bytes) -> bytes:
        clock.advance(30.0)  # far beyond request_timeout (0.5 s) and the hook timeout (10 s)
        left[0] -= 1
        return b"more" if left[0] >= 0 else b"done"

    with _host(clock=clock, tick=3600) as h:
        h.register_service("vm", vm)
        assert h.command("mover", "loop") == b"5"
        left[0] = 5
        with pytest.raises(Busy):
            h.command("mover", "loop", timeout=45.0)  # the second step is past the deadline
        sup = h.module("mover")
        assert sup.state is ModuleState.RESTARTING and "deadline" in sup.last_failure


def test_command_runs_concurrently_with_guest_calls_to_other_modules() -> None:
    inside = threading.Event()
    release = threading.Event()

    def vm(module: str, op: str, payload: bytes) -> bytes:
        inside.set()
        assert release.wait(30.0)
        return b"done"

    with _host() as h:
        h.register_service("vm", vm)
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(h.command("mover", "loop")))
        t.start()
        assert inside.wait(30.0)
        # the command holds the mover's channel: other modules serve, the mover answers BUSY
        assert h.call(P + 1, 0, rcx=41).rcx == 42
        assert h.call(P, 0).rax == ResultCode.BUSY
        release.set()
        t.join(30.0)
        assert result == [b"0"]
        assert h.call(P, 0).rcx == 7  # serving again


def test_stop_ends_a_command_without_deadline() -> None:
    inside = threading.Event()
    release = threading.Event()

    def vm(module: str, op: str, payload: bytes) -> bytes:
        inside.set()
        release.wait(30.0)
        return b"more"

    h = _host()
    h.register_service("vm", vm)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            h.command("mover", "loop")
        except Busy as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert inside.wait(30.0)
    stopper = threading.Thread(target=h.close)
    stopper.start()
    release.set()
    stopper.join(30.0)
    t.join(30.0)
    assert len(errors) == 1 and not t.is_alive() and not stopper.is_alive()
    assert h.module("mover").state is ModuleState.DEAD


def test_abi_frames_of_a_command(abi_frames: Any) -> None:
    with _host(recorder=abi_frames) as h:
        h.register_service("vm", lambda m, op, p: b"r")
        assert h.command("mover", "relay", b"vm:op:pp") == b"ok:r"
    cmds = [msg for d, msg in abi_frames.frames if isinstance(msg, Command)]
    svcs = [msg for d, msg in abi_frames.frames if isinstance(msg, SysService)]
    assert [(c.name, c.payload) for c in cmds] == [("relay", b"vm:op:pp")]
    assert [(s.service, s.op, s.payload) for s in svcs] == [("vm", "op", b"pp")]



class Manifested(Module):
    MANIFEST = Manifest(name="manifested", version="1", service_guid="12345678-1234-4234-8234-1234567890ab")
    asked = 0
    ek = b"ek-1"

    @hookimpl
    def svsm_service_manifest(self) -> bytes:
        Manifested.asked += 1
        return Manifested.ek

    @hookimpl
    def svsm_restore_state(self, state: bytes) -> None:
        Manifested.ek = state

    @hookimpl
    def svsm_module_command(self, name: str, payload: bytes) -> bytes:
        Manifested.ek = payload
        return b""


def test_service_manifest_is_cached_until_restore_or_command() -> None:
    Manifested.asked, Manifested.ek = 0, b"ek-1"
    with _host(Manifested) as h:
        sup = h.module("manifested")
        assert [sup.service_manifest() for _ in range(3)] == [b"ek-1"] * 3 and Manifested.asked == 1
        h.restore_state("manifested", b"ek-2")  # e.g. a migrated vTPM: another EK
        assert sup.service_manifest() == b"ek-2" and Manifested.asked == 2
        h.command("manifested", "set", b"ek-3")
        assert sup.service_manifest() == b"ek-3" and Manifested.asked == 3

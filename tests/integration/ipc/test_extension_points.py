"""Kernel services and module commands with sandboxed module processes (what migration uses)."""

from __future__ import annotations

import threading
from typing import Any

from svsm.sdk import CallSpec, Manifest, Module, ProtocolSpec, Reply, ResultCode, hookimpl

P = 0x4000_0080


class Pump(Module):
    MANIFEST = Manifest(name="pump", version="1", services=["vm"])

    @hookimpl
    def svsm_module_command(self, name: str, payload: bytes, ctx: Any) -> bytes | None:
        if name != "pump":
            return None
        total = 0
        for i in range(int(payload)):
            total += len(ctx.syscalls.service("vm", "pages", i.to_bytes(4, "little")))
        return str(total).encode()


class Counter(Module):
    MANIFEST = Manifest(name="counter", version="1", protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        return Reply(rcx=request.rcx + 1)


def test_sandboxed_module_pumps_pages_through_a_kernel_service_while_the_guest_is_served() -> None:
    from svsm.kernel.ipc import ModuleHost, Policy  # not at the top: the module processes import this file

    calls: list[int] = []
    guest_served = threading.Event()
    batch = 512 * 1024

    with ModuleHost([Pump, Counter], mode="process", policy=Policy(privileged_modules=["pump"])) as host:

        def vm(module: str, op: str, payload: bytes) -> bytes:
            assert (module, op) == ("pump", "pages")
            i = int.from_bytes(payload, "little")
            calls.append(i)
            if i == 1:  # mid-command: a guest call to another sandboxed module is served
                out = host.call(P, 0, rcx=41)
                if (out.rax, out.rcx) == (0, 42):
                    guest_served.set()
            return bytes([i]) * batch

        host.register_service("vm", vm)
        assert host.command("pump", "pump", b"4") == str(4 * batch).encode()
        assert calls == [0, 1, 2, 3] and guest_served.is_set()
        assert host.call(P, 0, rcx=1).rax == ResultCode.SUCCESS
        assert host.module("pump").statistics().failures == 0

"""Whatever bytes a module writes during a call, the kernel answers with a result code and moves on."""

from __future__ import annotations

import socket
import threading
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svsm.kernel.ipc import Limits, ModuleHost
from svsm.kernel.ipc import _supervisor
from svsm.kernel.ipc._process import ThreadLink
from svsm.sdk import CallSpec, Manifest, ProtocolSpec, RequestError
from svsm.sdk.abi import NEED_DATA, CallRequest, CallResult, Channel, HelloAck, HookResult, Start, Stop

P = 0x4000_0400
MANIFEST = Manifest(name="fuzzed", version="1", protocols=[ProtocolSpec(number=P, calls=[CallSpec(call=0)])], request_timeout=0.05)


class Fuzzed:
    MANIFEST = MANIFEST


def peer_link(garbage: bytes, then_reply: bool) -> type:
    class Peer(ThreadLink):
        def __init__(self, obj: Any, *, name: str, recorder: Any = None) -> None:
            self.sock, end = socket.socketpair()
            self._module_end, self._exit = end, None

            def run() -> None:
                ch = Channel("module")

                def nxt() -> Any:
                    while (ev := ch.next_event()) is NEED_DATA:
                        data = end.recv(65536)
                        if not data:
                            raise EOFError
                        ch.receive_data(data)
                    return ev

                try:
                    nxt()  # hello
                    end.sendall(ch.send(HelloAck(abi_major=1, abi_minor=0, name="fuzzed")))
                    start = nxt()
                    assert isinstance(start, Start)
                    end.sendall(ch.send(HookResult(id=start.id)))
                    while True:
                        ev = nxt()
                        if isinstance(ev, CallRequest):
                            end.sendall(garbage)
                            if then_reply:
                                end.sendall(ch.send(CallResult(id=ev.id, rcx=7)))
                        elif isinstance(ev, Stop):
                            end.sendall(ch.send(HookResult(id=ev.id)))
                            return
                except (EOFError, OSError, AssertionError, Exception):  # noqa: BLE001 -- the peer just stops
                    return

            self._thread = threading.Thread(target=run, daemon=True)
            self._thread.start()

    return Peer


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_from_a_module_become_a_result_code(garbage: bytes, then_reply: bool) -> None:
    orig = _supervisor.spawn_thread
    _supervisor.spawn_thread = peer_link(garbage, then_reply)  # type: ignore[assignment]
    try:
        with ModuleHost([Fuzzed], mode="inprocess", limits=Limits(backoff_base=60)) as h:
            out = h.call(P, 0)  # never raises: RequestError codes become RAX, anything else would escape
            assert out.rax == 0 or out.rax >= 0x8000_0000
            if out.rax == 0:
                assert out.rcx == 7
    finally:
        _supervisor.spawn_thread = orig  # type: ignore[assignment]


def test_request_error_is_the_only_exception_dispatch_sees() -> None:
    orig = _supervisor.spawn_thread
    _supervisor.spawn_thread = peer_link(b"\xff\xff\xff\xff", False)  # type: ignore[assignment]
    try:
        with ModuleHost([Fuzzed], mode="inprocess") as h:

            class Params:
                cpu, protocol, call, rcx, rdx, r8, r9 = 0, P, 0, 0, 0, 0, 0

            try:
                h.handle_request(Params(), None)
                raise AssertionError("a 4 GiB frame header cannot produce an answer")
            except RequestError as exc:
                assert exc.code == 0x8000_0007  # BUSY: the module missed its deadline and was killed
    finally:
        _supervisor.spawn_thread = orig  # type: ignore[assignment]

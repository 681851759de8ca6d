"""Dispatch: routing by protocol, the module-host seam, counters, and RequestParams."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest

from svsm.kernel.protocols import Dispatcher, GuestMemoryWindow, ModuleHost, RequestParams
from svsm.sdk import InvalidParameter, UnsupportedProtocol


class Host:
    def __init__(self) -> None:
        self.seen: list[RequestParams] = []
        self.windows: list[GuestMemoryWindow] = []

    def serves(self, protocol: int) -> bool:
        return protocol == 2

    def protocol_versions(self, protocol: int) -> tuple[int, int] | None:
        return (1, 3) if protocol == 2 else None

    def handle_request(self, params: RequestParams, memory: GuestMemoryWindow) -> None:
        self.seen.append(params)
        self.windows.append(memory)
        if params.call == 9:
            raise InvalidParameter("nope")
        params.rcx = 0x1234

    def service_manifests(self) -> Sequence[tuple[uuid.UUID, bytes]]:
        return []


class Window:
    def __init__(self) -> None:
        self.revoked = False

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(length)

    def write(self, gpa: int, data: bytes) -> None:
        pass

    def revoke(self) -> None:
        self.revoked = True


def test_params_split_rax() -> None:
    p = RequestParams(3, 0x0000_0002_0000_0001, rcx=-1, r9=5)
    assert (p.cpu, p.protocol, p.call, p.rcx, p.r9) == (3, 2, 1, (1 << 64) - 1, 5)
    assert p.outputs() == ((1 << 64) - 1, 0, 0)


def test_routing_and_module_host() -> None:
    calls: list[int] = []
    host = Host()
    assert isinstance(host, ModuleHost)
    d = Dispatcher({0: lambda p: calls.append(p.call)}, host, lambda p: Window())
    d.dispatch(RequestParams(0, 0x0000_0000_0000_0006))
    p = RequestParams(1, 2 << 32 | 1)
    d.dispatch(p)
    assert calls == [6] and p.rcx == 0x1234 and host.windows[-1].revoked  # type: ignore[attr-defined]
    with pytest.raises(InvalidParameter):
        d.dispatch(RequestParams(1, 2 << 32 | 9))
    assert host.windows[-1].revoked  # type: ignore[attr-defined]
    with pytest.raises(UnsupportedProtocol):
        d.dispatch(RequestParams(0, 5 << 32))
    assert d.protocol_versions(0) == (1, 1) and d.protocol_versions(2) == (1, 3) and d.protocol_versions(5) is None
    s = d.statistics()
    assert s.by_protocol == {0: 1, 2: 2, 5: 1} and (s.succeeded, s.failed) == (2, 2)


def test_no_module_host() -> None:
    d = Dispatcher({})
    with pytest.raises(UnsupportedProtocol):
        d.dispatch(RequestParams(0, 2 << 32))
    assert d.protocol_versions(2) is None


def test_register_handler() -> None:
    d = Dispatcher({})
    seen: list[int] = []
    d.register(0, lambda p: seen.append(p.call))
    d.dispatch(RequestParams(0, 3))
    assert seen == [3]
    with pytest.raises(ValueError):
        d.register(0, lambda p: None)

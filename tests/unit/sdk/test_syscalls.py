"""The module-side syscall client: frames it sends and how replies become exceptions."""

from __future__ import annotations

from typing import Any

import pytest

from svsm.sdk import Busy, CapabilityDenied, InvalidAddress, ProtocolError, RequestError, ResultCode, Syscalls
from svsm.sdk._syscalls import error_for_code
from svsm.sdk.abi import _messages as m


class Transport:
    def __init__(self, reply: Any = None) -> None:
        self.sent: list[Any] = []
        self.reply = reply

    def __call__(self, msg: Any) -> m.SyscallReply:
        self.sent.append(msg)
        return self.reply(msg) if self.reply else m.SyscallReply(id=msg.id)


def test_messages_and_results() -> None:
    t = Transport(lambda msg: m.SyscallReply(id=msg.id, data=b"v", number=1, names=["a", "b"]))
    s = Syscalls(t)
    assert s.storage_get("k") == b"v"
    assert s.storage_list("p") == ["a", "b"]
    assert s.storage_delete("k") is True
    assert s.time_ns() == 1
    s.log(99, "x" * 10_000)
    assert [type(x) for x in t.sent] == [m.SysStorageGet, m.SysStorageList, m.SysStorageDelete, m.SysTime, m.SysLog]
    assert t.sent[-1].level == 50 and len(t.sent[-1].message) == m.MAX_TEXT
    assert [x.id for x in t.sent] == [1, 2, 3, 4, 5]
    assert s.statistics() == (5, 0)


def test_absent_key_is_none() -> None:
    assert Syscalls(Transport(lambda msg: m.SyscallReply(id=msg.id, number=0))).storage_get("k") is None


def test_denied_and_error_codes() -> None:
    s = Syscalls(Transport(lambda msg: m.SyscallReply(id=msg.id, code=ResultCode.INVALID_REQUEST, denied=True)))
    with pytest.raises(CapabilityDenied) as ei:
        s.random(4)
    assert ei.value.code == ResultCode.INVALID_REQUEST
    s = Syscalls(Transport(lambda msg: m.SyscallReply(id=msg.id, code=ResultCode.INVALID_ADDRESS)))
    with pytest.raises(InvalidAddress):
        s.grant_write(1, 0, b"x")
    assert s.statistics().failures == 1


@pytest.mark.parametrize(
    "code, cls",
    [(ResultCode.BUSY, Busy), (ResultCode.PROTOCOL_BASE + 6, ProtocolError), (0x1234, RequestError)],
)
def test_error_for_code(code: int, cls: type) -> None:
    exc = error_for_code(code)
    assert type(exc) is cls and exc.code == code

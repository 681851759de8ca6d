"""Kernel syscall handler: capability checks, storage namespaces, derived keys, fuzzing."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.ipc import GrantTable, Providers, SyscallHandler
from svsm.sdk import module_report_data
from svsm.sdk import ResultCode
from svsm.sdk.abi import SYSCALLS, Channel, MalformedFrame
from svsm.sdk.abi import _messages as m
from svsm.sdk.testing import FakeClock, FakeGuestMemory

ALL = frozenset({"log", "random", "time", "storage", "attest", "derive_key", "grant", "disk"})


def handler(caps: frozenset[str] = ALL, name: str = "mod", **prov: object) -> SyscallHandler:
    providers = Providers(rng=lambda n: b"\x5a" * n, key_root=b"k" * 32, **prov)  # type: ignore[arg-type]
    return SyscallHandler(name, caps, b"\x11" * 48, providers)


def test_denied_without_capability_is_a_strike() -> None:
    h = handler(frozenset({"log"}))
    reply, strike = h.handle(m.SysRandom(id=3, size=4))
    assert (reply.id, reply.code, reply.denied, strike) == (3, ResultCode.INVALID_REQUEST, True, True)
    reply, strike = h.handle(m.SysLog(id=4, level=20, message="hi"))
    assert (reply.code, strike) == (0, False)
    assert h.statistics().denied == 1


def test_random_time() -> None:
    clock = FakeClock()
    h = handler(clock=clock.time_ns)
    assert h.handle(m.SysRandom(id=1, size=5))[0].data == b"\x5a" * 5
    clock.advance(2)
    assert h.handle(m.SysTime(id=2))[0].number == clock.time_ns()


def test_storage_is_namespaced() -> None:
    shared = Providers()
    a = SyscallHandler("a", ALL, b"\0" * 48, shared)
    b = SyscallHandler("b", ALL, b"\0" * 48, shared)
    a.handle(m.SysStoragePut(id=1, key="x", value=b"A"))
    assert b.handle(m.SysStorageGet(id=2, key="x"))[0].number == 0
    got = a.handle(m.SysStorageGet(id=3, key="x"))[0]
    assert (got.number, got.data) == (1, b"A")
    a.handle(m.SysStoragePut(id=4, key="y", value=b""))
    assert a.handle(m.SysStorageList(id=5, prefix=""))[0].names == ["x", "y"]
    assert a.handle(m.SysStorageDelete(id=6, key="x"))[0].number == 1
    assert a.handle(m.SysStorageDelete(id=7, key="x"))[0].number == 0


def test_derived_key_depends_on_identity_and_context() -> None:
    k1 = handler(name="a").handle(m.SysDerivedKey(id=1, context=b"c"))[0].data
    assert len(k1) == 32
    assert handler(name="a").handle(m.SysDerivedKey(id=1, context=b"c"))[0].data == k1
    assert handler(name="b").handle(m.SysDerivedKey(id=1, context=b"c"))[0].data != k1
    assert handler(name="a").handle(m.SysDerivedKey(id=1, context=b"d"))[0].data != k1
    other = SyscallHandler("a", ALL, b"\x22" * 48, Providers(key_root=b"k" * 32))
    assert other.handle(m.SysDerivedKey(id=1, context=b"c"))[0].data != k1


def test_report_without_psp_and_with_one() -> None:
    assert handler().handle(m.SysReport(id=1, report_data=b"\0" * 64))[0].code == ResultCode.UNSUPPORTED_CALL
    h = handler(report=lambda rd: b"R" + rd)
    got = h.handle(m.SysReport(id=1, report_data=b"\1" * 64))[0].data
    # domain-separated: never the module's bytes verbatim, bound to its name and code measurement
    assert got == b"R" + module_report_data("mod", b"\x11" * 48, b"\1" * 64)
    assert got != b"R" + b"\1" * 64
    other = handler(name="other", report=lambda rd: b"R" + rd)
    assert other.handle(m.SysReport(id=1, report_data=b"\1" * 64))[0].data != got


def test_grants_window_and_revocation() -> None:
    mem = FakeGuestMemory(0x4000)
    mem.write(0x2000, b"hello")
    h = handler()
    gid = h.grants.create(mem, 0x2000, 16, True)
    assert h.handle(m.SysGrantMap(id=1, grant=gid))[0].data[:5] == b"hello"
    assert h.handle(m.SysGrantWrite(id=2, grant=gid, offset=12, data=b"abcd"))[0].code == 0
    assert mem.read(0x200C, 4) == b"abcd"
    outside = h.handle(m.SysGrantWrite(id=3, grant=gid, offset=13, data=b"abcd"))[0]
    assert outside.code == ResultCode.INVALID_ADDRESS
    assert mem.read(0x2010, 1) == b"\0"
    h.grants.revoke(gid)
    assert h.handle(m.SysGrantMap(id=4, grant=gid))[0].code == ResultCode.INVALID_REQUEST
    ro = h.grants.create(mem, 0x2000, 16, False)
    assert h.handle(m.SysGrantWrite(id=5, grant=ro, offset=0, data=b"x"))[0].code == ResultCode.INVALID_PARAMETER


def test_disk_absent() -> None:
    assert handler().handle(m.SysDiskSize(id=1))[0].code == ResultCode.UNSUPPORTED_CALL


def test_every_syscall_has_a_capability_and_handler() -> None:
    h = handler()
    assert set(h._table) == set(SYSCALLS)


_syscall_dicts = st.fixed_dictionaries(
    {"t": st.sampled_from([c.__struct_config__.tag for c in SYSCALLS]), "id": st.integers(0, 2**32 - 1)},
    optional={
        "size": st.integers(-5, 70_000),
        "level": st.integers(-1, 60),
        "message": st.text(max_size=50),
        "key": st.text(max_size=300),
        "value": st.binary(max_size=64),
        "prefix": st.text(max_size=10),
        "report_data": st.binary(max_size=70),
        "context": st.binary(max_size=300),
        "grant": st.integers(0, 5),
        "offset": st.integers(0, 2**33),
        "data": st.binary(max_size=64),
    },
)


@settings(max_examples=300, deadline=None)
@given(_syscall_dicts, st.sets(st.sampled_from(sorted(ALL))))
def test_fuzz_decode_then_handle(raw: dict, caps: set[str]) -> None:
    """Arbitrary syscall frames: either rejected by the decoder or answered with a reply; nothing else."""
    import struct

    mem = FakeGuestMemory(0x2000)
    h = handler(frozenset(caps), report=lambda rd: rd)
    h.grants.create(mem, 0x1000, 32, True)
    chan = Channel("kernel")
    body = msgspec.msgpack.encode(raw)
    chan.receive_data(struct.pack("<I", len(body)) + body)
    try:
        msg = chan.next_event()
    except MalformedFrame:
        return
    reply, _ = h.handle(msg)
    assert isinstance(reply, m.SyscallReply) and reply.id == raw["id"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_through_decoder_and_handler(data: bytes) -> None:
    import struct

    h = handler()
    chan = Channel("kernel")
    chan.receive_data(struct.pack("<I", len(data)) + data)
    try:
        msg = chan.next_event()
    except MalformedFrame:
        return
    if type(msg) in h._table:
        assert isinstance(h.handle(msg)[0], m.SyscallReply)


def test_grant_table_statistics() -> None:
    t = GrantTable()
    g = t.create(FakeGuestMemory(), 0, 8, False)
    t.unmap(g)
    with pytest.raises(Exception) as ei:
        t.unmap(g)
    assert getattr(ei.value, "code", None) == ResultCode.INVALID_REQUEST
    assert t.statistics() == (1, 0, 1, 1)


def test_volatile_storage_quota() -> None:
    from svsm.kernel.ipc import VolatileStorage

    st = VolatileStorage(max_bytes=100, max_keys=3)
    st.put("a", "k1", b"x" * 90)
    with pytest.raises(Exception) as ei:
        st.put("a", "k2", b"x" * 20)
    assert getattr(ei.value, "code", None) == ResultCode.INVALID_REQUEST
    st.put("a", "k1", b"y" * 98)  # replacing counts only the difference
    st.put("b", "k", b"z" * 90)  # quotas are per namespace
    assert st.delete("a", "k1") and not st.delete("a", "k1")
    for i in range(3):
        st.put("a", f"n{i}", b"")
    with pytest.raises(Exception):
        st.put("a", "n3", b"")


def test_host_io_errors_become_error_replies() -> None:
    class BrokenDisk:
        def read(self, offset: int, size: int) -> bytes:
            raise OSError(5, "EIO")

        def write(self, offset: int, data: bytes) -> None:
            raise OSError(28, "ENOSPC")

        def flush(self) -> None:
            return None

        def size(self) -> int:
            return 4096

    h = handler(disk=BrokenDisk())
    assert h.handle(m.SysDiskRead(id=1, offset=0, size=8))[0].code == ResultCode.INVALID_REQUEST
    assert h.handle(m.SysDiskSize(id=2))[0].number == 4096


def test_block_disk_byte_ranges() -> None:
    from svsm.kernel.ipc import MemoryDisk

    d = MemoryDisk(3 * 4096)
    d.write(4090, b"abcdefghij")  # spans two blocks
    assert d.read(4088, 14) == b"\0\0abcdefghij\0\0"
    d.write(4096, b"\1" * 4096)  # a whole block
    assert d.read(4096, 4) == b"\1\1\1\1" and d.read(4090, 6) == b"abcdef"
    with pytest.raises(Exception) as ei:
        d.read(3 * 4096 - 1, 2)
    assert getattr(ei.value, "code", None) == ResultCode.INVALID_PARAMETER

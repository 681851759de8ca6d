"""Hostile modules in real sandboxed processes: every attack is contained, the kernel keeps serving.

The module classes live in this file; each sandboxed process imports it again by path
(after the sandbox is in force), which also exercises test-defined modules in process mode.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import socket
import struct
import time
from typing import Any

import msgspec
import pytest

from svsm.sdk import BufferSpec, CallSpec, Manifest, Module, ProtocolSpec, Reply, ResultCode, hookimpl

pytestmark = pytest.mark.slow

BASE = 0x4000_0100
SECRET = "/tmp/svsm-hostile-secret.txt"
OUTSIDE_WRITE = "/tmp/svsm-hostile-write.txt"


def _blocked(fn: Any) -> tuple[int, int]:
    """(1, errno) if ``fn`` failed with an OSError, (0, 0) if the attack worked."""
    try:
        fn()
    except OSError as exc:
        return 1, exc.errno or 0
    return 0, 0


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _ptrace() -> None:
    libc = _libc()
    if libc.ptrace(16, os.getppid(), None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")


def _process_vm_readv() -> None:
    libc = _libc()
    buf = ctypes.create_string_buffer(64)

    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    local = iovec(ctypes.cast(buf, ctypes.c_void_p), 64)
    remote = iovec(0x400000, 64)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(310, os.getppid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) < 0:
        raise OSError(ctypes.get_errno(), "process_vm_readv")


def _read(path: str) -> None:
    with open(path, "rb") as f:
        f.read(16)


def _write_outside() -> None:
    with open(OUTSIDE_WRITE, "w") as f:
        f.write("pwned")


def _fork() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _exec() -> None:
    os.execv("/bin/true", ["/bin/true"])


def _kill_kernel() -> None:
    os.kill(os.getppid(), 0)


ATTACKS = [
    lambda: _read(f"/proc/{os.getppid()}/mem"),
    lambda: _read(f"/proc/{os.getppid()}/environ"),
    _ptrace,
    _process_vm_readv,
    lambda: _read(SECRET),
    _write_outside,
    lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
    lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
    _exec,
    _fork,
    _kill_kernel,
    lambda: _read("/etc/shadow"),
    lambda: os.listdir(".."),  # the other modules' private directories
    lambda: _read("/proc/self/environ"),  # the spawn environment (empty anyway): /proc is out of reach
]


class Prober(Module):
    """Call n runs attack n; RCX=1 means it was blocked, RDX the errno."""

    MANIFEST = Manifest(
        name="prober",
        version="1",
        protocols=[ProtocolSpec(number=BASE, calls=[CallSpec(call=i) for i in range(len(ATTACKS) + 1)])],
        capabilities=["log"],
    )

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        if request.call == len(ATTACKS):  # the private directory is usable
            with open("scratch", "wb") as f:
                f.write(b"ok")
            return Reply(rcx=len(os.listdir(".")), rdx=len(os.environ))
        blocked, err = _blocked(ATTACKS[request.call])
        return Reply(rcx=blocked, rdx=err)


class Spinner(Module):
    MANIFEST = Manifest(
        name="spinner",
        version="1",
        protocols=[ProtocolSpec(number=BASE + 1, calls=[CallSpec(call=0)])],
        request_timeout=0.5,
    )

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        while request.rcx:
            pass
        return Reply(rcx=7)


class Hog(Module):
    MANIFEST = Manifest(name="hog", version="1", protocols=[ProtocolSpec(number=BASE + 2, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        chunks = []
        while True:
            chunks.append(bytearray(64 << 20))  # until RLIMIT_AS says no


def _channel_socket() -> socket.socket:
    return next(o for o in gc.get_objects() if isinstance(o, socket.socket) and o.fileno() >= 0)


class Framer(Module):
    """Writes raw frames onto its own channel: malformed, wrong-typed, out of order, oversized."""

    MANIFEST = Manifest(
        name="framer", version="1", protocols=[ProtocolSpec(number=BASE + 3, calls=[CallSpec(call=i) for i in range(3)])]
    )

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        sock = _channel_socket()
        frames = []
        if request.call == 0:
            frames = [
                b"\x93\x01\x02",  # msgpack, not a message
                msgspec.msgpack.encode({"t": "ret", "id": "x"}),  # wrong type
                msgspec.msgpack.encode({"t": "s.log", "id": 1, "level": 10, "message": "x" * 10_000}),  # over bound
                msgspec.msgpack.encode({"t": "ret", "id": 999_999}),  # out of order
            ]
            for body in frames:
                sock.sendall(struct.pack("<I", len(body)) + body)
            return Reply(rcx=len(frames))
        if request.call == 1:  # keep misbehaving: more strikes than allowed
            for _ in range(20):
                sock.sendall(struct.pack("<I", 3) + b"\xc1\xc1\xc1")
            return Reply(rcx=1)
        sock.sendall(struct.pack("<I", 0xFFFF_FFFF) + b"\0" * 1000)  # huge: kernel skips, then times out
        return Reply(rcx=2)


class Deaf(Module):
    """Floods syscalls and never reads the replies: the kernel's writes must not block past the deadline."""

    MANIFEST = Manifest(
        name="deaf",
        version="1",
        protocols=[ProtocolSpec(number=BASE + 5, calls=[CallSpec(call=0)])],
        capabilities=["time"],
        request_timeout=1.0,
    )

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        sock = _channel_socket()
        frame = msgspec.msgpack.encode({"t": "s.time", "id": 1})
        burst = (struct.pack("<I", len(frame)) + frame) * 1000
        sock.settimeout(5)
        try:
            for _ in range(200):
                sock.sendall(burst)
        except OSError:
            pass
        time.sleep(30)
        return Reply()


class Thief(Module):
    """Syscalls it was not granted, and guest memory outside its grant."""

    MANIFEST = Manifest(
        name="thief",
        version="1",
        protocols=[
            ProtocolSpec(
                number=BASE + 4,
                calls=[
                    CallSpec(call=0),
                    CallSpec(call=1, buffer=BufferSpec(size=64, writable=True, mode="grant")),
                ],
            )
        ],
        capabilities=["grant", "attest", "disk"],
    )
    old_grant = 0

    @hookimpl
    def svsm_handle_request(self, request: Any, ctx: Any) -> Reply:
        sys = ctx.syscalls
        codes = []
        for attempt in (
            lambda: sys.derived_key(b"x"),
            lambda: sys.storage_get("k"),
            lambda: sys.grant_write(request.grant.id, 60, b"12345") if request.grant else sys.grant_map(1),
            lambda: sys.grant_map(request.grant.id + 1) if request.grant else sys.grant_map(2),
            lambda: sys.grant_map(Thief.old_grant),
        ):
            try:
                attempt()
                codes.append(0)
            except Exception as exc:
                codes.append(getattr(exc, "code", 1))
        if request.grant:
            Thief.old_grant = request.grant.id
        return Reply(rcx=sum(c != 0 for c in codes), rdx=codes[2] if len(codes) > 2 else 0)


class Echo(Module):
    MANIFEST = Manifest(name="bystander", version="1", protocols=[ProtocolSpec(number=BASE + 9, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_handle_request(self, request: Any) -> Reply:
        return Reply(rcx=request.rcx ^ 0xFF)


@pytest.fixture(scope="module")
def secret_file() -> Any:
    with open(SECRET, "w") as f:
        f.write("kernel secret")
    os.chmod(SECRET, 0o644)  # even world-readable: Landlock keeps it out of reach
    yield SECRET
    os.unlink(SECRET)
    if os.path.exists(OUTSIDE_WRITE):
        os.unlink(OUTSIDE_WRITE)


def _alive(h: Any) -> None:
    assert h.call(BASE + 9, 0, rcx=0x0F).rcx == 0xF0, "the bystander module stopped being served"


def test_escape_attempts_are_blocked(svsm_module_host: Any, secret_file: str) -> None:
    h = svsm_module_host(Prober, Echo, mode="process")
    info = {i.name: i for i in h.modules()}
    for p in ("fds", "env", "landlock", "seccomp", "no-new-privs", "rlimit-as"):
        assert p in info["prober"].protections
    if os.geteuid() == 0:
        assert {"uid", "no-caps"} & set(info["prober"].protections)
    for n in range(len(ATTACKS)):
        out = h.call(BASE, n)
        assert out.rax == 0, f"attack {n} broke the module: {h.module('prober').last_failure}"
        assert out.rcx == 1, f"attack {n} was not blocked"
        assert out.rdx in (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.ESRCH), (n, out.rdx)
    assert not os.path.exists(OUTSIDE_WRITE)
    usable = h.call(BASE, len(ATTACKS))
    assert (usable.rax, usable.rcx, usable.rdx) == (0, 1, 0)  # its private dir works; environment empty
    _alive(h)


def test_spin_and_memory_exhaustion_are_contained(svsm_module_host: Any) -> None:
    h = svsm_module_host(Spinner, Hog, Echo, mode="process")
    assert h.call(BASE + 1, 0, rcx=1).rax == ResultCode.BUSY
    assert "deadline" in h.module("spinner").last_failure
    _alive(h)
    assert h.call(BASE + 2, 0).rax in (ResultCode.INVALID_REQUEST, ResultCode.BUSY)  # MemoryError or killed
    _alive(h)
    assert h.wait_module_ready("spinner", 30)
    assert h.call(BASE + 1, 0, rcx=0).rcx == 7


def test_malformed_frames_get_error_replies_then_the_module_is_stopped(svsm_module_host: Any, abi_frames: Any) -> None:
    from svsm.sdk.abi import ErrorFrame

    h = svsm_module_host(Framer, Echo, mode="process")
    out = h.call(BASE + 3, 0)
    assert (out.rax, out.rcx) == (0, 4)
    assert len(abi_frames.of_type(ErrorFrame, "out")) == 4
    assert h.module("framer").strikes == 4
    assert h.call(BASE + 3, 1).rax == ResultCode.BUSY  # strike limit: killed
    assert "strikes" in h.module("framer").last_failure
    _alive(h)
    assert h.wait_module_ready("framer", 30)
    assert h.call(BASE + 3, 2).rax == ResultCode.BUSY  # a 4 GiB length prefix: skipped, then the deadline
    _alive(h)


def test_ungranted_syscalls_and_grant_abuse(svsm_module_host: Any) -> None:
    from svsm.sdk.testing import FakeGuestMemory

    h = svsm_module_host(Thief, Echo, mode="process")
    mem = FakeGuestMemory(0x3000)
    out = h.call(BASE + 4, 1, rcx=0x1000, memory=mem)
    assert out.rax == 0 and out.rcx == 5  # all five attempts refused
    assert out.rdx == ResultCode.INVALID_ADDRESS  # write past the 64-byte window
    assert mem.read(0x1040, 8) == b"\0" * 8
    out = h.call(BASE + 4, 1, rcx=0x1000, memory=mem)  # the previous grant is revoked by now
    assert out.rcx == 5
    assert h.module("thief").statistics().denied == 4
    _alive(h)


def test_a_module_that_stops_reading_cannot_stall_the_kernel(svsm_module_host: Any) -> None:
    h = svsm_module_host(Deaf, Echo, mode="process")
    assert h.call(BASE + 5, 0).rax == ResultCode.BUSY
    assert "deadline" in h.module("deaf").last_failure
    _alive(h)


def test_modules_outlive_the_thread_that_started_the_host(svsm_module_host: Any) -> None:
    import threading

    hosts: list[Any] = []
    t = threading.Thread(target=lambda: hosts.append(svsm_module_host(Echo, mode="process")))
    t.start()
    t.join()
    time.sleep(0.3)  # a PDEATHSIG tied to the starting thread would have fired by now
    (h,) = hosts
    _alive(h)
    assert h.module("bystander").statistics().failures == 0


class StuckAtStart(Module):
    MANIFEST = Manifest(name="stuck", version="1", protocols=[ProtocolSpec(number=BASE + 6, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_module_start(self) -> None:
        while True:
            pass


def test_a_module_stuck_in_start_is_disabled_and_others_serve(svsm_module_host: Any) -> None:
    from svsm.kernel.ipc import Limits

    h = svsm_module_host(
        StuckAtStart, Echo, mode="process", limits=Limits(start_timeout=4.0, crash_loop=1)
    )
    _alive(h)
    sup = h.module("stuck")
    for _ in range(600):
        if sup.state.value == "dead":
            break
        time.sleep(0.05)
    assert sup.state.value == "dead" and "deadline" in sup.last_failure
    assert h.call(BASE + 6, 0).rax == ResultCode.UNSUPPORTED_PROTOCOL
    _alive(h)

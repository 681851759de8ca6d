"""The kernel ``vm`` service and the driver that runs a migration in the sandboxed ``migrate`` module.

:func:`run_migration` registers :class:`VmService` on the module host (``register_service("vm")``)
and calls ``host.command("migrate", "source" | "destination", params)``; the module's engine then
reaches the VM (:class:`~._vm.MigratableVm`) and the peer (the TCP socket the kernel owns, since
the sandbox forbids sockets) only through the ops below.  Every payload from the module is
decoded strictly and checked here; a malformed one is ``InvalidParameter``, a broken connection
``InvalidRequest`` -- never a kernel exception.

If the module dies or errs, the kernel cleans up itself: a source that is not fenced stops dirty
logging and resumes its guest; a destination never runs a guest its module did not resume.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

import msgspec

from svsm.sdk import InvalidParameter, InvalidRequest, RequestError

from ._gate import GateState
from ._vm import PAGE, MigratableVm

__all__ = ["MigrationProgress", "VmService", "run_migration", "OPS"]

log = logging.getLogger("svsm.kernel.migration")

#: Most stream bytes one ``recv`` returns, most pages per ``read``/``write``, most chunks per ``digests``.
MAX_RECV = 512 * 1024
MAX_PAGES = 160
MAX_CHUNKS = 16384
#: Dirty-bitmap bytes per ``dirty`` reply (2 Mi frames = 8 GiB of guest memory).
BITMAP_PIECE = 256 * 1024

_enc = msgspec.msgpack.encode
_Page = Annotated[bytes, msgspec.Meta(min_length=PAGE, max_length=PAGE)]
_U32 = Annotated[int, msgspec.Meta(ge=0, lt=1 << 32)]
_U64 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
_WriteReq = msgspec.msgpack.Decoder(tuple[Annotated[list[_U32], msgspec.Meta(max_length=MAX_PAGES)],
                                          Annotated[list[_U64], msgspec.Meta(max_length=MAX_PAGES)],
                                          Annotated[list[_Page | None], msgspec.Meta(max_length=MAX_PAGES)]])  # fmt: skip
_IntReq = msgspec.msgpack.Decoder(_U32)
_ChunksReq = msgspec.msgpack.Decoder(Annotated[list[_U32], msgspec.Meta(max_length=MAX_CHUNKS)])
_HexOrNone = msgspec.msgpack.Decoder(Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")] | None)
_Str = Annotated[str, msgspec.Meta(max_length=32)]
_Num = Annotated[float, msgspec.Meta(ge=0)]
_ProgressReq = msgspec.msgpack.Decoder(tuple[_Str, _U32, _U64, _U64, _U64, _Num, _Num | None])


class MigrationProgress(NamedTuple):
    """A progress event the module reported (``vm`` op ``progress``)."""

    phase: str
    round: int
    round_pages: int
    round_done: int
    bytes: int
    rate: float
    eta: float | None


class VmService:
    """``handler(module, op, payload) -> bytes`` for ``ModuleHost.register_service("vm", ...)``.

    :param vm: the VM being migrated.
    :param stream: the connected socket to the peer (ciphertext only passes through here).
    :param on_progress: called with each :class:`MigrationProgress` the module reports.
    :param module: the only module allowed to use the service.
    """

    def __init__(self, vm: MigratableVm, stream: socket.socket, *, on_progress: Callable[[MigrationProgress], None] | None = None,
                 module: str = "migrate") -> None:  # fmt: skip
        self.vm, self.stream, self.on_progress, self.module = vm, stream, on_progress, module
        self._dirty: bytes = b""
        self._ops: dict[str, Callable[[bytes], bytes]] = {
            "info": lambda p: _enc(vm.info()),
            "attest": lambda p: _enc(list(vm.attest(p))),
            "frames": lambda p: _enc([vm.frames().start, vm.frames().stop]),
            "dirty_start": lambda p: _none(vm.start_dirty_log()),
            "dirty_stop": lambda p: _none(vm.stop_dirty_log()),
            "dirty": self._dirty_op,
            "read": self._read,
            "write": self._write,
            "digest_key": lambda p: _none(vm.set_digest_key(p)),
            "chunks": lambda p: _enc(vm.chunk_count()),
            "chunk_frames": lambda p: _enc(_range(vm.chunk_frames(_IntReq.decode(p)))),
            "digests": lambda p: b"".join(vm.digests(_ChunksReq.decode(p))),
            "pause": lambda p: _enc(vm.pause()),
            "resume": lambda p: _none(vm.resume()),
            "fence": lambda p: _none(vm.fence()),
            "export": lambda p: vm.export_state(),
            "import": lambda p: _none(vm.import_state(p)),
            "fingerprint": self._fingerprint,
            "send": self._send,
            "recv": self._recv,
            "progress": self._progress,
        }

    def __call__(self, module: str, op: str, payload: bytes) -> bytes:
        if module != self.module:
            raise InvalidRequest(f"the vm service serves module {self.module} only")
        fn = self._ops.get(op)
        if fn is None:
            raise InvalidParameter(f"no vm op {op!r}")
        try:
            return fn(payload)
        except (msgspec.DecodeError, msgspec.ValidationError, struct.error) as exc:
            raise InvalidParameter(f"malformed {op} request") from exc
        except (OSError, TimeoutError) as exc:
            raise InvalidRequest(f"peer connection: {exc}") from exc

    def _dirty_op(self, payload: bytes) -> bytes:
        cursor = _IntReq.decode(payload)
        frames = self.vm.frames()
        if cursor == 0:  # a new query: take the hypervisor's log once, hand it out in pieces
            bits = bytearray((len(frames) + 7) // 8)
            for g in self.vm.dirty_frames():
                i = g - frames.start
                bits[i >> 3] |= 1 << (i & 7)
            self._dirty = bytes(bits)
        piece = self._dirty[cursor : cursor + BITMAP_PIECE]
        nxt = cursor + BITMAP_PIECE if cursor + BITMAP_PIECE < len(self._dirty) else None
        return _enc([frames.start + 8 * cursor, piece, nxt])

    def _read(self, payload: bytes) -> bytes:
        n, rem = divmod(len(payload), 4)
        if rem or n > MAX_PAGES:
            raise InvalidParameter("read: 4 bytes per frame, at most 160 frames")
        pages = self.vm.read_pages(struct.unpack(f"<{n}I", payload))
        return _enc([[p[1] for p in pages], [p[2] for p in pages]])

    def _write(self, payload: bytes) -> bytes:
        gfns, states, data = _WriteReq.decode(payload)
        if not len(gfns) == len(states) == len(data):
            raise InvalidParameter("write: ragged page records")
        self.vm.write_pages(zip(gfns, states, data))
        return b""

    def _fingerprint(self, payload: bytes) -> bytes:
        memory = _HexOrNone.decode(payload)
        return _enc(self.vm.fingerprint(memory=memory))

    def _send(self, payload: bytes) -> bytes:
        self.stream.sendall(payload)
        return b""

    def _recv(self, payload: bytes) -> bytes:
        n = _IntReq.decode(payload)
        if not 0 < n <= MAX_RECV:
            raise InvalidParameter("recv: 1..512 KiB")
        return self.stream.recv(n)

    def _progress(self, payload: bytes) -> bytes:
        ev = MigrationProgress(*_ProgressReq.decode(payload))
        if self.on_progress is not None:
            self.on_progress(ev)
        return b""


def _none(_: object) -> bytes:
    return b""


def _range(r: range) -> list[int]:
    return [r.start, r.stop]


def run_migration(
    host: Any,
    vm: MigratableVm,
    stream: socket.socket,
    role: str,
    *,
    ark: bytes,
    allow_measurements: list[bytes] | tuple[bytes, ...] = (),
    max_rounds: int = 8,
    converge_pages: int = 256,
    on_progress: Callable[[MigrationProgress], None] | None = None,
    module: str = "migrate",
) -> dict[str, Any]:
    """Run one end of a migration in the ``migrate`` module of ``host``.

    :param role: ``"source"`` or ``"destination"``.
    :param ark: the AMD root key (PEM) the peer's chain must end in.
    :param allow_measurements: launch measurements accepted besides this SVSM's own.
    :returns: the module's report (``result``: committed / fenced / aborted / in-doubt; ``reason``).
        If the module failed, the report says ``aborted`` (source: guest resumed here unless it
        was fenced, which the report then says) with the failure as ``reason``.
    :raises ValueError: ``role`` is neither.
    :raises KeyError: no ``migrate`` module in ``host``.
    """
    if role not in ("source", "destination"):
        raise ValueError(f"role must be source or destination, not {role!r}")
    params = json.dumps({"ark": ark.decode(), "allow_measurements": [m.hex() for m in allow_measurements],
                         "max_rounds": max_rounds, "converge_pages": converge_pages}).encode()  # fmt: skip
    host.register_service("vm", VmService(vm, stream, on_progress=on_progress, module=module))
    try:
        try:
            out = json.loads(host.command(module, role, params, timeout=None))
            if not isinstance(out, dict) or not isinstance(out.get("result"), str):
                raise ValueError("not a report")
        except RequestError as exc:
            out = {"role": role, "result": "aborted", "reason": f"migrate module failed: {type(exc).__name__}: {exc}"}
        except ValueError:
            out = {"role": role, "result": "aborted", "reason": "migrate module returned a malformed report"}
    finally:
        host.unregister_service("vm")
    if role == "source" and out.get("result") not in ("committed", "fenced"):
        if vm.fenced:
            out["result"] = "fenced"
        else:
            _restore_source(vm)
    elif role == "destination" and out.get("result") != "committed" and vm.gate.state is GateState.RUNNING:
        out["result"] = "committed"  # the module resumed the guest (Commit seen) and then failed
    return out


def _restore_source(vm: MigratableVm) -> None:
    """Whatever the module did, an unfenced source runs its guest again."""
    vm.stop_dirty_log()
    if vm.gate.state is not GateState.RUNNING:
        try:
            vm.resume()
        except RequestError:
            log.exception("could not resume the guest after a failed migration")

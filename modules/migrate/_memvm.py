"""An in-memory :class:`~._port.VmPort`: the engine's test double (and a reference for ports).

Guest memory is a dict of frames; a "guest" writes through :meth:`MemoryVm.guest_write`, which
the "hypervisor" logs unless the frame is in :attr:`MemoryVm.hide_dirty` (a lying dirty log).
Pause/resume/fence follow the same rules as the kernel's run gate.  Evidence comes from the
``attester`` given (tests use the simulated PSP).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from svsm.sdk import InvalidParameter, InvalidRequest

from ._policy import migration_report_data
from ._port import Page

__all__ = ["MemoryVm"]

_PAGE = 4096


class MemoryVm:
    """A VM of ``frames`` pages held in a dict.

    :param frames: number of guest frames.
    :param attester: ``attester(report_data) -> (report, ark, ask, vcek)``.
    :param chunk_pages: frames per digest chunk.
    :param modules: module names (shape check) and their states.
    """

    def __init__(self, frames: int, attester: Callable[[bytes], tuple[bytes, bytes, bytes, bytes]], *,
                 chunk_pages: int = 16, modules: dict[str, bytes] | None = None, paused: bool = False) -> None:  # fmt: skip
        self.n = frames
        self._attester = attester
        self.chunk_pages = chunk_pages
        self.pages: dict[int, tuple[int, bytes | None]] = {}
        self.registers: dict[str, int] = {"rip": 0, "rax": 0}
        self.modules = dict(modules or {})
        self.hide_dirty: set[int] = set()
        self._dirty: set[int] | None = None
        self._lock = threading.Lock()
        self.state = "paused" if paused else "running"
        self.resumes = self.pauses = 0

    # -- the guest and the hypervisor ----------------------------------------------------------------
    def guest_write(self, gfn: int, data: bytes, state: int = 1) -> None:
        """The guest writes a page (refused unless running)."""
        with self._lock:
            if self.state != "running":
                raise InvalidRequest(f"guest is {self.state}")
            self.pages[gfn] = (state, data if data != bytes(_PAGE) else None)
            if self._dirty is not None:
                self._dirty.add(gfn)

    def info(self) -> dict[str, Any]:
        """:meth:`VmPort.info` on the dict."""
        return {"memory_size": self.n * _PAGE, "guest_frames": self.n, "vcpus": 1, "guest_vmpl": 2,
                "modules": sorted(self.modules), "measurement": ""}  # fmt: skip

    def attest(self, report_data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """:meth:`VmPort.attest` on the dict (the attester signs the labelled binding, as the kernel does)."""
        return self._attester(migration_report_data(report_data))

    def frames(self) -> range:
        """:meth:`VmPort.frames` on the dict."""
        return range(self.n)

    def start_dirty_log(self) -> None:
        """:meth:`VmPort.start_dirty_log` on the dict."""
        with self._lock:
            self._dirty = set()

    def dirty_frames(self) -> set[int]:
        """:meth:`VmPort.dirty_frames` on the dict."""
        with self._lock:
            if self._dirty is None:
                raise InvalidRequest("dirty logging is off")
            out, self._dirty = self._dirty - self.hide_dirty, set()
            return out

    def stop_dirty_log(self) -> None:
        """:meth:`VmPort.stop_dirty_log` on the dict."""
        with self._lock:
            self._dirty = None

    # -- pages ---------------------------------------------------------------------------------------
    def read_pages(self, gfns: Sequence[int]) -> list[Page]:
        """:meth:`VmPort.read_pages` on the dict."""
        with self._lock:
            out = []
            for g in gfns:
                if not 0 <= g < self.n:
                    raise InvalidParameter("not a guest frame")
                state, data = self.pages.get(g, (0, None))
                out.append((g, state, data))
            return out

    def write_pages(self, pages: Iterable[Page]) -> None:
        """:meth:`VmPort.write_pages` on the dict."""
        with self._lock:
            for g, state, data in pages:
                if not 0 <= g < self.n or (data is not None and len(data) != _PAGE):
                    raise InvalidParameter("malformed page record")
                if state or data is not None:
                    self.pages[g] = (state, data)
                else:
                    self.pages.pop(g, None)

    def set_digest_key(self, key: bytes) -> None:
        """:meth:`VmPort.set_digest_key`: recorded (this VM's digests stay plain SHA-256)."""
        if len(key) != 32:
            raise InvalidParameter("digest key must be 32 bytes")
        self.digest_key = bytes(key)

    def chunk_count(self) -> int:
        """:meth:`VmPort.chunk_count` on the dict."""
        return -(-self.n // self.chunk_pages)

    def chunk_frames(self, chunk: int) -> range:
        """:meth:`VmPort.chunk_frames` on the dict."""
        if not 0 <= chunk < self.chunk_count():
            raise InvalidParameter("no such chunk")
        return range(chunk * self.chunk_pages, min((chunk + 1) * self.chunk_pages, self.n))

    def digests(self, chunks: Sequence[int] | None = None) -> list[bytes]:
        """:meth:`VmPort.digests` on the dict."""
        out = []
        for c in range(self.chunk_count()) if chunks is None else chunks:
            h = hashlib.sha256(c.to_bytes(8, "little"))
            for g, state, data in self.read_pages(self.chunk_frames(c)):
                h.update(state.to_bytes(4, "little") + (data or b"\0"))
            out.append(h.digest())
        return out

    # -- run state -----------------------------------------------------------------------------------
    def pause(self) -> float:
        """:meth:`VmPort.pause` on the dict."""
        with self._lock:
            if self.state == "fenced":
                raise InvalidRequest("fenced")
            self.state = "paused"
            self.pauses += 1
        return 0.0

    def resume(self) -> None:
        """:meth:`VmPort.resume` on the dict."""
        with self._lock:
            if self.state == "fenced":
                raise InvalidRequest("fenced: the guest runs elsewhere")
            self.state = "running"
            self.resumes += 1

    def fence(self) -> None:
        """:meth:`VmPort.fence` on the dict."""
        with self._lock:
            self.state = "fenced"

    def export_state(self) -> bytes:
        """:meth:`VmPort.export_state` on the dict."""
        return msgspec.msgpack.encode({"registers": self.registers, "modules": self.modules})

    def import_state(self, blob: bytes) -> None:
        """:meth:`VmPort.import_state` on the dict."""
        try:
            st = msgspec.msgpack.decode(blob, type=dict[str, dict[str, Any]])
        except (msgspec.MsgspecError, ValueError) as exc:
            raise InvalidParameter("malformed machine state") from exc
        self.registers = dict(st["registers"])
        self.modules = dict(st["modules"])

    def fingerprint(self, digests: Sequence[bytes] | None = None) -> dict[str, str]:
        """:meth:`VmPort.fingerprint` on the dict."""
        d = self.digests() if digests is None else digests
        return {"memory": hashlib.sha256(b"".join(d)).hexdigest(),
                "state": hashlib.sha256(self.export_state()).hexdigest()}  # fmt: skip

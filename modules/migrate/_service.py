"""The engine's ``VmPort`` and ``Stream`` over the kernel's ``vm`` service (the sandboxed path).

In the module process nothing but syscalls reaches the machine: every :class:`~._port.VmPort`
method is one or a few ``ctx.syscalls.service("vm", op, payload)`` calls, and the byte stream
to the peer is relayed by the kernel (which owns the TCP socket; the sandbox forbids sockets).
Payloads are msgpack (formats in docs/migration.md, "The vm service"); pages, digests, dirty
bitmaps and stream bytes are split so that no payload or reply exceeds the ABI's blob cap.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from ._port import Page

__all__ = ["SERVICE", "ServicePort", "ServiceStream", "PAGES_PER_CALL", "STREAM_PIECE", "DIGESTS_PER_CALL"]

#: The kernel service's name (the manifest's ``services`` entry; capability ``svc:vm``).
SERVICE = "vm"
#: Pages per ``read``/``write`` call.  The ABI allows 768 KiB, but frames above ~200 KiB cost
#: disproportionately on the module channel (measured: 128 KiB 2.5 GB/s, 512 KiB 0.2-0.7 GB/s).
PAGES_PER_CALL = 40
#: Stream bytes per ``send``/``recv`` call.
STREAM_PIECE = 160 * 1024
#: Chunks per ``digests`` call (32 bytes each).
DIGESTS_PER_CALL = 16384

_enc = msgspec.msgpack.encode
_dec = msgspec.msgpack.decode

Service = Callable[[str, str, bytes], bytes]


class ServicePort:
    """A :class:`~._port.VmPort` whose every call is a ``vm`` service op.

    :param service: ``ctx.syscalls.service`` (``service(name, op, payload) -> bytes``).
    """

    def __init__(self, service: Service) -> None:
        self._svc = service
        self._frames: range | None = None
        self._chunks: int | None = None

    def _call(self, op: str, payload: bytes = b"") -> bytes:
        return self._svc(SERVICE, op, payload)

    def info(self) -> dict[str, Any]:
        return _dec(self._call("info"))

    def attest(self, report_data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        report, ark, ask, vcek = _dec(self._call("attest", bytes(report_data)))
        return report, ark, ask, vcek

    def frames(self) -> range:
        if self._frames is None:
            start, stop = _dec(self._call("frames"))
            self._frames = range(start, stop)
        return self._frames

    def start_dirty_log(self) -> None:
        self._call("dirty_start")

    def stop_dirty_log(self) -> None:
        self._call("dirty_stop")

    def dirty_frames(self) -> set[int]:
        out: set[int] = set()
        cursor: int | None = 0
        while cursor is not None:
            base, bitmap, cursor = _dec(self._call("dirty", _enc(cursor)))
            n = int.from_bytes(bitmap, "little")
            while n:
                low = n & -n
                out.add(base + low.bit_length() - 1)
                n ^= low
        return out

    def read_pages(self, gfns: Sequence[int]) -> list[Page]:
        out: list[Page] = []
        for i in range(0, len(gfns), PAGES_PER_CALL):
            part = gfns[i : i + PAGES_PER_CALL]
            states, data = _dec(self._call("read", struct.pack(f"<{len(part)}I", *part)))
            out += zip(part, states, data)
        return out

    def write_pages(self, pages: Iterable[Page]) -> None:
        pages = list(pages)
        for i in range(0, len(pages), PAGES_PER_CALL):
            part = pages[i : i + PAGES_PER_CALL]
            self._call("write", _enc([[p[0] for p in part], [p[1] for p in part], [p[2] for p in part]]))

    def set_digest_key(self, key: bytes) -> None:
        self._call("digest_key", bytes(key))

    def chunk_count(self) -> int:
        if self._chunks is None:
            self._chunks = int(_dec(self._call("chunks")))
        return self._chunks

    def chunk_frames(self, chunk: int) -> range:
        start, stop = _dec(self._call("chunk_frames", _enc(chunk)))
        return range(start, stop)

    def digests(self, chunks: Sequence[int] | None = None) -> list[bytes]:
        todo = list(range(self.chunk_count())) if chunks is None else list(chunks)
        out: list[bytes] = []
        for i in range(0, len(todo), DIGESTS_PER_CALL):
            blob = self._call("digests", _enc(todo[i : i + DIGESTS_PER_CALL]))
            out += [blob[j : j + 32] for j in range(0, len(blob), 32)]
        return out

    def pause(self) -> float:
        return float(_dec(self._call("pause")))

    def resume(self) -> None:
        self._call("resume")

    def fence(self) -> None:
        self._call("fence")

    def export_state(self) -> bytes:
        return self._call("export")

    def import_state(self, blob: bytes) -> None:
        self._call("import", blob)

    def fingerprint(self, digests: Sequence[bytes] | None = None) -> dict[str, str]:
        memory = None if digests is None else hashlib.sha256(b"".join(digests)).hexdigest()
        return _dec(self._call("fingerprint", _enc(memory)))

    def progress(self, ev: Any) -> None:
        """Report one progress event to the kernel (its progress bar)."""
        self._call("progress", _enc([ev.phase, ev.round, ev.round_pages, ev.round_done, ev.bytes, ev.rate, ev.eta]))


class ServiceStream:
    """The peer byte stream (:class:`~._port.Stream`), relayed by the kernel's ``vm`` service."""

    def __init__(self, service: Service) -> None:
        self._svc = service

    def sendall(self, data: bytes, /) -> None:
        view = memoryview(data)
        for i in range(0, len(view), STREAM_PIECE):
            self._svc(SERVICE, "send", bytes(view[i : i + STREAM_PIECE]))

    def recv(self, bufsize: int, /) -> bytes:
        return self._svc(SERVICE, "recv", _enc(min(bufsize, STREAM_PIECE)))

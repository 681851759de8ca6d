"""Sans-IO ABI channel: bytes in, typed frames out (h11's ``Connection`` pattern).

Hazardous layer: the module runtime and :mod:`svsm.kernel.ipc` drive it; module
authors never touch frames.  A frame is a 4-byte little-endian length followed by
a msgpack body.  The length is checked against the cap *before* the body is
buffered; an oversized body is skipped (never stored) so the stream stays in sync
and the peer gets an error reply instead of the kernel growing a buffer.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import msgspec

from .._errors import InvalidFormat
from ._messages import MAX_FRAME, KernelMessage, KernelUnion, ModuleMessage, ModuleUnion

__all__ = [
    "AbiError",
    "Channel",
    "ChannelStatistics",
    "FrameTooLarge",
    "MalformedFrame",
    "NEED_DATA",
    "CLOSED",
    "FRAME_HEADER",
    "Recorder",
]

#: The frame header: u32 body length, little-endian.
FRAME_HEADER = struct.Struct("<I")
assert FRAME_HEADER.size == 4


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


#: :meth:`Channel.next_event` needs more bytes.
NEED_DATA = _Sentinel.NEED_DATA
#: The peer closed the stream (``receive_data(b"")``) and every buffered frame was read.
CLOSED = _Sentinel.CLOSED

#: ``recorder(direction, message)``; direction is ``"in"`` or ``"out"`` from this end's view.
Recorder = Callable[[str, Any], None]


class AbiError(InvalidFormat):
    """The peer sent a frame that breaks the ABI.  Answer with an error frame; count a strike."""


class FrameTooLarge(AbiError):
    """A length prefix above the cap; the body is skipped without being buffered."""


class MalformedFrame(AbiError):
    """A body that is not a valid message of the expected direction (msgpack, tag, types, bounds)."""


class ChannelStatistics(NamedTuple):
    """Counters of one channel end."""

    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    rejected: int
    buffered: int


class Channel:
    """One end of the ABI stream; owns no socket.

    :param role: ``"kernel"`` decodes module frames and encodes kernel frames; ``"module"`` the reverse.
    :param max_frame: body cap in bytes, checked before a body is buffered.
    :param recorder: optional observer of every decoded and encoded message (tests record ABI frames).
    """

    def __init__(
        self,
        role: Literal["kernel", "module"],
        *,
        max_frame: int = MAX_FRAME,
        recorder: Recorder | None = None,
    ) -> None:
        if role == "kernel":
            self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(ModuleUnion)
            self._out_type: type = KernelMessage
        elif role == "module":
            self._decoder = msgspec.msgpack.Decoder(KernelUnion)
            self._out_type = ModuleMessage
        else:
            raise ValueError(f"unknown channel role {role!r}")
        self.role = role
        self.max_frame = max_frame
        self._encoder = msgspec.msgpack.Encoder()
        self._recorder = recorder
        self._buf = bytearray()
        self._pos = 0
        self._skip = 0  # bytes of an oversized body still to discard
        self._eof = False
        self._frames_in = self._frames_out = self._bytes_in = self._bytes_out = self._rejected = 0

    # -- input ---------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the peer; ``b""`` means end of stream."""
        if not data:
            self._eof = True
            return
        self._bytes_in += len(data)
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = memoryview(data)[n:]
            if not data:
                return
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def next_event(self) -> Any:
        """Return the next decoded message, :data:`NEED_DATA` or :data:`CLOSED`.

        :raises FrameTooLarge: the next length prefix exceeds :attr:`max_frame`;
            its body will be discarded as it arrives, the stream stays usable.
        :raises MalformedFrame: the next body did not decode; it has been consumed.
        """
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 4 or self._skip:
            return CLOSED if self._eof and not self._skip else NEED_DATA
        (size,) = FRAME_HEADER.unpack_from(buf, pos)
        if size > self.max_frame:
            body = avail - 4
            self._skip = size - min(size, body)
            self._advance(4 + min(size, body))
            self._rejected += 1
            raise FrameTooLarge(f"frame of {size} bytes exceeds cap {self.max_frame}")
        if avail < 4 + size:
            return CLOSED if self._eof else NEED_DATA
        view = memoryview(buf)[pos + 4 : pos + 4 + size]
        try:
            msg = self._decoder.decode(view)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._rejected += 1
            raise MalformedFrame(str(exc)[:200]) from None
        finally:
            view.release()
            self._advance(4 + size)
        self._frames_in += 1
        if self._recorder is not None:
            self._recorder("in", msg)
        return msg

    def buffered(self) -> bool:
        """True if bytes of an unread frame (or a frame being skipped) are held."""
        return bool(self._buf) or bool(self._skip)  # a fully read buffer is always cleared

    def receive_frame(self, data: bytes | bytearray | memoryview) -> Any:
        """:meth:`receive_data` then :meth:`next_event`, for the bytes of one read.

        The hot path: when nothing is buffered and ``data`` is exactly one frame under the cap
        (one call, one read), it is decoded in place without being copied into the buffer.
        Same results and exceptions as the two calls.
        """
        n = len(data)
        if n > 4 and not self._buf and not self._skip:
            (size,) = FRAME_HEADER.unpack_from(data, 0)
            if size + 4 == n and size <= self.max_frame:
                self._bytes_in += n
                view = memoryview(data)[4:]
                try:
                    msg = self._decoder.decode(view)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    self._rejected += 1
                    raise MalformedFrame(str(exc)[:200]) from None
                finally:
                    view.release()
                self._frames_in += 1
                if self._recorder is not None:
                    self._recorder("in", msg)
                return msg
        self.receive_data(data)
        return self.next_event()

    def _advance(self, n: int) -> None:
        self._pos += n
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0

    # -- output --------------------------------------------------------------
    def send(self, msg: Any) -> bytearray:
        """Encode ``msg`` as one frame and return the bytes to write.

        :raises TypeError: ``msg`` is not a message of this end's direction (a local bug).
        :raises FrameTooLarge: the encoded body exceeds :attr:`max_frame` (a local bug: bounds are smaller).
        """
        if not isinstance(msg, self._out_type):
            raise TypeError(f"{self.role} end cannot send {type(msg).__name__}")
        out = bytearray(4)
        self._encoder.encode_into(msg, out, 4)
        size = len(out) - 4
        if size > self.max_frame:
            raise FrameTooLarge(f"outgoing frame of {size} bytes exceeds cap {self.max_frame}")
        FRAME_HEADER.pack_into(out, 0, size)
        self._frames_out += 1
        self._bytes_out += len(out)
        if self._recorder is not None:
            self._recorder("out", msg)
        return out

    def statistics(self) -> ChannelStatistics:
        """Frame and byte counters of this end."""
        return ChannelStatistics(
            self._frames_in,
            self._frames_out,
            self._bytes_in,
            self._bytes_out,
            self._rejected,
            len(self._buf) - self._pos,
        )

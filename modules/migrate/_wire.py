"""Migration messages carried in the channel's sealed records (one tagged union, both directions).

Each message travels in a record whose authenticated type byte is the message's code
(:data:`CODES`), so a record cannot be re-labelled.  Tags and codes are never reused (house
rule 4); every bytes/str/list field is bounded and decoding is strict.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from ._channel import ChannelError

__all__ = [
    "Abort",
    "Begin",
    "CODES",
    "Commit",
    "Committed",
    "Digests",
    "MachineStateMsg",
    "Message",
    "Pages",
    "Prepared",
    "Ready",
    "Resend",
    "RoundEnd",
    "VmShape",
    "decode_message",
    "encode_message",
    "MAX_BATCH",
    "WIRE_VERSION",
]

WIRE_VERSION = 1
#: Most pages in one :class:`Pages` record (4 MiB of payload at most).
MAX_BATCH = 1024
_MAX_CHUNKS = 1 << 20
_Str = Annotated[str, msgspec.Meta(max_length=128)]
_U64 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
_Digest = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
_Fingerprint = Annotated[dict[_Str, _Str], msgspec.Meta(max_length=64)]


class VmShape(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What both ends must agree on before any page moves."""

    memory_size: _U64
    guest_frames: _U64
    vcpus: Annotated[int, msgspec.Meta(ge=1, le=256)]
    guest_vmpl: Annotated[int, msgspec.Meta(ge=1, le=3)]
    modules: Annotated[list[_Str], msgspec.Meta(max_length=32)]


class Begin(msgspec.Struct, frozen=True, tag="begin", forbid_unknown_fields=True):
    """S -> D: the guest's shape and the wire version."""

    version: int
    shape: VmShape


class Ready(msgspec.Struct, frozen=True, tag="ready", forbid_unknown_fields=True):
    """D -> S: the destination fits the guest and waits for pages."""


class Pages(msgspec.Struct, frozen=True, tag="pages", forbid_unknown_fields=True):
    """S -> D: a batch of guest frames: GFN, RMP state word, plaintext (None: all zero)."""

    round: Annotated[int, msgspec.Meta(ge=0, lt=1 << 16)]
    gfns: Annotated[list[_U64], msgspec.Meta(max_length=MAX_BATCH)]
    states: Annotated[list[Annotated[int, msgspec.Meta(ge=0, lt=1 << 32)]], msgspec.Meta(max_length=MAX_BATCH)]
    data: Annotated[list[Annotated[bytes, msgspec.Meta(min_length=4096, max_length=4096)] | None],
                    msgspec.Meta(max_length=MAX_BATCH)]  # fmt: skip


class RoundEnd(msgspec.Struct, frozen=True, tag="round-end", forbid_unknown_fields=True):
    """S -> D: a pre-copy round (or the stop-and-copy pass) is complete."""

    round: Annotated[int, msgspec.Meta(ge=0, lt=1 << 16)]
    pages: _U64
    final: bool = False


class MachineStateMsg(msgspec.Struct, frozen=True, tag="machine-state", forbid_unknown_fields=True):
    """S -> D: VMSAs, keys and module states (the kernel's encoding, opaque here)."""

    blob: Annotated[bytes, msgspec.Meta(max_length=64 << 20)]


class Digests(msgspec.Struct, frozen=True, tag="digests", forbid_unknown_fields=True):
    """S -> D: per-chunk digests of guest memory at stop time (the final check)."""

    chunks: Annotated[list[Annotated[int, msgspec.Meta(ge=0, lt=_MAX_CHUNKS)]], msgspec.Meta(max_length=_MAX_CHUNKS)]
    digests: Annotated[list[_Digest], msgspec.Meta(max_length=_MAX_CHUNKS)]


class Resend(msgspec.Struct, frozen=True, tag="resend", forbid_unknown_fields=True):
    """D -> S: these chunks differ; send all their frames again."""

    chunks: Annotated[list[Annotated[int, msgspec.Meta(ge=0, lt=_MAX_CHUNKS)]], msgspec.Meta(max_length=_MAX_CHUNKS)]


class Prepared(msgspec.Struct, frozen=True, tag="prepared", forbid_unknown_fields=True):
    """D -> S: phase one of the commit -- everything arrived and checks out."""

    fingerprint: _Fingerprint


class Commit(msgspec.Struct, frozen=True, tag="commit", forbid_unknown_fields=True):
    """S -> D: the source is fenced; run the guest."""


class Committed(msgspec.Struct, frozen=True, tag="committed", forbid_unknown_fields=True):
    """D -> S: the guest runs on the destination."""


class Abort(msgspec.Struct, frozen=True, tag="abort", forbid_unknown_fields=True):
    """Either way: give up; the source keeps (or resumes) the guest."""

    reason: _Str


Message = Begin | Ready | Pages | RoundEnd | MachineStateMsg | Digests | Resend | Prepared | Commit | Committed | Abort

#: Record type byte of each message (authenticated by the channel).
CODES: dict[type, int] = {
    Begin: 1, Ready: 2, Pages: 3, RoundEnd: 4, MachineStateMsg: 5, Digests: 6, Resend: 7,
    Prepared: 8, Commit: 9, Committed: 10, Abort: 11,
}  # fmt: skip
assert len(set(CODES.values())) == len(CODES)

_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(Message)


def encode_message(msg: Message) -> tuple[int, bytes]:
    """``(record type, payload)`` for ``msg``."""
    return CODES[type(msg)], _ENC.encode(msg)


def decode_message(type_: int, payload: bytes) -> Message:
    """Decode one record's payload.

    :raises ChannelError: malformed, or the record type does not match the message.
    """
    try:
        msg = _DEC.decode(payload)
    except (msgspec.MsgspecError, ValueError) as exc:  # incl. UnicodeDecodeError (found by fuzzing)
        raise ChannelError("malformed migration message") from exc
    if CODES[type(msg)] != type_:
        raise ChannelError("malformed migration message")
    if isinstance(msg, Pages) and not len(msg.gfns) == len(msg.states) == len(msg.data):
        raise ChannelError("malformed migration message")
    if isinstance(msg, Digests) and len(msg.chunks) != len(msg.digests):
        raise ChannelError("malformed migration message")
    return msg

"""The attested, encrypted channel between a source and a destination SVSM (sans-IO).

Nothing here touches a socket: bytes go in through :meth:`Channel.receive_data`, typed
events come out of :meth:`Channel.next_event`, and :meth:`Channel.send` returns the bytes
to write (h11's shape).  The driver that owns the TCP connection lives elsewhere.

Handshake (``S`` = source/initiator, ``D`` = destination/responder)::

    S -> D  Hello        version, nonce_s, P-384 ECDH public key of S
    D -> S  HelloReply   version, nonce_d, ECDH key of D, evidence of D
    S -> D  SourceAttest evidence of S
    D -> S  Finished     (first sealed record: proves D derived the same keys)

The transcript hash ``T`` is SHA-384 over every handshake frame so far.  D's report binds
``SHA-512(b"pysvsm-migrate/1 dst" || T(Hello, D's key share))`` and S's report binds
``SHA-512(b"pysvsm-migrate/1 src" || T(Hello, HelloReply))``, so each report vouches for
both ephemeral keys and for everything said before it: a man in the middle cannot splice
another SVSM's report into this exchange.  Keys: HKDF-SHA384 over the ECDH secret, salted
with the final transcript hash, gives one AES-256-GCM key per direction.

Records: ``u8 type || u64 seq || ciphertext+tag``.  The nonce is a 4-byte direction
label and the 8-byte sequence number; the header is the AAD.  The receiver only accepts
the next sequence number, so a replayed, reordered or dropped record -- or a single
flipped bit -- aborts the channel for good (there is no resynchronisation on purpose).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import struct
from collections import deque
from collections.abc import Callable
from typing import Annotated, NamedTuple

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from svsm.sdk import InvalidRequest

__all__ = [
    "CHANNEL_VERSION",
    "Channel",
    "ChannelError",
    "ChannelState",
    "ChannelStatistics",
    "Evidence",
    "HandshakeComplete",
    "MAX_FRAME",
    "Record",
    "Role",
]

CHANNEL_VERSION = 1
#: Largest frame either side accepts (checked against the length prefix before buffering).
MAX_FRAME = 16 * 1024 * 1024
_LEN = struct.Struct(">I")
_REC_HDR = struct.Struct(">BQ")
_TAG_LEN = 16
_NONCE_LEN = 32
_P384_POINT = 97  # uncompressed SEC1 point
_PEM_MAX = 16 * 1024
_LABEL = b"pysvsm-migrate/1 "


class ChannelError(InvalidRequest):
    """The peer broke the protocol or the channel was tampered with; migration must abort.

    Every cryptographic failure raises this same class with a deliberately vague message
    (house rule 8): the untrusted network learns nothing about which check failed.
    """


class Role(enum.Enum):
    """Which end of the migration this channel is."""

    SOURCE = "src"
    DESTINATION = "dst"


class ChannelState(enum.Enum):
    """Lifecycle of a channel; transitions are in :data:`_TRANSITIONS`."""

    START = "start"
    SENT_HELLO = "sent-hello"
    SENT_REPLY = "sent-reply"
    SENT_ATTEST = "sent-attest"
    OPEN = "open"
    CLOSED = "closed"
    ABORTED = "aborted"


# (state, role, incoming frame kind) -> next state.  Everything else is a protocol error.
_TRANSITIONS: dict[tuple[ChannelState, Role, str], ChannelState] = {
    (ChannelState.START, Role.DESTINATION, "Hello"): ChannelState.SENT_REPLY,
    (ChannelState.SENT_HELLO, Role.SOURCE, "HelloReply"): ChannelState.SENT_ATTEST,
    (ChannelState.SENT_REPLY, Role.DESTINATION, "SourceAttest"): ChannelState.OPEN,
    (ChannelState.SENT_ATTEST, Role.SOURCE, "record"): ChannelState.OPEN,
    (ChannelState.OPEN, Role.SOURCE, "record"): ChannelState.OPEN,
    (ChannelState.OPEN, Role.DESTINATION, "record"): ChannelState.OPEN,
}

Nonce = Annotated[bytes, msgspec.Meta(min_length=_NONCE_LEN, max_length=_NONCE_LEN)]
Point = Annotated[bytes, msgspec.Meta(min_length=_P384_POINT, max_length=_P384_POINT)]
Pem = Annotated[bytes, msgspec.Meta(max_length=_PEM_MAX)]


class Evidence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An SNP report and the certificates that sign it (ARK and ASK are checked against a pin)."""

    report: Annotated[bytes, msgspec.Meta(max_length=4096)]
    ark_pem: Pem
    ask_pem: Pem
    vcek_pem: Pem


class Hello(msgspec.Struct, frozen=True, tag="Hello", forbid_unknown_fields=True):
    version: int
    nonce: Nonce
    key_share: Point


class HelloReply(msgspec.Struct, frozen=True, tag="HelloReply", forbid_unknown_fields=True):
    version: int
    nonce: Nonce
    key_share: Point
    evidence: Evidence


class SourceAttest(msgspec.Struct, frozen=True, tag="SourceAttest", forbid_unknown_fields=True):
    evidence: Evidence


_Handshake = Hello | HelloReply | SourceAttest
_HS_DECODER = msgspec.msgpack.Decoder(_Handshake)
_ENCODER = msgspec.msgpack.Encoder()

# Frame kinds on the wire: one byte in front of every frame body.
_KIND_HANDSHAKE = 0x01
_KIND_RECORD = 0x02


class ChannelStatistics(NamedTuple):
    """Counters of one :class:`Channel` end."""

    state: str
    records_sent: int
    records_received: int
    bytes_sent: int
    bytes_received: int


@dataclasses.dataclass(frozen=True)
class HandshakeComplete:
    """Event: both sides are attested and keys are in place.

    :ivar peer_report: the peer's verified report (``svsm.sdk.attestation.AttestationReport``).
    :ivar transcript_hash: SHA-384 of the handshake, identical on both ends.
    """

    peer_report: object
    transcript_hash: bytes


@dataclasses.dataclass(frozen=True)
class Record:
    """Event: one authenticated application record.

    :ivar type: application message type (0..255), authenticated.
    :ivar payload: decrypted bytes.
    """

    type: int
    payload: bytes


#: ``attester(report_data) -> Evidence``: asks the local PSP for a report binding ``report_data``.
Attester = Callable[[bytes], Evidence]
#: ``verifier(evidence, expected_report_data) -> report``: raises on any failure.
Verifier = Callable[[Evidence, bytes], object]

_FINISHED = 0xFF


class Channel:
    """One end of the migration channel.

    :param role: :attr:`Role.SOURCE` starts the handshake with :meth:`initiate`.
    :param attester: produces this side's evidence for given report_data.
    :param verifier: checks the peer's evidence (chain, pinned ARK, measurement policy,
        report_data binding) and returns the parsed report; raises on failure.
    :param rng: ``rng(n) -> bytes`` (injected; ``os.urandom`` in production).
    """

    def __init__(self, role: Role, attester: Attester, verifier: Verifier, rng: Callable[[int], bytes]) -> None:
        self.role = role
        self._attester = attester
        self._verifier = verifier
        self._rng = rng
        self.state = ChannelState.START
        self._key = ec.generate_private_key(ec.SECP384R1())
        self._share = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self._nonce = rng(_NONCE_LEN)
        self._transcript = hashlib.sha384()
        self._buf = bytearray()
        self._events: deque[HandshakeComplete | Record] = deque()
        self._send_aead: AESGCM | None = None
        self._recv_aead: AESGCM | None = None
        self._send_seq = 0
        self._recv_seq = 0
        self._peer_share = b""
        self._peer_report: object = None
        #: handshake frames produced while processing input, handed out by :meth:`outgoing`
        self._out = bytearray()
        self._digest_key: bytes | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- framing -----------------------------------------------------------------------
    def _frame(self, kind: int, *parts: bytes) -> bytes:
        size = sum(len(p) for p in parts) + 1
        data = b"".join((_LEN.pack(size), bytes((kind,)), *parts))  # one copy of the body
        self.bytes_sent += len(data)
        return data

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; events become available from :meth:`next_event`.

        :raises ChannelError: malformed, oversized, out-of-order or tampered input.  The
            channel is then :attr:`ChannelState.ABORTED` and refuses everything.
        """
        if self.state is ChannelState.ABORTED:
            raise ChannelError("channel aborted")
        self.bytes_received += len(data)
        self._buf += data
        try:
            while len(self._buf) >= _LEN.size:
                (size,) = _LEN.unpack_from(self._buf)
                if size == 0 or size > MAX_FRAME:
                    raise ChannelError("bad frame length")
                if len(self._buf) < _LEN.size + size:
                    break
                frame = memoryview(bytes(self._buf[_LEN.size : _LEN.size + size]))
                del self._buf[: _LEN.size + size]
                self._on_frame(frame[0], frame[1:])
        except ChannelError:
            self._abort()
            raise
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            self._abort()
            raise ChannelError("malformed frame") from exc

    def next_event(self) -> HandshakeComplete | Record | None:
        """Return the next event, or ``None`` when more data is needed."""
        return self._events.popleft() if self._events else None

    def _abort(self) -> None:
        self.state = ChannelState.ABORTED
        self._send_aead = self._recv_aead = None
        self._buf.clear()
        self._out.clear()

    def _advance(self, kind: str) -> None:
        nxt = _TRANSITIONS.get((self.state, self.role, kind))
        if nxt is None:
            raise ChannelError(f"unexpected {kind} in state {self.state.value}")
        self.state = nxt

    # -- handshake ---------------------------------------------------------------------
    def initiate(self) -> bytes:
        """Source only: return the Hello frame to send first."""
        if self.role is not Role.SOURCE or self.state is not ChannelState.START:
            raise ChannelError("only a fresh source channel initiates")
        body = _ENCODER.encode(Hello(CHANNEL_VERSION, self._nonce, self._share))
        self._transcript.update(body)
        self.state = ChannelState.SENT_HELLO
        return self._frame(_KIND_HANDSHAKE, body)

    def _binding(self, who: bytes) -> bytes:
        return hashlib.sha512(_LABEL + who + self._transcript.copy().digest()).digest()

    def _on_frame(self, kind: int, body: bytes | memoryview) -> None:
        if kind == _KIND_RECORD:
            self._advance("record")
            self._on_record(body)
            return
        if kind != _KIND_HANDSHAKE:
            raise ChannelError("unknown frame kind")
        body = bytes(body)  # handshake frames are small
        msg = _HS_DECODER.decode(body)
        self._advance(type(msg).__name__)
        if isinstance(msg, Hello):
            self._on_hello(msg, body)
        elif isinstance(msg, HelloReply):
            self._on_reply(msg, body)
        else:
            self._on_source_attest(msg, body)

    def _on_hello(self, msg: Hello, body: bytes) -> None:
        if msg.version != CHANNEL_VERSION:
            raise ChannelError("unsupported channel version")
        self._peer_share = msg.key_share
        self._transcript.update(body)
        # D's report binds S's hello and D's own key share and nonce.
        self._transcript.update(self._nonce + self._share)
        evidence = self._attester(self._binding(b"dst"))
        reply = _ENCODER.encode(HelloReply(CHANNEL_VERSION, self._nonce, self._share, evidence))
        self._transcript.update(reply)
        self._out += self._frame(_KIND_HANDSHAKE, reply)

    def _on_reply(self, msg: HelloReply, body: bytes) -> None:
        if msg.version != CHANNEL_VERSION:
            raise ChannelError("unsupported channel version")
        self._peer_share = msg.key_share
        self._transcript.update(msg.nonce + msg.key_share)
        self._peer_report = self._verify(msg.evidence, self._binding(b"dst"))
        self._transcript.update(body)
        evidence = self._attester(self._binding(b"src"))
        attest = _ENCODER.encode(SourceAttest(evidence))
        self._transcript.update(attest)
        self._out += self._frame(_KIND_HANDSHAKE, attest)
        self._derive_keys()

    def _on_source_attest(self, msg: SourceAttest, body: bytes) -> None:
        # The source's binding covers the transcript up to and including HelloReply.
        self._peer_report = self._verify(msg.evidence, self._binding(b"src"))
        self._transcript.update(body)
        self._derive_keys()
        self._out += self.send(_FINISHED, self._transcript.copy().digest())
        self._events.append(HandshakeComplete(self._peer_report, self._transcript.copy().digest()))

    def _verify(self, evidence: Evidence, expected: bytes) -> object:
        try:
            return self._verifier(evidence, expected)
        except ChannelError:
            raise
        except Exception as exc:  # any verifier failure looks the same from outside
            raise ChannelError("peer attestation rejected") from exc

    def _derive_keys(self) -> None:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), self._peer_share)
        secret = self._key.exchange(ec.ECDH(), peer)
        okm = HKDF(
            algorithm=hashes.SHA384(),
            length=96,  # HKDF output is a prefix stream: the first 64 bytes are the record keys as before
            salt=self._transcript.copy().digest(),
            info=_LABEL + b"keys",
        ).derive(secret)
        s2d, d2s = AESGCM(okm[:32]), AESGCM(okm[32:64])
        self._digest_key = okm[64:96]
        if self.role is Role.SOURCE:
            self._send_aead, self._recv_aead = s2d, d2s
        else:
            self._send_aead, self._recv_aead = d2s, s2d

    @property
    def digest_key(self) -> bytes:
        """32 bytes both ends derive from the handshake for the final check's keyed chunk digests.

        Never sent; known only to the two SVSMs (and their migration modules).

        :raises ChannelError: the handshake has not finished.
        """
        key = self._digest_key
        if key is None:
            raise ChannelError("no digest key before the handshake")
        return key

    def outgoing(self) -> bytes:
        """Handshake bytes produced by the last :meth:`receive_data` (empty if none)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- records -----------------------------------------------------------------------
    def _nonce_for(self, direction: Role, seq: int) -> bytes:
        return (b"S2D\0" if direction is Role.SOURCE else b"D2S\0") + seq.to_bytes(8, "big")

    def send(self, type_: int, payload: bytes) -> bytes:
        """Seal one application record.

        :param type_: application message type, 0..254 (255 is the handshake's Finished).
        :returns: the frame bytes to write.
        :raises ChannelError: the channel is not open (or aborted).
        """
        if self._send_aead is None or self.state is ChannelState.ABORTED:
            raise ChannelError("channel not open")
        if self.state is ChannelState.CLOSED:
            raise ChannelError("channel closed")
        hdr = _REC_HDR.pack(type_, self._send_seq)
        ct = self._send_aead.encrypt(self._nonce_for(self.role, self._send_seq), payload, hdr)
        self._send_seq += 1
        return self._frame(_KIND_RECORD, hdr, ct)

    def _on_record(self, body: bytes | memoryview) -> None:
        if self._recv_aead is None or len(body) < _REC_HDR.size + _TAG_LEN:
            raise ChannelError("bad record")
        type_, seq = _REC_HDR.unpack_from(body)
        if seq != self._recv_seq:
            raise ChannelError("bad record")  # replayed, reordered or dropped
        peer = Role.DESTINATION if self.role is Role.SOURCE else Role.SOURCE
        try:
            payload = self._recv_aead.decrypt(self._nonce_for(peer, seq), body[_REC_HDR.size :], bytes(body[: _REC_HDR.size]))
        except InvalidTag as exc:
            raise ChannelError("bad record") from exc
        self._recv_seq += 1
        if type_ == _FINISHED:
            if self.role is not Role.SOURCE or seq != 0:
                raise ChannelError("bad record")
            if not hmac.compare_digest(payload, self._transcript.copy().digest()):
                raise ChannelError("bad record")
            self._events.append(HandshakeComplete(self._peer_report, payload))
            return
        if seq == 0 and self.role is Role.SOURCE:
            raise ChannelError("bad record")  # Finished must come first
        self._events.append(Record(type_, payload))

    def close(self) -> None:
        """Mark the channel closed: nothing more is sent."""
        self.state = ChannelState.CLOSED

    def statistics(self) -> ChannelStatistics:
        """Counters of this end (records sealed/opened are the sequence numbers)."""
        return ChannelStatistics(self.state.value, self._send_seq, self._recv_seq, self.bytes_sent, self.bytes_received)


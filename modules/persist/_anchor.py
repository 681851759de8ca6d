"""The SVSM side of the freshness anchor: attested requests, signed and nonce-bound replies.

:class:`AnchorClient` implements :class:`~svsm.modules.persist.FreshnessAnchor` for the store.  How
bytes reach the anchor is injected (``exchange``): a TCP connection in tests and tools
(:class:`TcpTransport`), a kernel relay syscall inside the sandboxed module.  Nothing that
travels is trusted: the anchor's key is pinned (given, or learned on first use and then sealed into
the store), and each reply must carry the client's fresh nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._anchor_proto import FRAME_HEADER, MAX_FRAME, ProtocolViolation, decode, encode, parse_reply, report_data_for, canonical
from ._anchor_service import REPLY_CONTEXT
from ._errors import AnchorError, CloneDetected, RollbackDetected

__all__ = ["AnchorClient", "AnchorClientStatistics", "TcpTransport", "Attester"]

log = logging.getLogger(__name__)

#: ``attest(report_data) -> (raw attestation report, VCEK DER or b"")``.
Attester = Callable[[bytes], tuple[bytes, bytes]]


class _Refused(AnchorError):
    """The anchor authentically refused the request (bad challenge, report or policy)."""


class TcpTransport:
    """One request/reply exchange per TCP connection to ``host:port``.

    :raises AnchorError: (when called) connection failure or a malformed answer.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.address = (host, port)
        self.timeout = timeout

    def __call__(self, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            with socket.create_connection(self.address, timeout=self.timeout) as sock:
                sock.sendall(encode(msg))
                head = _recv(sock, FRAME_HEADER.size)
                (length,) = FRAME_HEADER.unpack(head)
                if length > MAX_FRAME:
                    raise AnchorError("anchor reply too large")
                return decode(_recv(sock, length))
        except (OSError, ProtocolViolation) as exc:
            raise AnchorError(f"anchor at {self.address[0]}:{self.address[1]} unusable: {exc}") from None


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return bytes(buf)


class AnchorClientStatistics(NamedTuple):
    """Counters of one anchor client."""

    calls: int
    failures: int
    holds_lease: bool


class AnchorClient:
    """Talks to one anchor on behalf of one store.

    :param exchange: sends one message dict, returns the reply dict.
    :param attest: gets an SNP report carrying the given REPORT_DATA (the attestation syscall).
    :param rng: ``os.urandom``-like (client nonces).
    :param anchor_key: the anchor's raw Ed25519 public key; None = learn it on first contact
        (trust on first use; the store seals its hash and enforces it afterwards).
    :param lease: a lease this CVM already holds (a restarted module process re-acquires it
        instead of being refused as a second instance).
    :param module: (module name, code measurement) when the kernel domain-separates module reports
        (ABI 1.2, ``ModuleContext.measurement``): sent along so the anchor recomputes
        ``svsm.sdk.module_report_data`` for the REPORT_DATA it checks.
    """

    def __init__(self, exchange: Callable[[dict[str, Any]], dict[str, Any]], attest: Attester, *,
                 rng: Callable[[int], bytes], anchor_key: bytes | None = None, lease: bytes = b"",
                 module: tuple[str, bytes] | None = None) -> None:
        self._exchange, self._attest, self._rng = exchange, attest, rng
        self._module = module
        self._key = anchor_key
        self._lease = lease
        self._next: bytes | None = None
        self.calls = 0
        self.failures = 0

    @property
    def pin(self) -> bytes:
        """SHA-256 of the anchor's public key (contacts the anchor once if the key is unknown)."""
        if self._key is None:
            self._challenge()
        assert self._key is not None
        return hashlib.sha256(self._key).digest()

    def _challenge(self) -> bytes:
        ch = self._exchange({"type": "challenge"})
        try:
            challenge, key = bytes.fromhex(ch["challenge"]), bytes.fromhex(ch["anchor_key"])
        except (KeyError, TypeError, ValueError):
            raise AnchorError("anchor sent a malformed challenge") from None
        if len(challenge) != 32 or len(key) != 32:
            raise AnchorError("anchor sent a malformed challenge")
        if self._key is None:
            log.warning("persist: trusting anchor key %s on first use", key.hex())
            self._key = key
        elif not hmac.compare_digest(key, self._key):
            raise AnchorError("anchor key does not match the pinned key")
        return challenge

    def _call(self, op: str, store_id: bytes, generation: int = 0) -> dict[str, Any]:
        self.calls += 1
        try:
            return self._call_once(op, store_id, generation)
        except Exception:
            self.failures += 1
            raise

    @property
    def lease(self) -> bytes:
        """The lease id held (empty when none); keep it across module restarts of this CVM."""
        return self._lease

    def statistics(self) -> AnchorClientStatistics:
        """Counters."""
        return AnchorClientStatistics(self.calls, self.failures, bool(self._lease))

    def _call_once(self, op: str, store_id: bytes, generation: int) -> dict[str, Any]:
        cached, self._next = self._next, None
        try:
            return self._exchange_op(op, store_id, generation, cached or self._challenge())
        except _Refused:
            if cached is None:
                raise
            # an authentic refusal: the cached challenge may have expired; once more with a fresh one
            return self._exchange_op(op, store_id, generation, self._challenge())

    def _exchange_op(self, op: str, store_id: bytes, generation: int, challenge: bytes) -> dict[str, Any]:
        nonce = self._rng(32)
        request = {"op": op, "store_id": store_id.hex(), "generation": generation, "lease": self._lease.hex(),
                   "challenge": challenge.hex(), "client_nonce": nonce.hex()}
        report, vcek = self._attest(report_data_for(request))
        msg: dict[str, Any] = {"type": "op", "request": request, "report": report.hex(), "vcek": vcek.hex()}
        if self._module is not None:  # the kernel signs module_report_data(name, measurement, binding)
            msg["module"] = {"name": self._module[0], "measurement": self._module[1].hex()}
        answer = self._exchange(msg)
        try:
            sig = bytes.fromhex(answer["signature"])
            Ed25519PublicKey.from_public_bytes(self._key).verify(sig, REPLY_CONTEXT + canonical(answer["reply"]))  # type: ignore[arg-type]
            reply = parse_reply(answer["reply"])
        except (KeyError, TypeError, ValueError, InvalidSignature, ProtocolViolation):
            raise AnchorError(f"anchor answer to {op} is not authentic") from None
        if not hmac.compare_digest(reply["client_nonce"], nonce) or reply["op"] != op:
            raise AnchorError(f"anchor answer to {op} is not bound to this request")
        nxt = answer.get("next_challenge")
        if isinstance(nxt, str) and len(nxt) == 64:
            try:
                self._next = bytes.fromhex(nxt)
            except ValueError:
                self._next = None
        status = reply["status"]
        if status == "clone":
            raise CloneDetected(f"another instance holds the anchor lease of store {store_id.hex()}")
        if status == "rollback":
            raise RollbackDetected(f"anchor refused generation {generation} (anchored {reply['generation']})")
        if status != "ok":
            raise _Refused(f"anchor refused {op} ({status})")
        return reply

    def acquire(self, store_id: bytes) -> int | None:
        """Take the lease; returns the anchored generation (None for a store the anchor never saw).

        :raises CloneDetected: another live instance holds it.
        """
        reply = self._call("acquire", store_id)
        self._lease = reply["lease"]
        return reply["generation"]

    def advance(self, store_id: bytes, generation: int) -> None:
        """Anchor ``generation``.

        :raises RollbackDetected: the anchor already holds a newer generation.
        :raises CloneDetected: this instance lost its lease to another.
        """
        self._call("advance", store_id, generation)

    def heartbeat(self, store_id: bytes) -> None:
        """Renew the lease."""
        self._call("heartbeat", store_id)

    def release(self, store_id: bytes) -> None:
        """Give the lease back."""
        self._call("release", store_id)
        self._lease = b""

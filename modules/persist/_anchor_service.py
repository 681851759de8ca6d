"""The reference freshness anchor: monotonic generations and single-instance leases per CVM store.

It runs outside the host's control (the guest owner's machine, a KBS).  It answers only an
attested SVSM: each operation carries an SNP attestation report whose REPORT_DATA binds the
request (which includes a fresh single-use challenge), checked against the ARK -> ASK -> VCEK
chain with :mod:`svsm.sdk.attestation`.  Its replies are signed with an Ed25519 key that the
store pins, and bound to the client's nonce, so the host can neither forge nor replay them.

Identity of a store = SHA-256(MEASUREMENT || store_id): a clone of the state directory has the
same identity and finds the lease taken; a different SVSM is a different identity (and cannot
unseal the store anyway).  The state file is replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import pathlib
import socketserver
import threading
from collections.abc import Callable
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from svsm.sdk import SvsmError

from ._anchor_proto import (FRAME_HEADER, MAX_FRAME, ProtocolViolation, canonical, decode, encode, parse_module,
                            parse_request, report_data_for)

__all__ = ["AnchorService", "AnchorStatistics", "ReportVerifier", "chain_verifier", "load_or_create_key",
           "serve_tcp", "REPLY_CONTEXT"]

log = logging.getLogger(__name__)

#: Guest policy bit DEBUG (snp.md): the host may read and write the guest's memory.
POLICY_DEBUG = 1 << 19

#: Prefix of the signed reply bytes (domain separation).
REPLY_CONTEXT = b"pysvsm anchor reply v1\0"


class VerifiedReport(Protocol):
    """The fields of a verified attestation report the anchor uses."""

    report_data: bytes
    measurement: bytes
    vmpl: int
    policy: int


#: ``verifier(report_bytes, vcek_der) -> verified report``; raises on any failure.
ReportVerifier = Callable[[bytes, bytes], VerifiedReport]


def chain_verifier(ark_pem: bytes, ask_pem: bytes, vcek_pems: list[bytes] | tuple[bytes, ...] = (),
                   now: Callable[[], Any] | None = None) -> ReportVerifier:
    """A verifier trusting one ARK/ASK pair; the VCEK comes with the request or from ``vcek_pems``.

    :param now: returns the ``datetime`` certificates are checked at (injected clock).
    """
    from svsm.sdk.attestation import CertChain, VerificationError, verify_report

    ark, ask = x509.load_pem_x509_certificate(ark_pem), x509.load_pem_x509_certificate(ask_pem)
    known = [x509.load_pem_x509_certificate(p) for p in vcek_pems]

    def verify(report: bytes, vcek_der: bytes) -> VerifiedReport:
        try:
            candidates = [x509.load_der_x509_certificate(vcek_der)] if vcek_der else known
        except ValueError:
            raise VerificationError("VCEK is not DER") from None
        last: Exception = VerificationError("no VCEK for this report")
        for vcek in candidates:
            try:
                return verify_report(report, CertChain(ark, ask, vcek), now=now() if now else None)
            except VerificationError as exc:
                last = exc
        raise last

    return verify


def load_or_create_key(path: pathlib.Path) -> Ed25519PrivateKey:
    """The anchor's signing key, created (mode 0600) on first use."""
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return key


@dataclasses.dataclass
class _Record:
    generation: int | None = None
    lease: str = ""
    expires: int = 0
    measurement: str = ""


@dataclasses.dataclass(frozen=True)
class AnchorStatistics:
    """Counters of one anchor service."""

    identities: int
    live_leases: int
    requests: int
    refused: int
    clones: int
    rollbacks: int


class AnchorService:
    """Sans-IO anchor: :meth:`handle` turns one decoded message into one reply message.

    :param key: Ed25519 signing key.
    :param verifier: checks a report and its VCEK (see :func:`chain_verifier`).
    :param clock: nanoseconds (injected).
    :param rng: ``os.urandom``-like (challenges, lease ids).
    :param state_path: JSON file of identities (None: memory only, for tests).
    :param lease_ttl_ns: a lease not renewed for this long may be taken by another instance.
    :param allowed_measurements: if given, only these SVSM measurements are served.
    :param require_vmpl0: refuse reports not requested at VMPL0 (i.e. not by the SVSM itself).
    :param module_names: modules whose domain-separated reports are accepted (the ``module`` field
        of an op; REPORT_DATA = ``svsm.sdk.module_report_data(name, measurement, binding)``).
    :param module_measurements: if given, only these module code measurements (SHA-384) are served.
    :param accept_unwrapped: also accept REPORT_DATA = the bare binding, as a kernel that does not
        domain-separate module reports signs it.  Turn it off once every kernel wraps them: a bare
        binding can come from any code that gets VMPL0 reports over bytes it chose.
    :param allow_debug: serve a CVM whose guest policy allows debugging.  Off by default: the host
        can read and write such a guest's memory, so the same SVSM image launched with DEBUG would
        be an SVSM the host drives, holding and advancing the real store's lease and generation.
    :param one_store_per_measurement: refuse a second store id for a measurement that already has
        one, so a wiped disk (a freshly formatted store) is reported as a rollback.  Only for
        deployments that run a single CVM per measurement.
    """

    def __init__(self, key: Ed25519PrivateKey, verifier: ReportVerifier, *, clock: Callable[[], int],
                 rng: Callable[[int], bytes], state_path: pathlib.Path | None = None,
                 lease_ttl_ns: int = 30 * 10**9, challenge_ttl_ns: int = 60 * 10**9,
                 allowed_measurements: set[bytes] | None = None, require_vmpl0: bool = True,
                 one_store_per_measurement: bool = False, allow_debug: bool = False,
                 module_names: frozenset[str] = frozenset({"persist"}),
                 module_measurements: set[bytes] | None = None, accept_unwrapped: bool = True) -> None:
        self._key, self._verify, self._clock, self._rng = key, verifier, clock, rng
        self.public_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._path = state_path
        self._ttl, self._challenge_ttl = lease_ttl_ns, challenge_ttl_ns
        self._allowed = allowed_measurements
        self._require_vmpl0 = require_vmpl0
        self._allow_debug = allow_debug
        self._module_names, self._module_measurements = frozenset(module_names), module_measurements
        self._accept_unwrapped = accept_unwrapped
        self._one_store = one_store_per_measurement
        self._lock = threading.Lock()
        self._challenges: dict[bytes, int] = {}
        self._ids: dict[str, _Record] = {}
        self._requests = self._refused = self._clones = self._rollbacks = 0
        if state_path is not None and state_path.exists():
            data = json.loads(state_path.read_text())
            self._ids = {k: _Record(**v) for k, v in data["identities"].items()}

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer one message (``challenge`` or ``op``); never raises for bad input."""
        with self._lock:
            self._requests += 1
            if msg.get("type") == "challenge":
                return self._challenge()
            if msg.get("type") == "op":
                try:
                    return self._op(msg)
                except ProtocolViolation as exc:
                    self._refused += 1
                    return {"type": "error", "reason": str(exc)}
            self._refused += 1
            return {"type": "error", "reason": "unknown message type"}

    def _challenge(self) -> dict[str, Any]:
        now = self._clock()
        self._challenges = {c: t for c, t in self._challenges.items() if t > now}
        if len(self._challenges) > 4096:  # bounded: the oldest go first
            for c in sorted(self._challenges, key=self._challenges.__getitem__)[:1024]:
                del self._challenges[c]
        challenge = self._rng(32)
        self._challenges[challenge] = now + self._challenge_ttl
        return {"type": "challenge", "challenge": challenge.hex(), "anchor_key": self.public_key.hex()}

    def _reply(self, req: dict[str, Any], status: str, rec: _Record | None) -> dict[str, Any]:
        reply = {"op": req["op"], "status": status, "generation": rec.generation if rec else None,
                 "lease": rec.lease if (rec and status == "ok") else "", "client_nonce": req["client_nonce"].hex()}
        if status == "refused":
            self._refused += 1
        elif status == "clone":
            self._clones += 1
        elif status == "rollback":
            self._rollbacks += 1
        sig = self._key.sign(REPLY_CONTEXT + canonical(reply))
        # The next single-use challenge rides along (unsigned: a forged one is merely refused),
        # so a client needs one round trip per operation.
        return {"type": "reply", "reply": reply, "signature": sig.hex(),
                "next_challenge": self._challenge()["challenge"]}

    def _op(self, msg: dict[str, Any]) -> dict[str, Any]:
        raw_req = msg.get("request")
        req = parse_request(raw_req)
        module = parse_module(msg["module"]) if msg.get("module") is not None else None
        report, vcek = msg.get("report"), msg.get("vcek", "")
        if not isinstance(report, str) or not isinstance(vcek, str) or len(report) > MAX_FRAME:
            raise ProtocolViolation("report and vcek must be hex")
        now = self._clock()
        if self._challenges.pop(req["challenge"], 0) <= now:
            log.info("anchor: unknown, used or expired challenge")
            return self._reply(req, "refused", None)
        try:
            verified = self._verify(bytes.fromhex(report), bytes.fromhex(vcek))
        except (SvsmError, ValueError) as exc:
            log.info("anchor: report refused: %s", exc)
            return self._reply(req, "refused", None)
        if not self._binds(bytes(verified.report_data), report_data_for(raw_req), module):
            log.info("anchor: REPORT_DATA does not bind the request")
            return self._reply(req, "refused", None)
        if self._require_vmpl0 and verified.vmpl != 0:
            return self._reply(req, "refused", None)
        if not self._allow_debug and int(verified.policy) & POLICY_DEBUG:
            log.info("anchor: refused a CVM whose policy allows debugging")
            return self._reply(req, "refused", None)
        if self._allowed is not None and bytes(verified.measurement) not in self._allowed:
            log.info("anchor: measurement %s not allowed", bytes(verified.measurement).hex())
            return self._reply(req, "refused", None)
        identity = hashlib.sha256(bytes(verified.measurement) + req["store_id"]).hexdigest()
        return self._apply(identity, req, now, bytes(verified.measurement).hex())

    def _binds(self, report_data: bytes, binding: bytes, module: tuple[str, bytes] | None) -> bool:
        """REPORT_DATA is the binding, wrapped for an accepted module (or bare, if still accepted)."""
        from svsm.sdk import module_report_data

        if module is not None:
            name, code = module
            if name not in self._module_names or (
                    self._module_measurements is not None and code not in self._module_measurements):
                log.info("anchor: reports of module %r (code %s) are not accepted", name, code.hex()[:16])
                return False
            if hmac.compare_digest(report_data, module_report_data(name, code, binding)):
                return True
        return self._accept_unwrapped and hmac.compare_digest(report_data, binding)

    def _apply(self, identity: str, req: dict[str, Any], now: int, measurement: str) -> dict[str, Any]:
        rec = self._ids.get(identity)
        if rec is None and self._one_store and req["op"] == "acquire" and any(
                r.measurement == measurement for r in self._ids.values()):
            # this SVSM already has a store here: a new store id means the host wiped its disk
            log.warning("anchor: refused a new store for measurement %s (one store per measurement)", measurement[:16])
            return self._reply(req, "rollback", None)
        lease = req["lease"].hex()
        live = rec is not None and rec.lease and rec.expires > now
        if req["op"] == "acquire":
            if live and rec.lease != lease:  # type: ignore[union-attr]
                log.warning("anchor: refused a second instance of store %s", identity[:16])
                return self._reply(req, "clone", rec)
            rec = rec or _Record(measurement=measurement)
            rec.lease, rec.expires = (lease or self._rng(16).hex()), now + self._ttl
            self._ids[identity] = rec
            self._save()
            return self._reply(req, "ok", rec)
        if rec is None or not rec.lease or rec.lease != lease:
            return self._reply(req, "clone", rec)  # fenced: someone else holds (or held) the lease
        if req["op"] == "advance":
            if rec.generation is not None and req["generation"] < rec.generation:
                return self._reply(req, "rollback", rec)
            rec.generation = req["generation"]
        if req["op"] == "release":
            rec.lease, rec.expires = "", 0
        else:
            rec.expires = now + self._ttl
        self._save()
        return self._reply(req, "ok", rec)

    def _save(self) -> None:
        if self._path is None:
            return
        data = json.dumps({"identities": {k: dataclasses.asdict(v) for k, v in self._ids.items()}}, indent=1)
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def statistics(self) -> AnchorStatistics:
        """Current counters."""
        with self._lock:
            now = self._clock()
            live = sum(1 for r in self._ids.values() if r.lease and r.expires > now)
            return AnchorStatistics(len(self._ids), live, self._requests, self._refused, self._clones,
                                    self._rollbacks)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(30)
        while True:
            head = _recv_exact(sock, FRAME_HEADER.size)
            if head is None:
                return
            (length,) = FRAME_HEADER.unpack(head)
            if length > MAX_FRAME:
                return  # the cap is checked before the body is read
            body = _recv_exact(sock, length)
            if body is None:
                return
            try:
                reply = self.server.service.handle(decode(body))  # type: ignore[attr-defined]
            except ProtocolViolation as exc:
                reply = {"type": "error", "reason": str(exc)}
            sock.sendall(encode(reply))


def _recv_exact(sock: Any, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_tcp(service: AnchorService, host: str = "127.0.0.1", port: int = 0) -> socketserver.ThreadingTCPServer:
    """Bind a TCP server for ``service`` (call ``serve_forever()`` on it; port 0 picks one).

    :returns: the server; ``server.server_address`` is where it listens.
    """
    server = _Server((host, port), _Handler)
    server.service = service  # type: ignore[attr-defined]
    return server

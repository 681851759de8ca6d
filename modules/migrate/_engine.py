"""The migration engine: pre-copy rounds, stop-and-copy, the final check and the two-phase commit.

Both ends are driven by :func:`migrate_source` / :func:`migrate_destination` over a
:class:`~._port.Stream` and a :class:`~._port.VmPort`.  Message order and legality come from
:mod:`._phases`; the bytes are sealed by :class:`~._channel.Channel`.

Source::

    handshake -> Begin -> (Ready) -> round 0: every non-pristine frame
    -> rounds 1..n: the hypervisor's dirty frames, until few enough or the round limit
    -> pause -> dirty frames again -> machine state -> per-chunk digests of all memory
    -> (Resend: whole chunks again) ... -> (Prepared) -> fence = COMMIT DECISION -> Commit
    -> (Committed)

Destination: imports what arrives; on Digests compares its own per-chunk digests and asks for
mismatching chunks again (a page the hypervisor hid from the dirty log is caught here) before
voting Prepared; runs the guest only on Commit.  A destination that loses the source after
Prepared stays in doubt and never runs the guest (it cannot know the decision).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from svsm.sdk import InvalidRequest, RequestError

from ._channel import Channel, ChannelError, Evidence, HandshakeComplete, Record, Role
from ._phases import Phase, advance
from ._policy import migration_report_data
from ._port import Page, Stream, VmPort
from ._wire import (
    WIRE_VERSION,
    Abort,
    Begin,
    Commit,
    Committed,
    Digests,
    MachineStateMsg,
    Message,
    Pages,
    Prepared,
    Ready,
    Resend,
    RoundEnd,
    VmShape,
    decode_message,
    encode_message,
)

__all__ = [
    "MigrationAborted",
    "MigrationInDoubt",
    "MigrationOptions",
    "MigrationReport",
    "Progress",
    "migrate_destination",
    "migrate_source",
]

log = logging.getLogger("svsm.modules.migrate")


class MigrationAborted(InvalidRequest):
    """The migration did not commit; the source keeps running the guest.

    :ivar reason: short reason (for the operator; the peer learns nothing more than "abort").
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MigrationInDoubt(InvalidRequest):
    """The destination voted Prepared and then lost the source: it must not run the guest.

    The source may have committed (and fenced itself) or not; an operator decides.
    """


@dataclasses.dataclass(frozen=True)
class MigrationOptions:
    """Tuning of the pre-copy loop.

    :ivar max_rounds: pre-copy rounds after the first full pass before stopping anyway.
    :ivar converge_pages: stop once a round's dirty set is at most this many pages.
    :ivar batch_pages: pages per :class:`~._wire.Pages` record.
    :ivar resend_attempts: final-check repair passes before giving up.
    """

    max_rounds: int = 8
    converge_pages: int = 256
    batch_pages: int = 256
    resend_attempts: int = 3


@dataclasses.dataclass(frozen=True)
class Progress:
    """One progress event (a batch was sent or received)."""

    phase: str
    round: int
    round_pages: int
    round_done: int
    bytes: int
    rate: float
    eta: float | None


@dataclasses.dataclass
class MigrationReport:
    """What happened, for ``--json`` and the progress display."""

    role: str
    result: str = "aborted"
    rounds: int = 0
    pages_per_round: list[int] = dataclasses.field(default_factory=list)
    pages_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    total_time: float = 0.0
    downtime: float = 0.0
    pause_wait: float = 0.0
    digest_time: float = 0.0
    prehash_time: float = 0.0
    resent_chunks: int = 0
    reason: str = ""
    fingerprint: dict[str, str] = dataclasses.field(default_factory=dict)
    peer_measurement: str = ""

    @property
    def throughput(self) -> float:
        """Migration bytes per second over the whole migration (sent by a source, received by a destination)."""
        moved = self.bytes_received if self.role == "destination" else self.bytes_sent
        return moved / self.total_time if self.total_time > 0 else 0.0


class _Link:
    """A channel over a stream: whole messages in and out (blocking)."""

    def __init__(self, stream: Stream, channel: Channel, recv_size: int = 1 << 20) -> None:
        self.stream, self.channel, self._n = stream, channel, recv_size

    def _pump(self) -> Any:
        while True:
            ev = self.channel.next_event()
            if ev is not None:
                return ev
            data = self.stream.recv(self._n)
            if not data:
                raise ConnectionError("peer closed the connection")
            self.channel.receive_data(data)

    def handshake(self) -> HandshakeComplete:
        ch = self.channel
        if ch.role is Role.SOURCE:
            self.stream.sendall(ch.initiate())
        while True:
            ev = ch.next_event()
            if ev is None:
                data = self.stream.recv(self._n)
                if not data:
                    raise ConnectionError("peer closed the connection")
                ch.receive_data(data)
                ev = ch.next_event()
            out = ch.outgoing()
            if out:
                self.stream.sendall(out)
            if isinstance(ev, HandshakeComplete):
                return ev
            if ev is not None:
                raise ChannelError("record before the handshake finished")

    def send(self, msg: Message) -> None:
        t, payload = encode_message(msg)
        self.stream.sendall(self.channel.send(t, payload))

    def recv(self) -> Message:
        ev = self._pump()
        if not isinstance(ev, Record):
            raise ChannelError("unexpected handshake event")
        return decode_message(ev.type, ev.payload)


def make_channel(vm: VmPort, role: Role, verifier: Callable[[Evidence, bytes], object], rng: Callable[[int], bytes]) -> Channel:
    """A channel whose evidence comes from ``vm``'s PSP.

    ``vm.attest(binding)`` returns a report whose REPORT_DATA is
    :func:`~._policy.migration_report_data` of the handshake binding, so the peer's report is
    checked against that.
    """
    return Channel(role, lambda rd: Evidence(*vm.attest(rd)), lambda ev, rd: verifier(ev, migration_report_data(rd)), rng)


def _shape(vm: VmPort) -> VmShape:
    i = vm.info()
    return VmShape(i["memory_size"], i["guest_frames"], i["vcpus"], i["guest_vmpl"], list(i["modules"]))


class _Meter:
    def __init__(self, on_progress: Callable[[Progress], None] | None, clock: Callable[[], float]) -> None:
        self.cb, self.clock = on_progress, clock
        self.t0 = clock()
        self.bytes = 0

    def emit(self, phase: str, rnd: int, total: int, done: int, t_round: float) -> None:
        if self.cb is None:
            return
        el = max(self.clock() - t_round, 1e-9)
        rate_pages = done / el
        eta = (total - done) / rate_pages if rate_pages > 0 else None
        self.cb(Progress(phase, rnd, total, done, self.bytes, self.bytes / max(self.clock() - self.t0, 1e-9), eta))


def _send_pages(link: _Link, vm: VmPort, gfns: Sequence[int], rnd: int, opts: MigrationOptions, meter: _Meter,
                rep: MigrationReport, *, skip_pristine: bool = False, phase: str = "precopy") -> int:  # fmt: skip
    """Read and send ``gfns`` in batches; returns pages sent."""
    sent, t_round = 0, meter.clock()
    for i in range(0, len(gfns), opts.batch_pages):
        pages: list[Page] = vm.read_pages(gfns[i : i + opts.batch_pages])
        if skip_pristine:
            pages = [p for p in pages if p[1] or p[2] is not None]
        if pages:
            link.send(Pages(rnd, [p[0] for p in pages], [p[1] for p in pages], [p[2] for p in pages]))
            sent += len(pages)
            meter.bytes = link.channel.bytes_sent
        meter.emit(phase, rnd, len(gfns), min(i + opts.batch_pages, len(gfns)), t_round)
    link.send(RoundEnd(rnd, sent, phase != "precopy"))
    rep.pages_sent += sent
    return sent


def migrate_source(
    vm: VmPort,
    stream: Stream,
    channel: Channel,
    options: MigrationOptions | None = None,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> MigrationReport:
    """Migrate the running guest of ``vm`` to the peer at the other end of ``stream``.

    :returns: the report; ``result == "committed"`` and the guest now runs at the destination.
    :raises MigrationAborted: nothing was committed; the guest runs here again (resumed).
    :raises ChannelError: (wrapped in MigrationAborted) attestation or tampering.
    """
    opts = options or MigrationOptions()
    rep = MigrationReport("source")
    link, meter = _Link(stream, channel), _Meter(on_progress, clock)
    phase, t0, paused_at = Phase.HANDSHAKE, clock(), None
    logging_on = False
    try:
        done = link.handshake()
        rep.peer_measurement = getattr(done.peer_report, "measurement", b"").hex()
        vm.set_digest_key(channel.digest_key)
        link.send(Begin(WIRE_VERSION, _shape(vm)))
        phase = advance(Role.SOURCE, phase, "sent-begin")
        phase = _expect(link, Role.SOURCE, phase, Ready)[0]
        vm.start_dirty_log()
        logging_on = True
        frames = list(vm.frames())
        rep.pages_per_round.append(_send_pages(link, vm, frames, 0, opts, meter, rep, skip_pristine=True))
        if vm.info().get("trusted_writes"):
            # Pre-hash while the guest still runs: at stop time the kernel rehashes only chunks its
            # trusted write record (not the hypervisor's dirty log) or an RMP/mapping change marks.
            t = clock()
            vm.digests()
            rep.prehash_time = clock() - t
        rnd = 1
        while True:
            pending = vm.dirty_frames()
            if len(pending) <= opts.converge_pages or rnd > opts.max_rounds:
                break  # the remainder goes with stop-and-copy
            rep.pages_per_round.append(_send_pages(link, vm, sorted(pending), rnd, opts, meter, rep))
            rnd += 1
        # -- stop and copy ---------------------------------------------------------------------------
        paused_at = clock()
        rep.pause_wait = vm.pause()
        phase = advance(Role.SOURCE, phase, "paused")
        dirty = sorted(pending | vm.dirty_frames())
        rep.pages_per_round.append(_send_pages(link, vm, dirty, rnd, opts, meter, rep, phase="stop-and-copy"))
        rep.rounds = rnd + 1
        link.send(MachineStateMsg(vm.export_state()))
        t = clock()
        digests = vm.digests()
        rep.digest_time = clock() - t
        link.send(Digests(list(range(len(digests))), digests))
        mine = vm.fingerprint(digests)
        for _ in range(opts.resend_attempts + 1):
            phase, msg = _expect(link, Role.SOURCE, phase, Resend, Prepared)
            if isinstance(msg, Prepared):
                break
            rep.resent_chunks += len(msg.chunks)
            gfns = [g for c in msg.chunks for g in vm.chunk_frames(c)]
            _send_pages(link, vm, gfns, rnd, opts, meter, rep, phase="repair")
            link.send(Digests(list(msg.chunks), [digests[c] for c in msg.chunks]))
        else:
            raise MigrationAborted("final check did not converge")
        if msg.fingerprint != mine:
            raise MigrationAborted("destination state differs from the source")
        rep.fingerprint = mine
        # -- the commit decision: after this line the guest never runs here again -------------------
        phase = advance(Role.SOURCE, phase, "fenced")  # decided: even a failing fence never resumes
        rep.result = "fenced"
        vm.fence()
        link.send(Commit())
        phase = _expect(link, Role.SOURCE, phase, Committed)[0]
        rep.result = "committed"
        rep.downtime = clock() - paused_at
    except BaseException as exc:
        if phase is Phase.FENCED:
            # Decided: the destination has everything; it may or may not have heard the decision.
            rep.reason = f"commit not acknowledged: {type(exc).__name__}"
            log.error("migration committed but not acknowledged (%s); the source stays fenced", exc)
            _finish(rep, link, t0, clock)
            return rep
        reason = exc.reason if isinstance(exc, MigrationAborted) else f"{type(exc).__name__}: {exc}"
        log.warning("migration aborted (%s); resuming the guest on the source", reason)
        _try_send(link, Abort("source aborted"))
        if logging_on:
            vm.stop_dirty_log()
        if paused_at is not None:
            vm.resume()
        if isinstance(exc, MigrationAborted):
            raise
        if isinstance(exc, (RequestError, OSError, ConnectionError, TimeoutError)):
            raise MigrationAborted(reason) from exc
        raise
    vm.stop_dirty_log()
    _finish(rep, link, t0, clock)
    return rep


def migrate_destination(
    vm: VmPort,
    stream: Stream,
    channel: Channel,
    options: MigrationOptions | None = None,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> MigrationReport:
    """Receive a guest into ``vm`` (booted, guest not started) and run it at commit.

    :returns: the report (``result == "committed"``: the guest runs here now).
    :raises MigrationAborted: the source gave up or the transfer failed; discard this VM.
    :raises MigrationInDoubt: lost the source after voting Prepared; do not run the guest.
    """
    opts = options or MigrationOptions()
    rep = MigrationReport("destination")
    link, meter = _Link(stream, channel), _Meter(on_progress, clock)
    phase, t0 = Phase.HANDSHAKE, clock()
    theirs: dict[int, bytes] = {}
    attempts, t_round, rnd_pages = 0, clock(), 0
    try:
        done = link.handshake()
        rep.peer_measurement = getattr(done.peer_report, "measurement", b"").hex()
        vm.set_digest_key(channel.digest_key)
        phase, begin = _expect(link, Role.DESTINATION, phase, Begin)
        mine = _shape(vm)
        if begin.version != WIRE_VERSION or begin.shape.memory_size != mine.memory_size \
                or begin.shape.guest_frames != mine.guest_frames or begin.shape.vcpus != mine.vcpus \
                or begin.shape.guest_vmpl != mine.guest_vmpl or not set(begin.shape.modules) <= set(mine.modules):  # fmt: skip
            raise MigrationAborted("the destination VM does not fit the guest")
        link.send(Ready())
        total = begin.shape.guest_frames
        while phase is not Phase.DONE:
            phase, msg = _expect(link, Role.DESTINATION, phase, Pages, RoundEnd, MachineStateMsg, Digests, Commit)
            if isinstance(msg, Pages):
                vm.write_pages(zip(msg.gfns, msg.states, msg.data))
                rnd_pages += len(msg.gfns)
                rep.pages_sent += len(msg.gfns)
                meter.bytes = link.channel.bytes_received
                meter.emit("receiving", msg.round, total, min(rnd_pages, total), t_round)
            elif isinstance(msg, RoundEnd):
                if msg.pages != rnd_pages:
                    raise ChannelError("round size mismatch")
                rep.pages_per_round.append(rnd_pages)
                rep.rounds = msg.round + 1
                rnd_pages, t_round = 0, clock()
                if msg.round == 0:
                    vm.digests()  # warm the final check while the source is still copying
            elif isinstance(msg, MachineStateMsg):
                vm.import_state(msg.blob)
            elif isinstance(msg, Digests):
                if any(c >= vm.chunk_count() for c in msg.chunks):
                    raise ChannelError("digest for a chunk that does not exist")
                theirs.update(zip(msg.chunks, msg.digests))
                t = clock()
                ours = vm.digests(msg.chunks)
                rep.digest_time += clock() - t
                bad = [c for c, d in zip(msg.chunks, ours) if d != theirs[c]]
                if bad:
                    attempts += 1
                    if attempts > opts.resend_attempts:
                        raise MigrationAborted("final check did not converge")
                    rep.resent_chunks += len(bad)
                    log.warning("final check: %d chunk(s) differ; asking for them again", len(bad))
                    link.send(Resend(bad))
                    continue
                if len(theirs) != vm.chunk_count():
                    continue
                fp = vm.fingerprint([theirs[c] for c in range(vm.chunk_count())])
                rep.fingerprint = fp
                link.send(Prepared(fp))
                phase = advance(Role.DESTINATION, phase, "prepared")
            elif isinstance(msg, Commit):
                vm.resume()
                rep.result = "committed"
                link.send(Committed())
    except BaseException as exc:
        if phase is Phase.DONE:
            raise
        if phase is Phase.PREPARED and not isinstance(exc, MigrationAborted):
            rep.reason = "in doubt"
            raise MigrationInDoubt("lost the source after Prepared; not running the guest") from exc
        _try_send(link, Abort("destination aborted"))
        if isinstance(exc, MigrationAborted):
            raise
        if isinstance(exc, (RequestError, OSError, ConnectionError, TimeoutError)):
            raise MigrationAborted(f"{type(exc).__name__}: {exc}") from exc
        raise
    _finish(rep, link, t0, clock)
    return rep


def _expect(link: _Link, role: Role, phase: Phase, *kinds: type) -> tuple[Phase, Any]:
    msg = link.recv()
    tag = type(msg).__struct_config__.tag  # type: ignore[attr-defined]
    if isinstance(msg, Abort):
        advance(role, phase, "abort")
        raise MigrationAborted(f"peer aborted: {msg.reason}")
    if not isinstance(msg, kinds):
        raise ChannelError(f"unexpected {tag} in phase {phase.value}")
    return advance(role, phase, str(tag)), msg


def _try_send(link: _Link, msg: Message) -> None:
    try:
        link.send(msg)
    except (OSError, ChannelError):
        pass  # the peer is gone or the channel is broken: the abort is implied


def _finish(rep: MigrationReport, link: _Link, t0: float, clock: Callable[[], float]) -> None:
    rep.total_time = clock() - t0
    rep.bytes_sent = link.channel.bytes_sent
    rep.bytes_received = link.channel.bytes_received

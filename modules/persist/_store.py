"""The sealed, crash-safe, tamper-evident key-value store (sans-IO core over a block device).

(A little over 600 lines: open, commit and the anchor checks share the store's private state.)

Commit protocol (copy-on-write, two alternating superblocks):

1. seal each new record (AAD = store id, namespace, key, generation g+1) into free blocks;
2. copy the changed index path, seal every new node into free blocks;
3. flush (fsync) -- everything the new superblock will point to is durable;
4. write superblock g+1 into slot (g+1) % 2 -- the slot of g-1, never the live one -- and flush;
5. advance the freshness anchor to g+1 (if configured); only now is the commit acknowledged;
6. release the extents that g+1 no longer references (they may still belong to g, whose
   superblock stays valid until g+2 overwrites its slot, so a crash falls back to at worst g).

A crash at any point leaves slot g intact, so reopening yields g or (after step 4) g+1.  An I/O
error inside a commit leaves the disk in an unknown state: the store stops serving and must be
reopened.  Any authentication failure makes it stop serving too (:class:`IntegrityError`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ._errors import (AnchorRequired, BadKey, CloneDetected, IntegrityError, PersistError, QuotaExceeded,
                      RollbackDetected, StoreFull, StoreUnavailable)
from ._format import (BLOCK_SIZE, HEADER_PREFIX, MAX_KEY, MAX_NAMESPACE, NULL_REF, SB_BODY, SB_HEADER,
                      SEAL_OVERHEAD, SUPERBLOCK_MAGIC, SUPERBLOCK_SLOTS, TAG_SIZE, FORMAT_VERSION,
                      BlockRef, LeafEntry, SuperblockBody, SuperblockHeader, blocks_for, node_aad,
                      pack_body, pack_header, pack_internal, pack_leaf, parse_body, parse_header,
                      parse_node, record_aad)
from ._alloc import Allocator
from ._index import Index, Node
from ._seal import Sealer

__all__ = ["BlockIO", "Delete", "FreshnessAnchor", "Put", "Quota", "Store", "StoreStatistics",
           "DEFAULT_QUOTA", "MAX_VALUE"]

log = logging.getLogger(__name__)

#: Largest value one record holds (one contiguous extent).
MAX_VALUE = 1 << 20


class BlockIO(Protocol):
    """What the store needs from the host's block device (however the blocks travel)."""

    block_size: int

    @property
    def num_blocks(self) -> int:
        """Device size in blocks."""
        ...

    def read(self, lba: int, count: int = 1) -> bytes:
        """Read ``count`` blocks."""
        ...

    def write(self, lba: int, data: bytes) -> None:
        """Write whole blocks."""
        ...

    def flush(self) -> None:
        """Make earlier writes durable."""
        ...


class FreshnessAnchor(Protocol):
    """A service outside the host's control holding the store's latest generation and a lease."""

    #: SHA-256 of the anchor's public key, sealed into the store once enrolled.
    pin: bytes

    def acquire(self, store_id: bytes) -> int | None:
        """Take the single-instance lease; return the anchored generation (None: unknown store).

        :raises CloneDetected: another live instance holds the lease.
        """
        ...

    def advance(self, store_id: bytes, generation: int) -> None:
        """Record ``generation`` as the latest durable one (monotonic)."""
        ...

    def heartbeat(self, store_id: bytes) -> None:
        """Renew the lease."""
        ...

    def release(self, store_id: bytes) -> None:
        """Give the lease up (clean shutdown)."""
        ...


class Put(NamedTuple):
    """Store ``value`` under ``(ns, key)``."""

    ns: str
    key: str
    value: bytes


class Delete(NamedTuple):
    """Remove ``(ns, key)`` (no error if absent)."""

    ns: str
    key: str


class Quota(NamedTuple):
    """Limits of one namespace."""

    max_records: int
    max_bytes: int


DEFAULT_QUOTA = Quota(max_records=4096, max_bytes=64 << 20)


@dataclass(frozen=True)
class StoreStatistics:
    """A snapshot of the store's state and counters."""

    generation: int
    records: int
    namespaces: int
    value_bytes: int
    blocks_total: int
    blocks_used: int
    index_depth: int
    commits: int
    bytes_written: int
    anchored: bool
    failed: bool


def _ns_key(ns: str, key: str) -> tuple[bytes, bytes]:
    try:
        n, k = ns.encode("utf-8"), key.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):
        raise BadKey("namespace and key must be UTF-8 strings") from None
    if not 0 < len(n) <= MAX_NAMESPACE or not 0 < len(k) <= MAX_KEY:
        raise BadKey(f"namespace must be 1..{MAX_NAMESPACE} bytes and key 1..{MAX_KEY} bytes")
    return n, k


class Store:
    """One open store.  Use :meth:`open`; all methods are thread-safe.

    :ivar generation: the last committed (and anchored) generation.
    """

    def __init__(self, dev: BlockIO, sealer: Sealer, header: SuperblockHeader, body: SuperblockBody,
                 index: Index, alloc: Allocator, usage: dict[bytes, list[int]], *,
                 clock: Callable[[], int], rng: Callable[[int], bytes], anchor: FreshnessAnchor | None,
                 quotas: dict[str, Quota], default_quota: Quota) -> None:
        self._dev, self._sealer, self._alloc, self._index = dev, sealer, alloc, index
        self._salt, self._body = header.salt, body
        self.generation = header.generation
        self.store_id = body.store_id
        self._usage = usage
        self._clock, self._rng, self._anchor = clock, rng, anchor
        self._quotas = {k.encode(): v for k, v in quotas.items()}
        self._default_quota = default_quota
        self._lock = threading.RLock()
        self._failed: BaseException | None = None
        self._commits = 0
        self._bytes_written = 0
        self._anchor_contact = clock()

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, dev: BlockIO, sealing_key: bytes, *, clock: Callable[[], int],
             rng: Callable[[int], bytes], anchor: FreshnessAnchor | None = None, create: bool = True,
             quotas: dict[str, Quota] | None = None, default_quota: Quota = DEFAULT_QUOTA) -> Store:
        """Open the store on ``dev`` (formatting a blank device when ``create``).

        :param sealing_key: the 32-byte PSP-derived key (bound to the measurement).
        :param clock: nanoseconds (injected; only recorded in the superblock).
        :param rng: ``os.urandom``-like (salts, ids, nonces).
        :param anchor: freshness anchor; without one, rollback protection is off (logged).
        :raises IntegrityError: the image fails authentication; do not format over it.
        :raises RollbackDetected: the image is older than the anchor says.
        :raises CloneDetected: another instance of this store is running.
        :raises AnchorRequired: the store is anchored but no (or another) anchor was given.
        """
        if dev.block_size != BLOCK_SIZE:
            raise PersistError(f"block size {dev.block_size} unsupported")
        kw = dict(clock=clock, rng=rng, anchor=anchor, quotas=quotas or {}, default_quota=default_quota)
        found = cls._read_superblock(dev, sealing_key, rng)
        if found is None:
            if not create:
                raise StoreUnavailable("no store on the device")
            store = cls._format(dev, sealing_key, **kw)
            fresh = True
        else:
            header, body, sealer = found
            index, alloc, usage = cls._load_tree(dev, sealer, body)
            store = cls(dev, sealer, header, body, index, alloc, usage, **kw)
            fresh = False
        store._check_anchor(fresh)
        log.info("persistent store %s open at generation %d (%d records)", store.store_id.hex(),
                 store.generation, store._body.record_count)
        return store

    @staticmethod
    def _read_superblock(dev: BlockIO, key: bytes, rng: Callable[[int], bytes]
                         ) -> tuple[SuperblockHeader, SuperblockBody, Sealer] | None:
        raw = dev.read(0, SUPERBLOCK_SLOTS)
        slots = [raw[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE] for i in range(SUPERBLOCK_SLOTS)]
        best = None
        for slot, block in enumerate(slots):
            if not any(block[:HEADER_PREFIX]):
                continue
            try:
                h = parse_header(block)
                if h.generation % SUPERBLOCK_SLOTS != slot:
                    raise IntegrityError("superblock in wrong slot")
                sealer = Sealer(key, h.salt, rng)
                ct = block[SB_HEADER.size:SB_HEADER.size + h.body_len]
                body = parse_body(sealer.unseal_with_nonce("superblock", h.nonce, ct, block[:SB_HEADER.size]))
            except IntegrityError as exc:
                log.warning("superblock slot %d rejected: %s", slot, exc.detail)
                continue
            if best is None or h.generation > best[0].generation:
                best = (h, body, sealer)
        if best is not None:
            return best
        if not any(slots[0][:HEADER_PREFIX]) and _unfinished_format(slots[1]):
            return None
        raise IntegrityError("no superblock authenticates")

    @classmethod
    def _load_tree(cls, dev: BlockIO, sealer: Sealer, body: SuperblockBody
                   ) -> tuple[Index, Allocator, dict[bytes, list[int]]]:
        size = dev.num_blocks
        if size < body.high_water:
            raise IntegrityError("image truncated")
        alloc = Allocator(size)
        usage: dict[bytes, list[int]] = {}
        if body.root == NULL_REF:
            if body.record_count or body.value_bytes or body.root_level:
                raise IntegrityError("empty tree with records")
            return Index(Node(0, [])), alloc, usage
        last: list[tuple[bytes, bytes]] = []

        def load(ref: BlockRef, level: int) -> Node:
            alloc.mark(ref)
            blob = dev.read(ref.lba, ref.nblocks)[:ref.length]
            if not hmac.compare_digest(hashlib.sha256(blob).digest(), ref.digest):
                raise IntegrityError("index node digest")
            got_level, items = parse_node(sealer.unseal("node", blob, node_aad(body.store_id, ref.lba)))
            if got_level != level or not items:
                raise IntegrityError("index node level")
            if level == 0:
                for e in items:
                    if last and (e.ns, e.key) <= last[0]:
                        raise IntegrityError("index order")
                    last[:] = [(e.ns, e.key)]
                    alloc.mark(e.ref)
                    u = usage.setdefault(e.ns, [0, 0])
                    u[0] += 1
                    u[1] += e.value_len
                return Node(0, list(items), ref)
            return Node(level, [load(c, level - 1) for c in items], ref)

        root = load(body.root, body.root_level)
        if (sum(u[0] for u in usage.values()), sum(u[1] for u in usage.values())) != \
                (body.record_count, body.value_bytes):
            raise IntegrityError("record totals")
        return Index(root), alloc, usage

    @classmethod
    def _format(cls, dev: BlockIO, key: bytes, **kw) -> Store:
        rng, clock = kw["rng"], kw["clock"]
        salt, store_id = rng(16), rng(16)
        sealer = Sealer(key, salt, rng)
        pin = kw["anchor"].pin if kw["anchor"] is not None else bytes(32)
        now = clock()
        body = SuperblockBody(store_id, NULL_REF, 0, 0, SUPERBLOCK_SLOTS, 0, 0, pin, now, now)
        header = SuperblockHeader(SUPERBLOCK_MAGIC, FORMAT_VERSION, BLOCK_SIZE, 0, salt, bytes(12), SB_BODY.size + TAG_SIZE)
        store = cls(dev, sealer, header, body, Index(Node(0, [])), Allocator(dev.num_blocks), {}, **kw)
        store._write_superblock(1, body)
        store.generation = 1
        log.info("formatted a new persistent store %s", store_id.hex())
        return store

    def _check_anchor(self, fresh: bool) -> None:
        pin = self._body.anchor_pin
        if self._anchor is None:
            if any(pin):
                raise AnchorRequired("the store is anchored but no freshness anchor is configured")
            log.warning("persist: no freshness anchor configured -- ROLLBACK PROTECTION IS OFF: "
                        "the host can replay an older image of this store undetected")
            return
        if any(pin) and not hmac.compare_digest(pin, self._anchor.pin):
            raise AnchorRequired("the store is anchored to a different anchor")
        anchored = self._anchor.acquire(self.store_id)
        try:
            self._check_generation(anchored, pin, fresh)
        except StoreUnavailable:
            self._release_after_refusal()
            raise

    def _release_after_refusal(self) -> None:
        """Give back the lease of a store that will not serve, so a retry sees the real reason."""
        assert self._anchor is not None
        try:
            self._anchor.release(self.store_id)
        except StoreUnavailable as exc:  # the refusal being raised is the error that matters
            log.warning("persist: could not release the anchor lease after refusing to open: %s", exc)

    def _check_generation(self, anchored: int | None, pin: bytes, fresh: bool) -> None:
        assert self._anchor is not None
        if anchored is None:
            # generation 1 is the empty store a crash left between formatting and the first acquire
            if any(pin) and not fresh and self.generation > 1:
                raise RollbackDetected("the anchor has no record of this anchored store")
            if not any(pin):
                self._commit([], enroll=True)  # seal the pin into the store
            self._anchor.advance(self.store_id, self.generation)
            return
        if self.generation < anchored:
            raise RollbackDetected(f"image generation {self.generation} is older than anchored {anchored}")
        if self.generation > anchored + 1:
            raise RollbackDetected(f"image generation {self.generation} is ahead of anchored {anchored}")
        if self.generation == anchored + 1:  # crashed between superblock and anchor update
            self._anchor.advance(self.store_id, self.generation)

    # -- reading -----------------------------------------------------------------------------------
    def _serving(self) -> None:
        if self._failed is not None:
            raise StoreUnavailable("persistent store stopped serving") from self._failed

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            log.error("persistent store stops serving: %r", exc)
            self._failed = exc

    def get(self, ns: str, key: str) -> bytes | None:
        """The value of ``(ns, key)``, or None.

        :raises IntegrityError: the record failed authentication (the store stops serving).
        """
        k = _ns_key(ns, key)
        with self._lock:
            self._serving()
            e = self._index.lookup(k)
            if e is None:
                return None
            try:
                return self._read_record(e)
            except IntegrityError as exc:
                self._fail(exc)
                raise

    def contains(self, ns: str, key: str) -> bool:
        """Whether ``(ns, key)`` exists (no record is read)."""
        k = _ns_key(ns, key)
        with self._lock:
            self._serving()
            return self._index.lookup(k) is not None

    def _read_record(self, e: LeafEntry) -> bytes:
        blob = self._dev.read(e.ref.lba, e.ref.nblocks)[:e.ref.length]
        if not hmac.compare_digest(hashlib.sha256(blob).digest(), e.ref.digest):
            raise IntegrityError("record digest")
        return self._sealer.unseal("record", blob, record_aad(self.store_id, e.ns, e.key, e.generation))

    def list(self, ns: str, prefix: str = "") -> list[str]:
        """Keys of ``ns`` starting with ``prefix``, in byte order."""
        n, _ = _ns_key(ns, "x")
        p = prefix.encode("utf-8")
        with self._lock:
            self._serving()
            out = []
            for e in self._index.scan((n, p)):
                if e.ns != n or not e.key.startswith(p):
                    break
                out.append(e.key.decode("utf-8"))
            return out

    def usage(self, ns: str) -> tuple[int, int]:
        """``(records, value bytes)`` of a namespace."""
        n, _ = _ns_key(ns, "x")
        with self._lock:
            return tuple(self._usage.get(n, (0, 0)))  # type: ignore[return-value]

    def scrub(self) -> int:
        """Read and authenticate every record; returns how many.

        :raises IntegrityError: one failed (the store stops serving).
        """
        with self._lock:
            self._serving()
            count = 0
            try:
                for e in self._index.scan((b"", b"")):
                    self._read_record(e)
                    count += 1
            except IntegrityError as exc:
                self._fail(exc)
                raise
            return count

    # -- writing -----------------------------------------------------------------------------------
    def put(self, ns: str, key: str, value: bytes) -> int:
        """Commit one record; returns the new generation."""
        return self.commit([Put(ns, key, value)])

    def delete(self, ns: str, key: str) -> int:
        """Commit one deletion; returns the new generation."""
        return self.commit([Delete(ns, key)])

    def commit(self, ops: Iterable[Put | Delete]) -> int:
        """Apply ``ops`` atomically: after any crash either all are visible or none.

        Returns when the commit is durable and anchored.

        :returns: the new generation (unchanged for an empty batch).
        :raises BadKey, QuotaExceeded, StoreFull: nothing was written; the store keeps serving.
        :raises StoreUnavailable: (or a device error) the store stopped serving; reopen it.
        """
        with self._lock:
            self._serving()
            return self._commit(list(ops))

    def _validate(self, ops: Sequence[Put | Delete]) -> dict[tuple[bytes, bytes], bytes | None]:
        final: dict[tuple[bytes, bytes], bytes | None] = {}
        for op in ops:
            if not isinstance(op, (Put, Delete)):
                raise BadKey(f"unknown storage operation {type(op).__name__}")
            k = _ns_key(op.ns, op.key)
            if isinstance(op, Put):
                if not isinstance(op.value, (bytes, bytearray, memoryview)) or len(op.value) > MAX_VALUE:
                    raise BadKey(f"value must be bytes of at most {MAX_VALUE}")
                final[k] = bytes(op.value)
            else:
                final[k] = None
        delta: dict[bytes, list[int]] = {}
        for (n, _k), value in final.items():
            old = self._index.lookup((n, _k))
            d = delta.setdefault(n, [0, 0])
            if old is not None:
                d[0] -= 1
                d[1] -= old.value_len
            if value is not None:
                d[0] += 1
                d[1] += len(value)
        for n, (dr, db) in delta.items():
            have = self._usage.get(n, [0, 0])
            q = self._quotas.get(n, self._default_quota)
            if (dr > 0 and have[0] + dr > q.max_records) or (db > 0 and have[1] + db > q.max_bytes):
                raise QuotaExceeded(f"namespace {n.decode()!r} over quota {q}")
        need = sum(blocks_for(len(v) + SEAL_OVERHEAD) for v in final.values() if v is not None)
        if need + self._index.depth() + 1 > self._alloc.free:  # index nodes: checked as allocated
            raise StoreFull("not enough free blocks for the batch")
        return final

    def _commit(self, ops: Sequence[Put | Delete], enroll: bool = False) -> int:
        final = self._validate(ops)
        if not final and not enroll:
            return self.generation
        gen = self.generation + 1
        snap, old_root = self._alloc.snapshot(), self._index.root
        old_usage = {n: list(u) for n, u in self._usage.items()}
        self._index.freed = []
        try:
            written = self._stage(final, gen)
        except StoreFull:
            self._alloc.restore(snap)
            self._index.root, self._index.freed, self._usage = old_root, [], old_usage
            raise
        except BaseException as exc:
            self._fail(exc)
            raise
        try:
            body = self._next_body(final, enroll)
            self._dev.flush()
            self._write_superblock(gen, body)
            self._body = body
            self.generation = gen
            if self._anchor is not None and not enroll:
                self._anchor.advance(self.store_id, gen)
                self._anchor_contact = self._clock()
        except BaseException as exc:
            self._fail(exc)
            raise
        for ref in self._index.freed:
            self._alloc.release(ref)
        self._index.freed = []
        self._commits += 1
        self._bytes_written += written
        return gen

    def _stage(self, final: dict[tuple[bytes, bytes], bytes | None], gen: int) -> int:
        """Write records and index nodes of generation ``gen``; returns bytes written."""
        written = 0
        for (n, k), value in final.items():
            if value is None:
                old = self._index.delete((n, k))
                if old is not None:
                    self._account(n, -1, -old.value_len)
                continue
            blob = self._sealer.seal("record", value, record_aad(self.store_id, n, k, gen))
            ref = self._write_extent(blob)
            written += len(blob)
            old = self._index.put(LeafEntry(n, k, gen, len(value), ref))
            if old is not None:
                self._account(n, -1, -old.value_len)
            self._account(n, 1, len(value))
        for node in self._index.dirty():
            if node.level == 0:
                plain = pack_leaf(node.items)
            else:
                plain = pack_internal(node.level, [c.ref for c in node.items])
            lba = self._alloc.alloc(1)
            blob = self._sealer.seal("node", plain, node_aad(self.store_id, lba))
            self._dev.write(lba, blob.ljust(BLOCK_SIZE, b"\0"))
            node.ref = BlockRef(lba, 1, len(blob), hashlib.sha256(blob).digest())
            written += BLOCK_SIZE
        return written

    def _account(self, n: bytes, records: int, nbytes: int) -> None:
        u = self._usage.setdefault(n, [0, 0])
        u[0] += records
        u[1] += nbytes
        if not u[0]:
            del self._usage[n]

    def _write_extent(self, blob: bytes) -> BlockRef:
        nblocks = blocks_for(len(blob))
        lba = self._alloc.alloc(nblocks)
        self._dev.write(lba, blob.ljust(nblocks * BLOCK_SIZE, b"\0"))
        return BlockRef(lba, nblocks, len(blob), hashlib.sha256(blob).digest())

    def _next_body(self, final: dict, enroll: bool) -> SuperblockBody:
        root = self._index.root
        records = sum(u[0] for u in self._usage.values())
        nbytes = sum(u[1] for u in self._usage.values())
        pin = self._anchor.pin if (enroll and self._anchor is not None) else self._body.anchor_pin
        return self._body._replace(
            root=root.ref if root.items else NULL_REF, root_level=root.level if root.items else 0,
            high_water=self._alloc.high_water, record_count=records, value_bytes=nbytes,
            anchor_pin=pin, commit_time_ns=self._clock())

    def _write_superblock(self, gen: int, body: SuperblockBody) -> None:
        nonce = self._rng(12)
        header = pack_header(SuperblockHeader(SUPERBLOCK_MAGIC, FORMAT_VERSION, BLOCK_SIZE, gen,
                                              self._salt, nonce, SB_BODY.size + TAG_SIZE))
        ct = self._sealer.seal_with_nonce("superblock", nonce, pack_body(body), header)
        self._dev.write(gen % SUPERBLOCK_SLOTS, (header + ct).ljust(BLOCK_SIZE, b"\0"))
        self._dev.flush()

    # -- lifecycle ---------------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """Renew the anchor lease (call well within the lease period).

        :raises CloneDetected: the lease was taken over; the store stops serving.
        :raises AnchorError: the anchor is unreachable; the store keeps serving (the next commit's
            anchor update decides), retry later.
        """
        with self._lock:
            self._serving()
            if self._anchor is not None:
                try:
                    self._anchor.heartbeat(self.store_id)
                except (CloneDetected, RollbackDetected) as exc:  # fenced: another instance took over
                    self._fail(exc)
                    raise
                self._anchor_contact = self._clock()

    def heartbeat_if_due(self, interval_ns: int) -> bool:
        """Renew the lease if the anchor has not heard from this store for ``interval_ns``.

        :returns: whether a heartbeat was sent.
        :raises CloneDetected: the lease was lost (the store stops serving).
        """
        with self._lock:
            if self._anchor is None or self._clock() - self._anchor_contact < interval_ns:
                return False
            self.heartbeat()
            return True

    def close(self) -> None:
        """Stop serving and release the anchor lease."""
        with self._lock:
            serving = self._failed is None
            self._failed = self._failed or StoreUnavailable("store closed")
            if self._anchor is not None and serving:
                self._anchor.release(self.store_id)

    @property
    def failed(self) -> BaseException | None:
        """Why the store stopped serving (None while it serves)."""
        return self._failed

    def statistics(self) -> StoreStatistics:
        """Current figures."""
        with self._lock:
            return StoreStatistics(
                generation=self.generation, records=sum(u[0] for u in self._usage.values()),
                namespaces=len(self._usage), value_bytes=sum(u[1] for u in self._usage.values()),
                blocks_total=self._alloc.num_blocks, blocks_used=self._alloc.used,
                index_depth=self._index.depth(), commits=self._commits,
                bytes_written=self._bytes_written, anchored=self._anchor is not None,
                failed=self._failed is not None)


def _unfinished_format(slot1: bytes) -> bool:
    """True when slot 1 is blank or holds a torn first superblock (generation 1)."""
    if not any(slot1[:HEADER_PREFIX]):
        return True
    try:
        return parse_header(slot1).generation == 1
    except IntegrityError:
        return False

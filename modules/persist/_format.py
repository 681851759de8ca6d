"""On-disk layout of the store (format version 1): every wire structure, declared once.

Image layout (4 KiB blocks)::

    block 0, 1   superblock slots; generation g lives in slot g % 2
    block 2..    copy-on-write extents: sealed index nodes and sealed records

Superblock block = header (clear, authenticated as AAD) || AES-256-GCM(body) || tag, zero padded.
Index node and record extents = nonce(12) || AES-256-GCM ciphertext || tag(16); the parent (or the
superblock) holds each extent's :class:`BlockRef` including the SHA-256 of the sealed bytes, so
the superblock authenticates the whole tree (a Merkle tree over sealed blobs).

There is no external specification for this format; the offsets below are this file's own table,
asserted next to each declaration and documented in docs/persist.md.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ._errors import IntegrityError

__all__ = [
    "BLOCK_SIZE",
    "BLOCKREF",
    "BlockRef",
    "FORMAT_VERSION",
    "HEADER_PREFIX",
    "LEAF_ENTRY",
    "MAX_KEY",
    "MAX_NAMESPACE",
    "NODE_CAPACITY",
    "NODE_HEADER",
    "NONCE_SIZE",
    "NULL_REF",
    "SB_BODY",
    "SB_HEADER",
    "SEAL_OVERHEAD",
    "SUPERBLOCK_MAGIC",
    "SUPERBLOCK_SLOTS",
    "SuperblockBody",
    "SuperblockHeader",
    "TAG_SIZE",
    "LeafEntry",
    "blocks_for",
    "node_aad",
    "pack_body",
    "pack_header",
    "pack_internal",
    "pack_leaf",
    "parse_body",
    "parse_header",
    "parse_node",
    "record_aad",
]

BLOCK_SIZE = 4096
FORMAT_VERSION = 1
SUPERBLOCK_MAGIC = b"SVSMPST\x01"
SUPERBLOCK_SLOTS = 2
NONCE_SIZE = 12
TAG_SIZE = 16
#: Bytes a sealed blob adds to its plaintext.
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
MAX_NAMESPACE = 64
MAX_KEY = 255

# --- BlockRef: where a sealed extent lives and what its bytes hash to -------------------------
#   0x00 u64 lba | 0x08 u32 nblocks | 0x0C u32 length (sealed bytes) | 0x10 sha256[32]
BLOCKREF = struct.Struct("<QII32s")
assert BLOCKREF.size == 0x30


class BlockRef(NamedTuple):
    """A sealed extent: ``nblocks`` blocks at ``lba`` holding ``length`` bytes with ``digest``."""

    lba: int
    nblocks: int
    length: int
    digest: bytes

    def pack(self) -> bytes:
        """Wire form (:data:`BLOCKREF`)."""
        return BLOCKREF.pack(*self)


#: "No extent" (an empty tree).
NULL_REF = BlockRef(0, 0, 0, bytes(32))


def blocks_for(length: int) -> int:
    """Blocks an extent of ``length`` sealed bytes occupies."""
    return max(1, -(-length // BLOCK_SIZE))


# --- Superblock header (clear text, AAD of the body) -----------------------------------------
#   0x00 magic[8] | 0x08 u32 version | 0x0C u32 block_size | 0x10 u64 generation
#   0x18 salt[16] | 0x28 nonce[12]   | 0x34 u32 body_len (ciphertext + tag)
SB_HEADER = struct.Struct("<8sIIQ16s12sI")
assert SB_HEADER.size == 0x38
#: Bytes at the start of a slot that are all zero when the slot was never written.
HEADER_PREFIX = SB_HEADER.size


class SuperblockHeader(NamedTuple):
    """The clear part of a superblock (authenticated, not secret)."""

    magic: bytes
    version: int
    block_size: int
    generation: int
    salt: bytes
    nonce: bytes
    body_len: int


def pack_header(h: SuperblockHeader) -> bytes:
    """Wire form of a superblock header."""
    return SB_HEADER.pack(*h)


def parse_header(block: bytes) -> SuperblockHeader:
    """Parse and sanity-check the header at the start of a superblock slot.

    :raises IntegrityError: wrong magic, version, block size or body length.
    """
    if len(block) < SB_HEADER.size:
        raise IntegrityError("superblock short")
    h = SuperblockHeader(*SB_HEADER.unpack_from(block))
    if h.magic != SUPERBLOCK_MAGIC or h.version != FORMAT_VERSION or h.block_size != BLOCK_SIZE:
        raise IntegrityError("superblock header")
    if h.body_len != SB_BODY.size + TAG_SIZE or SB_HEADER.size + h.body_len > len(block):
        raise IntegrityError("superblock body length")
    return h


# --- Superblock body (sealed) ------------------------------------------------------------------
#   0x00 store_id[16] | 0x10 root BlockRef[48] | 0x40 u32 root_level | 0x44 u32 flags
#   0x48 u64 high_water | 0x50 u64 record_count | 0x58 u64 value_bytes | 0x60 anchor_pin[32]
#   0x80 u64 commit_time_ns | 0x88 u64 format_time_ns
SB_BODY = struct.Struct("<16s48sIIQQQ32sQQ")
assert SB_BODY.size == 0x90


class SuperblockBody(NamedTuple):
    """The sealed part: the authenticated root of everything else."""

    store_id: bytes
    root: BlockRef
    root_level: int
    flags: int
    high_water: int
    record_count: int
    value_bytes: int
    anchor_pin: bytes
    commit_time_ns: int
    format_time_ns: int


def pack_body(b: SuperblockBody) -> bytes:
    """Wire form of a superblock body."""
    return SB_BODY.pack(b.store_id, b.root.pack(), b.root_level, b.flags, b.high_water,
                        b.record_count, b.value_bytes, b.anchor_pin, b.commit_time_ns,
                        b.format_time_ns)


def parse_body(raw: bytes) -> SuperblockBody:
    """Parse a decrypted superblock body.

    :raises IntegrityError: wrong size, reserved flags, or a root that is inconsistent.
    """
    if len(raw) != SB_BODY.size:
        raise IntegrityError("superblock body size")
    f = SB_BODY.unpack(raw)
    root = BlockRef(*BLOCKREF.unpack(f[1]))
    body = SuperblockBody(f[0], root, *f[2:])
    if body.flags != 0 or body.root_level > 16:
        raise IntegrityError("superblock body fields")
    if (root.lba == 0) != (root == NULL_REF):
        raise IntegrityError("superblock root")
    return body


# --- Index nodes (sealed) ---------------------------------------------------------------------
#   header: 0x00 u8 kind (1 leaf, 2 internal) | 0x01 u8 level | 0x02 u16 reserved | 0x04 u32 count
NODE_HEADER = struct.Struct("<BBHI")
assert NODE_HEADER.size == 8
KIND_LEAF, KIND_INTERNAL = 1, 2
#   leaf entry: 0x00 u8 ns_len | 0x01 u16 key_len | 0x03 u64 generation | 0x0B u32 value_len
#               0x0F BlockRef[48] | 0x3F ns[ns_len] | key[key_len]
LEAF_ENTRY = struct.Struct("<BHQI48s")
assert LEAF_ENTRY.size == 0x3F
#: The same layout with the BlockRef's fields spelled out (one unpack per entry when parsing).
_LEAF_ENTRY_FLAT = struct.Struct("<BHQIQII32s")
assert _LEAF_ENTRY_FLAT.size == LEAF_ENTRY.size
#: Largest node plaintext that still fits one block once sealed.
NODE_CAPACITY = BLOCK_SIZE - SEAL_OVERHEAD


class LeafEntry(NamedTuple):
    """One record in the index: its identity, size and sealed extent."""

    ns: bytes
    key: bytes
    generation: int
    value_len: int
    ref: BlockRef

    @property
    def wire_size(self) -> int:
        """Bytes this entry takes in a leaf."""
        return LEAF_ENTRY.size + len(self.ns) + len(self.key)


def pack_leaf(entries: list[LeafEntry]) -> bytes:
    """Serialize a leaf (entries already sorted by (ns, key))."""
    out = [NODE_HEADER.pack(KIND_LEAF, 0, 0, len(entries))]
    for e in entries:
        out.append(LEAF_ENTRY.pack(len(e.ns), len(e.key), e.generation, e.value_len, e.ref.pack()))
        out.append(e.ns)
        out.append(e.key)
    return b"".join(out)


def pack_internal(level: int, children: list[BlockRef]) -> bytes:
    """Serialize an internal node of ``level`` (>= 1) over ``children``."""
    return NODE_HEADER.pack(KIND_INTERNAL, level, 0, len(children)) + b"".join(c.pack() for c in children)


def parse_node(raw: bytes) -> tuple[int, list[LeafEntry] | list[BlockRef]]:
    """Parse a decrypted node into ``(level, entries or child refs)``.

    :raises IntegrityError: any inconsistency (kind, counts, lengths, trailing bytes, order).
    """
    if len(raw) < NODE_HEADER.size or len(raw) > NODE_CAPACITY:
        raise IntegrityError("node size")
    kind, level, reserved, count = NODE_HEADER.unpack_from(raw)
    pos = NODE_HEADER.size
    if reserved:
        raise IntegrityError("node reserved")
    if kind == KIND_INTERNAL:
        if level < 1 or count < 1 or len(raw) != pos + count * BLOCKREF.size:
            raise IntegrityError("internal node shape")
        refs = [BlockRef(*BLOCKREF.unpack_from(raw, pos + i * BLOCKREF.size)) for i in range(count)]
        if any(r.lba < SUPERBLOCK_SLOTS or r.nblocks != blocks_for(r.length) for r in refs):
            raise IntegrityError("internal node ref")
        return level, refs
    if kind != KIND_LEAF or level != 0:
        raise IntegrityError("node kind")
    entries: list[LeafEntry] = []
    end, unpack, esize = len(raw), _LEAF_ENTRY_FLAT.unpack_from, _LEAF_ENTRY_FLAT.size
    last = (b"", b"")
    for _ in range(count):
        if pos + esize > end:
            raise IntegrityError("leaf entry truncated")
        ns_len, key_len, gen, vlen, lba, nblocks, length, digest = unpack(raw, pos)
        pos += esize
        if not 0 < ns_len <= MAX_NAMESPACE or not 0 < key_len <= MAX_KEY or pos + ns_len + key_len > end:
            raise IntegrityError("leaf entry lengths")
        ns, key = raw[pos:pos + ns_len], raw[pos + ns_len:pos + ns_len + key_len]
        pos += ns_len + key_len
        if lba < SUPERBLOCK_SLOTS or length != vlen + SEAL_OVERHEAD or nblocks != max(1, -(-length // BLOCK_SIZE)):
            raise IntegrityError("leaf entry ref")
        if (ns, key) <= last:
            raise IntegrityError("leaf order")
        last = (ns, key)
        entries.append(LeafEntry(ns, key, gen, vlen, BlockRef(lba, nblocks, length, digest)))
    if pos != len(raw):
        raise IntegrityError("leaf trailing bytes")
    return 0, entries


# --- Associated data ---------------------------------------------------------------------------
_NODE_AAD = struct.Struct("<4s16sQ")
_RECORD_AAD = struct.Struct("<4s16sQBH")


def node_aad(store_id: bytes, lba: int) -> bytes:
    """AAD of an index node: the store and the block it must sit at."""
    return _NODE_AAD.pack(b"node", store_id, lba)


def record_aad(store_id: bytes, ns: bytes, key: bytes, generation: int) -> bytes:
    """AAD of a record: its identity (namespace, key, generation) in this store."""
    return _RECORD_AAD.pack(b"rec\0", store_id, generation, len(ns), len(key)) + ns + key

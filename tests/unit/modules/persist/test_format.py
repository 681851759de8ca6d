"""On-disk parsers: round trips, and hypothesis fuzzing (only IntegrityError may escape)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svsm.kernel.hw.blockdev import BLOCK_SIZE
from svsm.modules.persist import IntegrityError, Put, Store
from svsm.modules.persist._format import (BLOCKREF, LEAF_ENTRY, NODE_CAPACITY, NULL_REF, SB_BODY,
                                          SB_HEADER, SUPERBLOCK_MAGIC, BlockRef, LeafEntry,
                                          SuperblockBody, SuperblockHeader, blocks_for, pack_body,
                                          pack_header, pack_internal, pack_leaf, parse_body,
                                          parse_header, parse_node, record_aad)

REF = BlockRef(7, 1, 128, bytes(range(32)))


def test_struct_sizes() -> None:
    assert (BLOCKREF.size, SB_HEADER.size, SB_BODY.size, LEAF_ENTRY.size) == (0x30, 0x38, 0x90, 0x3F)
    assert blocks_for(1) == 1 and blocks_for(BLOCK_SIZE) == 1 and blocks_for(BLOCK_SIZE + 1) == 2


def test_header_and_body_round_trip() -> None:
    h = SuperblockHeader(SUPERBLOCK_MAGIC, 1, BLOCK_SIZE, 9, b"s" * 16, b"n" * 12, SB_BODY.size + 16)
    assert parse_header(pack_header(h).ljust(BLOCK_SIZE, b"\0")) == h
    b = SuperblockBody(b"i" * 16, REF, 2, 0, 100, 3, 4000, b"p" * 32, 5, 6)
    assert parse_body(pack_body(b)) == b
    empty = b._replace(root=NULL_REF, root_level=0)
    assert parse_body(pack_body(empty)) == empty


@pytest.mark.parametrize("field,value", [("magic", b"XXXXXXXX"), ("version", 2), ("block_size", 512),
                                         ("body_len", 10)])
def test_header_rejects_bad_fields(field: str, value) -> None:
    h = SuperblockHeader(SUPERBLOCK_MAGIC, 1, BLOCK_SIZE, 9, b"s" * 16, b"n" * 12, SB_BODY.size + 16)
    with pytest.raises(IntegrityError):
        parse_header(pack_header(h._replace(**{field: value})).ljust(BLOCK_SIZE, b"\0"))


def test_body_rejects_flags_and_half_null_root() -> None:
    b = SuperblockBody(b"i" * 16, REF, 2, 0, 100, 3, 4000, b"p" * 32, 5, 6)
    for bad in (b._replace(flags=1), b._replace(root=REF._replace(lba=0)), b._replace(root_level=17)):
        with pytest.raises(IntegrityError):
            parse_body(pack_body(bad))


def test_nodes_round_trip_and_reject_disorder() -> None:
    ref = BlockRef(5, 1, 10 + 28, bytes(32))
    entries = [LeafEntry(b"ns", b"a", 3, 10, ref), LeafEntry(b"ns", b"b", 4, 10, ref)]
    assert parse_node(pack_leaf(entries)) == (0, entries)
    assert parse_node(pack_internal(2, [REF, REF])) == (2, [REF, REF])
    with pytest.raises(IntegrityError):
        parse_node(pack_leaf(entries[::-1]))
    with pytest.raises(IntegrityError):
        parse_node(pack_leaf(entries) + b"\0")
    with pytest.raises(IntegrityError):
        parse_node(pack_leaf([entries[0]._replace(value_len=11)]))  # length disagrees with the ref
    with pytest.raises(IntegrityError):
        parse_node(pack_internal(0, [REF]))


def test_record_aad_binds_identity() -> None:
    a = record_aad(b"i" * 16, b"ns", b"key", 5)
    assert a != record_aad(b"i" * 16, b"nsk", b"ey", 5)
    assert a != record_aad(b"i" * 16, b"ns", b"key", 6)
    assert a != record_aad(b"j" * 16, b"ns", b"key", 5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_parse_header(data: bytes) -> None:
    try:
        parse_header(SUPERBLOCK_MAGIC + data if data[:1] == b"\0" else data)
    except IntegrityError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=SB_BODY.size, max_size=SB_BODY.size) | st.binary(max_size=300))
def test_fuzz_parse_body(data: bytes) -> None:
    try:
        parse_body(data)
    except IntegrityError:
        pass


_leaf_seed = pack_leaf([LeafEntry(b"ns", bytes([97 + i]), i, 5, BlockRef(9, 1, 33, bytes(32)))
                        for i in range(4)])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=NODE_CAPACITY + 10)
       | st.builds(lambda i, b: _leaf_seed[:i] + b + _leaf_seed[i + len(b):],
                   st.integers(0, len(_leaf_seed)), st.binary(min_size=1, max_size=4)))
def test_fuzz_parse_node(data: bytes) -> None:
    try:
        level, items = parse_node(data)
    except IntegrityError:
        return
    assert items and (level == 0) == isinstance(items[0], LeafEntry)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(slot=st.integers(0, 1), offset=st.integers(0, 255), mask=st.integers(1, 255))
def test_fuzz_superblock_corruption_never_crashes_open(make_env, slot: int, offset: int, mask: int) -> None:
    env = make_env(blocks=64)
    s = env.open()
    s.put("n", "k", b"v")
    s.put("n", "k", b"w")
    block = bytearray(env.image.read_block(slot))
    block[offset] ^= mask
    env.image.write_block(slot, bytes(block))
    try:
        s2 = env.open()
    except IntegrityError:
        return
    assert s2.get("n", "k") in (b"v", b"w")  # the other slot: an older, consistent state


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_random_data_blocks_never_crash_open(make_env, seed: int) -> None:
    env = make_env(blocks=64)
    s = env.open()
    s.commit([Put("n", str(i), bytes(50)) for i in range(20)])
    r = random.Random(seed)
    lba = r.randrange(2, s._alloc.high_water)
    env.image.write_block(lba, r.randbytes(BLOCK_SIZE))
    try:
        s2 = env.open()
        s2.scrub()
    except IntegrityError:
        return
    raise AssertionError(f"random block {lba} went unnoticed")


def test_store_open_on_random_device_contents(make_env) -> None:
    env = make_env(blocks=16)
    r = random.Random(1)
    for lba in range(16):
        env.image.write_block(lba, r.randbytes(BLOCK_SIZE))
    with pytest.raises(IntegrityError):
        Store.open(env.device(), env.key, clock=env.clock, rng=env.rng)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=40))
def test_fuzz_record_unseal(blob: bytes, aad: bytes) -> None:
    from svsm.modules.persist._seal import Sealer

    sealer = Sealer(bytes(32), b"s" * 16, random.Random(0).randbytes)
    good = sealer.seal("record", b"value", b"aad")
    assert sealer.unseal("record", good, b"aad") == b"value"
    for candidate, a in ((blob, aad), (good[:-1] + bytes([good[-1] ^ 1]), b"aad"), (good, aad + b"x")):
        with pytest.raises(IntegrityError):
            sealer.unseal("record", candidate, a)
    with pytest.raises(IntegrityError):
        sealer.unseal("node", good, b"aad")  # a record can never be opened as another kind

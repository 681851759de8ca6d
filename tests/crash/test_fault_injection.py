"""Stop a commit at every write and fsync boundary, under every crash policy, and reopen.

After each injected crash the store must open to exactly the last acknowledged state or the
state of the interrupted commit -- never a mix, never an authentication failure.
"""

from __future__ import annotations

import itertools
import random

import pytest

from svsm.kernel.hw.blockdev import BlockDevice, CrashPolicy, FaultInjector, MemoryImage, SimulatedCrash
from svsm.modules.persist import Quota, Store

KEY = bytes(range(32))
QUOTA = Quota(1 << 20, 1 << 30)
COMMITS = 12


def _open(image: MemoryImage, rng, faults: FaultInjector | None = None) -> Store:
    clock = itertools.count(1).__next__
    return Store.open(BlockDevice(image, volatile_cache=True, faults=faults), KEY, clock=clock,
                      rng=rng, default_quota=QUOTA)


def _run(workload, crash_at: int | None, policy: str, seed: int):
    """Run the workload on a fresh image; returns (image, last acked gen, in-flight gen, boundaries)."""
    image = MemoryImage(160)
    rng = random.Random(seed).randbytes
    faults = FaultInjector(crash_at=crash_at, policy=policy, rng=random.Random(seed))
    acked, inflight = 0, 1
    try:
        store = _open(image, rng, faults)
        acked = 1
        for gen in range(2, COMMITS + 2):
            inflight = gen
            assert store.commit(workload.batch(gen)) == gen
            acked = gen
        inflight = None
    except SimulatedCrash:
        pass
    return image, acked, inflight, faults.boundaries


def _boundaries(workload) -> int:
    return _run(workload, None, CrashPolicy.LOSE_ALL, 0)[3]


@pytest.mark.parametrize("policy", CrashPolicy.ALL)
def test_every_boundary(workload, policy: str) -> None:
    total = _boundaries(workload)
    assert total > COMMITS * 4
    outcomes = {"acked": 0, "inflight": 0}
    for crash_at in range(total):
        image, acked, inflight, _ = _run(workload, crash_at, policy, seed=crash_at)
        rng = random.Random(10_000 + crash_at).randbytes
        store = _open(image, rng)  # a blank image (crash during format) is formatted again
        got = workload.read(store)
        if store.generation == acked or (acked == 0 and store.generation == 1):
            assert got == workload.model(max(acked, 1)), f"boundary {crash_at}: mixed state"
            outcomes["acked"] += 1
        else:
            assert store.generation == inflight, f"boundary {crash_at}: gen {store.generation}, acked {acked}"
            assert got == workload.model(inflight), f"boundary {crash_at}: mixed state"
            outcomes["inflight"] += 1
        assert store.scrub() == len(got)
        # the recovered store keeps working and survives another reopen
        nxt = store.commit(workload.batch(store.generation + 1))
        assert workload.read(_open(image, rng)) == workload.model(nxt)
    assert outcomes["acked"] > 0
    if policy == CrashPolicy.KEEP_ALL:
        assert outcomes["inflight"] > 0  # a crash after the superblock write keeps the new state


def test_crash_at_the_last_fsync_loses_only_the_unacknowledged_commit(workload) -> None:
    total = _boundaries(workload)
    image, acked, inflight, _ = _run(workload, total - 1, CrashPolicy.LOSE_ALL, 0)
    assert (acked, inflight) == (COMMITS, COMMITS + 1)
    store = _open(image, random.Random(5).randbytes)
    assert store.generation == COMMITS and workload.read(store) == workload.model(COMMITS)


def test_acknowledged_commits_survive_losing_the_cache(workload) -> None:
    image, acked, inflight, total = _run(workload, None, CrashPolicy.LOSE_ALL, 0)
    assert inflight is None
    store = _open(image, random.Random(5).randbytes)
    assert store.generation == acked == COMMITS + 1
    assert workload.read(store) == workload.model(acked)


@pytest.mark.parametrize("policy", [CrashPolicy.KEEP_ALL, CrashPolicy.RANDOM])
def test_every_boundary_with_the_anchor_never_raises_a_false_alarm(workload, policy: str) -> None:
    """A crash anywhere (including between the superblock and the anchor update) is not a rollback."""
    from types import SimpleNamespace

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from svsm.modules.persist import AnchorClient, AnchorService

    total = _boundaries(workload)
    key = Ed25519PrivateKey.generate()
    for crash_at in range(0, total, 1 if policy == CrashPolicy.KEEP_ALL else 3):
        now = [0]
        service = AnchorService(key, lambda r, v: SimpleNamespace(measurement=b"M" * 48, report_data=r, vmpl=0, policy=0x30000),
                                clock=lambda: now[0], rng=random.Random(crash_at).randbytes)
        rng = random.Random(crash_at).randbytes

        def anchored(image, faults=None):
            client = AnchorClient(service.handle, lambda rd: (rd, b""), rng=rng)
            return Store.open(BlockDevice(image, volatile_cache=True, faults=faults), KEY,
                              clock=itertools.count(1).__next__, rng=rng, anchor=client, default_quota=QUOTA)

        image = MemoryImage(160)
        faults = FaultInjector(crash_at=crash_at, policy=policy, rng=random.Random(crash_at))
        acked, inflight = 0, 1
        try:
            store = anchored(image, faults)
            acked = 1
            for gen in range(2, COMMITS + 2):
                inflight = gen
                store.commit(workload.batch(gen))
                acked = gen
        except SimulatedCrash:
            pass
        now[0] += 31 * 10**9  # the crashed instance's lease expires
        reopened = anchored(image)
        assert reopened.generation in (max(acked, 1), inflight), (crash_at, acked, inflight)
        assert workload.read(reopened) == workload.model(reopened.generation)
        reopened.commit(workload.batch(reopened.generation + 1))

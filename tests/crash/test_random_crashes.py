"""Random workloads, a crash at a random boundary under a random policy: never a mixed state."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from svsm.kernel.hw.blockdev import BlockDevice, CrashPolicy, FaultInjector, MemoryImage, SimulatedCrash
from svsm.modules.persist import Delete, Put, Quota, Store

KEY = bytes(range(32))

op = st.one_of(
    st.builds(Put, st.sampled_from(["a", "b"]), st.text("pqrs", min_size=1, max_size=40),
              st.binary(max_size=5000)),
    st.builds(Delete, st.sampled_from(["a", "b"]), st.text("pqrs", min_size=1, max_size=40)),
)


def _apply(model: dict, ops: list) -> dict:
    model = dict(model)
    for o in ops:
        if isinstance(o, Put):
            model[(o.ns, o.key)] = o.value
        else:
            model.pop((o.ns, o.key), None)
    return model


def _open(image: MemoryImage, seed: int, faults=None) -> Store:
    return Store.open(BlockDevice(image, volatile_cache=True, faults=faults), KEY, clock=itertools.count().__next__,
                      rng=random.Random(seed).randbytes, default_quota=Quota(1 << 20, 1 << 30))


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(op, min_size=1, max_size=12), min_size=1, max_size=8),
       crash_at=st.integers(0, 400), policy=st.sampled_from(CrashPolicy.ALL), seed=st.integers(0, 2**16))
def test_random_crash_yields_a_committed_state(batches, crash_at, policy, seed) -> None:
    image = MemoryImage(400)
    states = [{}]  # states[i]: contents after i acknowledged commits
    acked = 0
    try:
        store = _open(image, seed, FaultInjector(crash_at, policy, random.Random(seed)))
        for ops in batches:
            states.append(_apply(states[-1], ops))
            store.commit(ops)
            acked += 1
    except SimulatedCrash:
        pass
    reopened = _open(image, seed + 1)
    got = {(ns, k): reopened.get(ns, k) for ns in "ab" for k in reopened.list(ns)}
    allowed = [states[acked]] + ([states[acked + 1]] if acked + 1 < len(states) else [])
    assert got in allowed, f"crash at {crash_at} ({policy}) after {acked} commits: not a committed state"

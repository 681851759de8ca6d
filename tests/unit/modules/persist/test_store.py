"""Store semantics: get/put/delete/list, atomic batches, namespaces, quotas, reopen."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svsm.modules.persist import (BadKey, Delete, IntegrityError, Put, Quota, QuotaExceeded, Store,
                                  StoreFull, StoreUnavailable)
from svsm.sdk import InvalidParameter, InvalidRequest, ResultCode

OTHER_KEY = bytes(range(1, 33))


def test_put_get_delete_and_reopen(env) -> None:
    s = env.open()
    assert s.generation == 1 and s.get("tpm", "nv") is None
    assert s.put("tpm", "nv", b"hello") == 2
    assert s.get("tpm", "nv") == b"hello"
    s.put("tpm", "nv", b"world")
    s.put("tpm", "seed", b"")
    assert s.delete("tpm", "seed") == 5
    assert s.delete("tpm", "absent") == 6
    s2 = env.open()
    assert s2.generation == 6 and s2.get("tpm", "nv") == b"world" and s2.get("tpm", "seed") is None


def test_namespaces_are_separate_and_list_is_ordered(env) -> None:
    s = env.open()
    s.commit([Put("a", "k2", b"1"), Put("a", "k1", b"2"), Put("b", "k1", b"3"), Put("a", "x", b"4")])
    assert s.list("a") == ["k1", "k2", "x"]
    assert s.list("a", prefix="k") == ["k1", "k2"]
    assert s.list("b") == ["k1"] and s.list("c") == []
    assert s.get("b", "k1") == b"3" and s.get("a", "k1") == b"2"


def test_batch_is_one_generation_and_last_op_wins(env) -> None:
    s = env.open()
    gen = s.commit([Put("n", "a", b"1"), Put("n", "b", b"2"), Delete("n", "a"), Put("n", "b", b"3")])
    assert gen == 2
    assert s.get("n", "a") is None and s.get("n", "b") == b"3"
    assert s.commit([]) == 2  # empty batch: no commit


def test_bad_keys_are_request_errors_and_change_nothing(env) -> None:
    s = env.open()
    for ns, key in [("", "k"), ("n", ""), ("n" * 65, "k"), ("n", "k" * 256), ("n", "\udc80")]:
        with pytest.raises(BadKey) as ei:
            s.put(ns, key, b"v")
        assert isinstance(ei.value, InvalidParameter) and ei.value.code == ResultCode.INVALID_PARAMETER
    with pytest.raises(BadKey):
        s.put("n", "k", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(BadKey):
        s.commit([Put("n", "ok", b"1"), ("n", "tuple")])  # type: ignore[list-item]
    assert s.generation == 1 and s.get("n", "ok") is None


def test_quota_per_namespace(env) -> None:
    s = env.open(quotas={"small": Quota(max_records=2, max_bytes=10)})
    s.commit([Put("small", "a", b"12345"), Put("small", "b", b"12345")])
    with pytest.raises(QuotaExceeded) as ei:
        s.put("small", "c", b"")
    assert isinstance(ei.value, InvalidRequest) and ei.value.code == ResultCode.INVALID_REQUEST
    with pytest.raises(QuotaExceeded):
        s.put("small", "a", b"123456")  # bytes over quota
    s.put("small", "a", b"1234")  # shrinking is fine
    s.commit([Delete("small", "b"), Put("small", "c", b"1")])  # a delete makes room in the same batch
    assert s.usage("small") == (2, 5)
    s.put("other", "c", b"x" * 100)  # the default quota applies elsewhere


def test_store_full_rolls_back_and_keeps_serving(make_env) -> None:
    env = make_env(blocks=24)
    s = env.open()
    s.put("n", "a", b"x" * 20000)  # 5 blocks
    before = s.statistics()
    with pytest.raises(StoreFull):
        s.put("n", "b", b"y" * 60000)
    assert s.statistics().blocks_used == before.blocks_used and s.failed is None
    s.put("n", "c", b"small")
    s2 = env.open()
    assert s2.get("n", "a") == b"x" * 20000 and s2.get("n", "b") is None and s2.get("n", "c") == b"small"


def test_wrong_key_cannot_unseal(env) -> None:
    env.open().put("tpm", "seed", b"secret")
    with pytest.raises(IntegrityError):
        env.open(key=OTHER_KEY)
    assert env.open().get("tpm", "seed") == b"secret"


def test_blank_device_required_to_format(env) -> None:
    with pytest.raises(StoreUnavailable):
        env.open(create=False)
    env.open()
    assert env.open(create=False).generation == 1


def test_statistics_and_close(env) -> None:
    s = env.open()
    s.commit([Put("a", str(i), bytes(100)) for i in range(50)])
    st = s.statistics()
    assert (st.records, st.namespaces, st.value_bytes, st.commits, st.anchored) == (50, 1, 5000, 1, False)
    assert st.blocks_used > 50 and not st.failed
    s.close()
    assert s.statistics().failed
    with pytest.raises(StoreUnavailable):
        s.get("a", "1")


def test_scrub_reads_every_record(env) -> None:
    s = env.open()
    s.commit([Put("a", str(i), bytes([i]) * i) for i in range(30)])
    assert s.scrub() == 30


def test_large_tree_reopens_with_every_record(make_env) -> None:
    env = make_env(blocks=2048)
    s = env.open()
    keys = [f"key-{i:05d}-" + "p" * (i % 200) for i in range(600)]
    for i in range(0, 600, 100):
        s.commit([Put("ns", k, k.encode()) for k in keys[i:i + 100]])
    assert s.statistics().index_depth >= 2
    s.commit([Delete("ns", k) for k in keys[::2]])
    s2 = env.open()
    assert s2.list("ns") == sorted(keys[1::2])
    assert all(s2.get("ns", k) == k.encode() for k in keys[1::2])
    assert s2.statistics().blocks_used == s.statistics().blocks_used


ops = st.lists(
    st.tuples(st.sampled_from(["put", "del", "reopen"]), st.sampled_from(["a", "b"]),
              st.text(alphabet="xyz", min_size=1, max_size=3), st.binary(max_size=600)),
    max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_matches_a_dict_model(make_env, seq) -> None:
    env = make_env(blocks=256)
    s, model = env.open(), {}
    for op, ns, key, value in seq:
        if op == "put":
            s.put(ns, key, value)
            model[(ns, key)] = value
        elif op == "del":
            s.delete(ns, key)
            model.pop((ns, key), None)
        else:
            s = env.open()
    for (ns, key), value in model.items():
        assert s.get(ns, key) == value
    for ns in "ab":
        assert s.list(ns) == sorted(k for n, k in model if n == ns)
    assert s.statistics().records == len(model)


def test_store_rejects_other_block_sizes(env) -> None:
    class Odd:
        block_size = 512
        num_blocks = 100

    with pytest.raises(Exception) as ei:
        Store.open(Odd(), env.key, clock=env.clock, rng=env.rng)  # type: ignore[arg-type]
    assert "block size" in str(ei.value) or ei.type.__name__ == "PersistError"


def test_concurrent_callers_see_whole_commits(make_env) -> None:
    import threading

    env = make_env(blocks=1024)
    s = env.open()
    errors: list[BaseException] = []

    def writer(ns: str) -> None:
        try:
            for i in range(40):
                s.commit([Put(ns, "a", b"%d" % i), Put(ns, "b", b"%d" % i)])
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(200):
                for ns in ("w0", "w1"):
                    a, b = s.get(ns, "a"), s.get(ns, "b")
                    if a is not None and b is not None:
                        assert int(b) >= int(a) - 1  # never a torn batch far behind
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(2)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert s.generation == 81 and s.get("w0", "a") == s.get("w1", "b") == b"39"
    assert env.open().statistics().records == 4

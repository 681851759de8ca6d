"""SpinLock: mutual exclusion, FIFO tickets, guards, owners, statistics."""

from __future__ import annotations

import threading
import time

import pytest

from svsm.kernel.sync import LockNotHeld, LockOrderChecker, SelfDeadlock, SpinLock
from svsm.sdk import FatalError


@pytest.fixture
def checker() -> LockOrderChecker:
    return LockOrderChecker(enabled=True)


def test_mutual_exclusion_under_threads(checker: LockOrderChecker) -> None:
    lock = SpinLock([0], name="counter", checker=checker)
    inside = [0]
    bad = []

    def worker() -> None:
        for _ in range(300):
            with lock as g:
                inside[0] += 1
                if inside[0] != 1:
                    bad.append(inside[0])
                v = g.value[0]
                time.sleep(0) if v % 50 == 0 else None
                g.value[0] = v + 1
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    assert lock.try_lock() is not None  # free again
    st = lock.statistics()
    assert st.acquisitions == 4 * 300 + 1
    assert 0 <= st.contentions <= 4 * 300


def test_tickets_are_served_in_order(checker: LockOrderChecker) -> None:
    lock = SpinLock(name="fifo", checker=checker)
    order: list[int] = []
    g = lock.lock()
    threads = []
    for i in range(4):
        t = threading.Thread(target=lambda i=i: (lock.lock(), order.append(i), lock._unlock()))
        t.start()
        threads.append(t)
        # wait until thread i holds its ticket before starting the next
        deadline = time.monotonic() + 5
        while lock._current != i + 2 and time.monotonic() < deadline:
            time.sleep(0.001)
    assert lock.statistics().contentions == 4
    g.release()
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3]


def test_try_lock_fails_when_held_and_succeeds_when_free(checker: LockOrderChecker) -> None:
    lock = SpinLock(name="t", checker=checker)
    g = lock.lock()
    got = []
    t = threading.Thread(target=lambda: got.append(lock.try_lock()))
    t.start()
    t.join()
    assert got == [None]
    g.release()
    g2 = lock.try_lock()
    assert g2 is not None and lock.owner == threading.get_ident()
    g2.release()
    assert lock.owner is None and not lock.locked()


def test_guard_released_on_exception(checker: LockOrderChecker) -> None:
    lock = SpinLock(name="exc", checker=checker)
    with pytest.raises(RuntimeError):
        with lock:
            assert lock.held_by_me()
            raise RuntimeError("boom")
    assert not lock.locked()
    assert checker.held_classes() == []


def test_guard_value_and_map(checker: LockOrderChecker) -> None:
    class State:
        def __init__(self) -> None:
            self.vmsas = [1]

    lock = SpinLock(State(), name="m", checker=checker)
    with lock.lock().map(lambda s: s.vmsas) as mg:
        mg.value.append(2)
        assert lock.locked()
    assert not lock.locked()
    with lock as g:
        assert g.value.vmsas == [1, 2]
        g.value = State()
    with lock as g:
        assert g.value.vmsas == [1]


def test_relock_by_owner_is_self_deadlock(checker: LockOrderChecker) -> None:
    lock = SpinLock(name="self", checker=checker)
    with lock:
        with pytest.raises(SelfDeadlock) as ei:
            lock.lock()
    assert isinstance(ei.value, FatalError)
    assert not lock.locked()


def test_release_by_other_thread_and_double_release(checker: LockOrderChecker) -> None:
    lock = SpinLock(name="own", checker=checker)
    g = lock.lock()
    errs = []

    def other() -> None:
        try:
            g.release()
        except LockNotHeld as e:
            errs.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errs) == 1 and lock.locked()
    g.release()
    with pytest.raises(LockNotHeld):
        g.release()
    with pytest.raises(LockNotHeld):
        _ = g.value


def test_default_name_is_creation_site() -> None:
    lock = SpinLock()
    assert lock.name.endswith(f"test_spinlock.py:{test_default_name_is_creation_site.__code__.co_firstlineno + 1}")


def test_early_guard_release_inside_with(checker: LockOrderChecker) -> None:
    lock = SpinLock(name="early", checker=checker)
    with lock as g:
        g.release()
        assert not lock.locked()
        other = threading.Thread(target=lambda: lock.lock())  # another thread takes it meanwhile
        other.start()
        other.join()
    assert lock.locked() and lock.owner == other.ident  # our exit did not release theirs


def test_all_lock_statistics_lists_live_locks() -> None:
    import gc

    from svsm.kernel.sync import RWLock, all_lock_statistics

    a = SpinLock(name="zz.registry.spin")
    b = RWLock(name="zz.registry.rw")
    with a:
        pass
    names = {st.name: st for st in all_lock_statistics()}
    assert names["zz.registry.spin"].acquisitions == 1 and "zz.registry.rw" in names
    del a, b
    gc.collect()
    assert not {"zz.registry.spin", "zz.registry.rw"} & {st.name for st in all_lock_statistics()}

"""RWLock: COCONUT state word, shared readers, exclusive writer, writer preference."""

from __future__ import annotations

import threading
import time

import pytest

from svsm.kernel.sync import RWLock
from svsm.kernel.sync import LockNotHeld, LockOrderChecker, SelfDeadlock
from svsm.kernel.sync._rwlock import WRITER_SHIFT


@pytest.fixture
def checker() -> LockOrderChecker:
    return LockOrderChecker(enabled=True)


def _wait_for(pred, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.001)


def test_state_word_layout(checker: LockOrderChecker) -> None:
    rw = RWLock(name="w", checker=checker)
    r1, r2 = rw.read(), rw.read()
    assert rw.state == 2
    r1.release()
    r2.release()
    w = rw.write()
    assert rw.state == 1 << WRITER_SHIFT == 1 << 32
    assert rw.writer == threading.get_ident()
    w.release()
    assert rw.state == 0


def test_readers_share_writer_excludes(checker: LockOrderChecker) -> None:
    rw = RWLock({"x": 0}, name="rw", checker=checker)
    r = rw.read()
    r2 = rw.try_read()
    assert r2 is not None and rw.state == 2  # readers share
    r2.release()
    assert rw.try_write() is None
    got = []
    t = threading.Thread(target=lambda: got.append(rw.write()))
    t.start()
    _wait_for(lambda: rw.state >> 32 == 1)  # writer registered, waiting for readers
    assert not got
    assert rw.try_read() is None  # writer preference: new readers queue
    r.release()
    t.join()
    assert len(got) == 1 and rw.writer == t.ident


def test_writers_mutually_exclusive_under_threads(checker: LockOrderChecker) -> None:
    rw = RWLock([0], name="counter", checker=checker)
    seen_inconsistent = []

    def writer() -> None:
        for _ in range(200):
            with rw.write() as g:
                v = g.value[0]
                g.value[0] = v + 1

    def reader() -> None:
        for _ in range(200):
            with rw.read() as g:
                a = g.value[0]
                b = g.value[0]
                if a != b:
                    seen_inconsistent.append((a, b))

    ts = [threading.Thread(target=writer) for _ in range(3)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with rw.read() as g:
        assert g.value[0] == 600
    assert not seen_inconsistent
    st = rw.statistics()
    assert st.write_acquisitions == 600 and st.read_acquisitions == 401 and st.readers == 0


def test_guard_release_on_exception_and_misuse(checker: LockOrderChecker) -> None:
    rw = RWLock(name="e", checker=checker)
    with pytest.raises(KeyError):
        with rw.write():
            raise KeyError("x")
    assert rw.state == 0
    with rw.write():
        with pytest.raises(SelfDeadlock):
            rw.read()
        with pytest.raises(SelfDeadlock):
            rw.write()
    g = rw.read()
    g.release()
    with pytest.raises(LockNotHeld):
        g.release()
    with pytest.raises(LockNotHeld):
        rw._write_unlock()


def test_write_guard_sets_value(checker: LockOrderChecker) -> None:
    rw = RWLock(1, name="v", checker=checker)
    with rw.write() as g:
        g.value = 5
    with rw.read() as r:
        assert r.value == 5


def test_guards_map_to_a_sub_field(checker: LockOrderChecker) -> None:
    rw = RWLock({"vmsas": [1]}, name="map", checker=checker)
    with rw.write().map(lambda d: d["vmsas"]) as mg:
        mg.value.append(2)
        assert rw.writer is not None
    assert rw.state == 0
    with rw.read().map(lambda d: d["vmsas"]) as mg:
        assert mg.value == [1, 2] and rw.state == 1
    assert rw.state == 0


def test_self_deadlocks_are_reported_not_hung(checker: LockOrderChecker) -> None:
    rw = RWLock(name="sd", checker=checker)
    r = rw.read()
    r2 = rw.read()  # recursive read with no writer waiting is fine
    with pytest.raises(SelfDeadlock):
        rw.write()  # upgrade would wait for ourselves
    assert rw.try_write() is None
    t = threading.Thread(target=lambda: rw.write().release(), daemon=True)
    t.start()
    _wait_for(lambda: rw.state >> 32 == 1)  # a writer now waits for our readers
    with pytest.raises(SelfDeadlock):
        rw.read()  # would queue behind the writer that waits for us
    r2.release()
    r.release()
    t.join(5)
    assert rw.state == 0 and not t.is_alive()


def test_read_guard_released_by_another_thread_is_refused(checker: LockOrderChecker) -> None:
    rw = RWLock(name="xthread", checker=checker)
    g = rw.read()
    errs: list[BaseException] = []

    def other() -> None:
        try:
            g.release()
        except LockNotHeld as e:
            errs.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errs) == 1 and rw.state == 1
    g.release()  # the guard is still live for its owner
    assert rw.state == 0

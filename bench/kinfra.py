"""Benchmark of the kernel infrastructure hot paths (owner: KINFRA).

Each figure is printed with a baseline measured in the same run and their ratio:

* SpinLock lock+unlock (uncontended, order checker off and on) vs ``threading.Lock``, and with
  four threads contending (FIFO tickets vs the unfair raw lock);
* RWLock read lock+unlock vs ``threading.Lock``;
* buddy ``allocate_page`` + ``free_page`` vs a dict insert+delete (the cheapest bookkeeping);
* slab ``allocate(64)`` + ``free`` vs the same dict baseline;
* a 4-level page walk (``translate``) vs one direct ``read_u64`` of physical memory;
* scheduler: timer round trips (call_later + FakeClock.advance + wait_idle) per second.

Run: ``python bench/kinfra.py [--quick]``.
"""

from __future__ import annotations

import os
import sys

# bench/platform.py would shadow the stdlib ``platform`` module when run as a script.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from svsm.kernel.mm import PAGE_SIZE, SVSM_GLOBAL_BASE, PageAllocator, PageTable, SlabAllocator, SparseMemory  # noqa: E402
from svsm.kernel.sched import FakeClock, Scheduler  # noqa: E402
from svsm.kernel.sync import LockOrderChecker, RWLock, SpinLock  # noqa: E402


def rate(fn: Callable[[], None], n: int, repeat: int = 3) -> float:
    """Best-of-``repeat`` operations per second of ``fn`` called ``n`` times."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def line(name: str, ours: float, base: float, base_name: str) -> None:
    print(f"{name:38s} {ours:12,.0f}/s   {base_name:24s} {base:12,.0f}/s   ratio {ours / base:6.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    args = ap.parse_args(argv)
    n = 20_000 if args.quick else 200_000

    raw = threading.Lock()

    def raw_pair() -> None:
        with raw:
            pass

    base_lock = rate(raw_pair, n)
    off = SpinLock(name="bench.off", checker=LockOrderChecker(enabled=False))
    on_checker = LockOrderChecker(enabled=True)
    on = SpinLock(name="bench.on", checker=on_checker)
    outer = SpinLock(name="bench.outer", checker=on_checker)

    def spin_off() -> None:
        with off:
            pass

    def spin_on() -> None:
        with on:
            pass

    def spin_nested() -> None:
        with outer, on:
            pass

    line("SpinLock lock+unlock (checker off)", rate(spin_off, n), base_lock, "threading.Lock")
    line("SpinLock lock+unlock (checker on)", rate(spin_on, n), base_lock, "threading.Lock")
    line("SpinLock nested pair (checker on)", rate(spin_nested, n // 2), base_lock / 2, "2 x threading.Lock")
    def contended(lock_cm: Callable[[], object], threads: int = 4, per: int = n // 100) -> float:
        def work() -> None:
            for _ in range(per):
                with lock_cm():  # type: ignore[attr-defined]
                    time.sleep(0)  # give the GIL away while holding: real contention

        ts = [threading.Thread(target=work) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return threads * per / (time.perf_counter() - t0)

    fifo = SpinLock(name="bench.contended", checker=LockOrderChecker(enabled=False))
    ours_c = contended(lambda: fifo)
    line("SpinLock, 4 threads contending", ours_c, contended(lambda: raw), "threading.Lock (unfair)")
    print(f"{'':38s} contentions {fifo.statistics().contentions:,} of {fifo.statistics().acquisitions:,}")
    rw = RWLock(name="bench.rw", checker=LockOrderChecker(enabled=False))

    def rw_read() -> None:
        with rw.read():
            pass

    line("RWLock read lock+unlock", rate(rw_read, n), base_lock, "threading.Lock")

    d: dict[int, int] = {}

    def dict_pair() -> None:
        d[1] = 1
        del d[1]

    base_dict = rate(dict_pair, n)
    mem = SparseMemory(1 << 40)
    for track in (False, True):
        pa = PageAllocator(mem, track_call_sites=track)
        pa.add_range(0x100_0000, 1024 * PAGE_SIZE)

        def page_pair(pa: PageAllocator = pa) -> None:
            pa.free_page(pa.allocate_page())

        line(f"buddy alloc+free (sites {'on' if track else 'off'})", rate(page_pair, n // 4), base_dict,
             "dict insert+delete")
        heap = SlabAllocator(pa)

        def slab_pair(heap: SlabAllocator = heap) -> None:
            heap.free(heap.allocate(64))

        line(f"slab 64 B alloc+free (sites {'on' if track else 'off'})", rate(slab_pair, n // 4), base_dict,
             "dict insert+delete")

    pt = PageTable(mem, pa, c_bit=51)
    va = SVSM_GLOBAL_BASE + 0x1234_5000
    pt.map_4k(va, 0x5000_0000)
    line("page walk (translate, 4 levels)", rate(lambda: pt.translate(va), n // 4),
         rate(lambda: mem.read_u64(0x5000_0000), n), "one physical read_u64")

    clock = FakeClock()
    sched = Scheduler(1, clock=clock)
    fired = [0]

    def bump() -> None:
        fired[0] += 1

    def timer_round_trip() -> None:
        sched.call_later(1.0, bump)
        clock.advance(1.0)
        sched.wait_idle()

    m = max(200, n // 200)
    ours = rate(timer_round_trip, m, repeat=1)
    ev = threading.Event()

    def thread_round_trip() -> None:
        t = threading.Thread(target=ev.set)
        t.start()
        t.join()

    line("timer round trip (fake clock)", ours, rate(thread_round_trip, m, repeat=1), "thread start+join")
    sched.shutdown()
    assert fired[0] == m
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

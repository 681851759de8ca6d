"""Benchmark of the SVSM request path (owner: KCORE).

Each figure is printed with a baseline measured in the same run and their ratio:

* QUERY_PROTOCOL calls/s through the whole path (guest registers -> calling area -> RUN_VMPL
  through the hypervisor -> VMPL switch -> SVSM request loop -> dispatch -> results written
  back -> RUN_VMPL back) vs. bare Python doing the same register marshalling (pack five
  registers into a VMSA-shaped bytearray, set/clear call_pending, unpack, dispatch, pack back);
* PVALIDATE of 1 GiB through the SVSM (page state change + the SVSM's PVALIDATE list, 2 MiB
  entries) in pages/s, and of 32 MiB with 4 KiB entries, vs. the bare VMPL0 PVALIDATE
  instruction on the same number of 4 KiB pages (what the SVSM adds per page);
* scaling: total QUERY_PROTOCOL calls/s with 1, 2, 4, 8, 16 vCPUs each calling from its own
  thread, relative to 1 vCPU (the GIL makes the simulator's calls serialise; the figure shows
  that per-vCPU loops add no lock contention of their own);
* kernel work at VMPL0 (a module's PSP report) from a kernel thread while every vCPU runs the
  guest (the host interrupts a vCPU into the SVSM) vs. the same report served on the vCPU
  thread inside a guest call: what reaching a vCPU costs on top of the guest request itself.

Run: ``python bench/calls.py [--quick]``.
"""

from __future__ import annotations

import os
import sys

# Run as a script, bench/ comes first on sys.path and bench/platform.py would shadow the stdlib
# ``platform`` module: drop that entry first.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from svsm.kernel import boot  # noqa: E402
from svsm.kernel.hw import PAGE_SIZE  # noqa: E402

GIB = 1 << 30


def bench_query(calls: int) -> None:
    with boot(vcpus=1, memory="12M") as cvm:
        g = cvm.guest
        for _ in range(50):
            g.query_protocol(0)
        t = time.perf_counter()
        for _ in range(calls):
            g.query_protocol(0)
        full = calls / (time.perf_counter() - t)

    vmsa, ca = bytearray(4096), bytearray(4096)
    q = struct.Struct("<Q")
    offs = (0x1F8, 0x308, 0x310, 0x340, 0x348)
    table = {0: {6: lambda rcx: (1 << 32 | 1) if rcx >> 32 in (0, 1) and rcx & 0xFFFF_FFFF == 1 else 0}}

    def bare(rcx: int) -> int:
        for off, v in zip(offs, (6, rcx, 0, 0, 0), strict=True):  # guest loads registers
            q.pack_into(vmsa, off, v)
        ca[0] = 1
        rax = q.unpack_from(vmsa, 0x1F8)[0]  # SVSM side
        regs = [q.unpack_from(vmsa, o)[0] for o in offs[1:]]
        if ca[0] == 1:
            ca[0] = 0
            out = table[rax >> 32][rax & 0xFFFF_FFFF](regs[0])
            q.pack_into(vmsa, 0x308, out)
            q.pack_into(vmsa, 0x1F8, 0)
        pending, ca[0] = ca[0], 0  # guest xchg
        return q.unpack_from(vmsa, 0x308)[0]

    t = time.perf_counter()
    for _ in range(calls):
        bare(1)
    base = calls / (time.perf_counter() - t)
    print(f"QUERY_PROTOCOL full path : {full:10.0f} calls/s")
    print(f"bare register marshalling: {base:10.0f} calls/s   ratio full/bare = {full / base:.4f} (1/{base / full:.0f})")


def bench_pvalidate(quick: bool) -> None:
    size = (256 << 20) if quick else GIB
    with boot(vcpus=1, memory=size + (4 << 20)) as cvm:
        g = cvm.guest
        t = time.perf_counter()
        n = g.accept_memory(0, size)
        dt = time.perf_counter() - t
        pages = n // PAGE_SIZE
        print(f"accept {n >> 20} MiB via SVSM (2 MiB entries): {pages / dt:12.0f} pages/s ({dt:.2f} s)")
    small = 32 << 20
    with boot(vcpus=1, memory=small + (8 << 20)) as cvm:
        from svsm.kernel.hw import PageStateChangeEntry, PageStateChangeOp
        from svsm.sdk.guest import PvalidateEntry

        g = cvm.guest
        base = 2 << 20
        npages = (small - base) // PAGE_SIZE
        g._psc([PageStateChangeEntry((base >> 12) + i, PageStateChangeOp.PRIVATE) for i in range(npages)])
        t = time.perf_counter()
        g.pvalidate([PvalidateEntry(base + i * PAGE_SIZE) for i in range(npages)])
        svsm_rate = npages / (time.perf_counter() - t)
        # baseline: the bare instruction at VMPL0 (rescind + validate the same pages again)
        v = cvm.platform.vcpus[0]
        g.pvalidate([PvalidateEntry(base + i * PAGE_SIZE, validate=False) for i in range(npages)])
        prev = v.vmpl
        v.vmrun(0)  # become the SVSM on this vCPU for the baseline
        try:
            t = time.perf_counter()
            for i in range(npages):
                v.pvalidate(base + i * PAGE_SIZE, 0, True, vmpl=0)
            bare_rate = npages / (time.perf_counter() - t)
        finally:
            v.vmrun(prev)
    print(f"PVALIDATE via SVSM, 4 KiB entries: {svsm_rate:10.0f} pages/s")
    print(f"bare VMPL0 PVALIDATE instruction : {bare_rate:10.0f} pages/s   ratio svsm/bare = {svsm_rate / bare_rate:.3f}")


def bench_scaling(calls: int) -> None:
    with boot(vcpus=16, memory="16M") as cvm:
        g = cvm.guest
        g.accept_memory(0x10_0000, 0x30_0000)
        guests: list[Any] = [g] + [g.start_ap(a) for a in range(1, 16)]
        rates = {}
        for n in (1, 2, 4, 8, 16):
            barrier = threading.Barrier(n + 1)

            def work(x: Any) -> None:
                barrier.wait()
                for _ in range(calls):
                    x.query_protocol(0)

            threads = [threading.Thread(target=work, args=(x,)) for x in guests[:n]]
            for th in threads:
                th.start()
            barrier.wait()
            t = time.perf_counter()
            for th in threads:
                th.join()
            rates[n] = n * calls / (time.perf_counter() - t)
        for n, r in rates.items():
            print(f"{n:2d} vCPUs: {r:10.0f} calls/s   scaling vs 1 vCPU = {r / rates[1]:.2f}")


def bench_kernel_work(n: int) -> None:
    from svsm.kernel.protocols import RequestParams

    class Host:  # protocol 9: a module whose call makes one PSP report syscall
        svsm: Any = None

        def serves(self, protocol: int) -> bool:
            return protocol == 9

        def protocol_versions(self, protocol: int) -> tuple[int, int] | None:
            return (1, 1) if protocol == 9 else None

        def handle_request(self, params: RequestParams, memory: Any) -> None:
            self.svsm.module_report(bytes(64))

        def service_manifests(self) -> list[Any]:
            return []

    host = Host()
    with boot(vcpus=2, memory="12M", module_host=host) as cvm:
        host.svsm = cvm.svsm
        g = cvm.guest
        g.accept_memory(0x10_0000, 0x10_0000)
        g.start_ap(1)  # every vCPU now runs the guest
        g.svsm_call(9, 0)
        t = time.perf_counter()
        for _ in range(n):
            g.svsm_call(9, 0)
        in_call = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(n):
            cvm.svsm.module_report(bytes(64))
        interrupted = n / (time.perf_counter() - t)
    print(f"PSP report from a kernel thread, every vCPU in the guest: {interrupted:8.0f}/s")
    print(f"PSP report inside a guest call (on that vCPU's thread)   : {in_call:8.0f}/s   "
          f"ratio = {interrupted / in_call:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (CI smoke run)")
    args = ap.parse_args()
    calls = 500 if args.quick else 3000
    bench_query(calls)
    bench_pvalidate(args.quick)
    bench_scaling(calls // 10)
    bench_kernel_work(20 if args.quick else 100)


if __name__ == "__main__":
    main()

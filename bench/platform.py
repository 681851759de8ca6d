"""Benchmark of the simulated SNP platform (owners: HW for PVALIDATE + RSS, PSP for launch).

Each figure is printed with a baseline measured in the same run and their ratio:

* PVALIDATE pages/s through ``Vcpu.pvalidate`` (all RMP checks) vs. the cheapest possible Python
  per-page state flip (a dict of ints), i.e. how much the hardware model costs on the hot path;
* guest memory read/write (C=1, 64 bytes) vs. a bare bytearray slice;
* RUN_VMPL round trips guest -> SVSM entry -> guest vs. a plain Python call;
* RSS of an idle 64 GiB guest (all memory private in 2 MiB RMP entries and validated) vs. the
  interpreter with the platform imported;
* launch measurement MB/s vs. raw SHA-384 (``bench/_launch.py``, provided by PSP), if present.

Run: ``python bench/platform.py``.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path and its name would shadow the
# stdlib ``platform`` module (which uuid, hence msgspec, imports): drop that entry first.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import importlib.util  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

PAGES = 1 << 15  # 128 MiB worth of 4 KiB pages
MIB = 1 << 20


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def bench_pvalidate() -> dict[str, float]:
    """PVALIDATE (validate + rescind) over PAGES 4 KiB pages vs. a dict-of-ints flip."""
    from svsm.kernel.hw import PAGE_SIZE
    from svsm.kernel.hw.testing import make_guest

    p = make_guest(memory_size=PAGES * PAGE_SIZE + (1 << 20), private=[(0, PAGES * PAGE_SIZE)], validated=False)
    vcpu = p.vcpus[0]
    vcpu.vmrun(0)
    pv = vcpu.pvalidate
    t0 = time.perf_counter()
    for validate in (True, False):
        for gfn in range(PAGES):
            pv(gfn << 12, 0, validate)
    ours = 2 * PAGES / (time.perf_counter() - t0)

    d = dict.fromkeys(range(PAGES), 1)
    t0 = time.perf_counter()
    for _ in range(2):
        for gfn in range(PAGES):
            d[gfn] = d.get(gfn, 0) ^ 16
    base = 2 * PAGES / (time.perf_counter() - t0)
    return {"pvalidate_pages_per_s": ours, "baseline_dict_flip_per_s": base, "slowdown": base / ours}


def bench_access() -> dict[str, float]:
    """64-byte C=1 reads+writes through the guest view vs. bytearray slicing."""
    from svsm.kernel.hw.testing import make_guest

    p = make_guest(memory_size=8 * MIB, private=[(0, 4 * MIB)])
    p.vcpus[0].vmrun(0)
    view = p.guest_view(0)
    n = 20000
    data = b"x" * 64
    t0 = time.perf_counter()
    for i in range(n):
        a = (i * 4096) % (4 * MIB) + 128
        view.write(a, data)
        view.read(a, 64)
    ours = 2 * n / (time.perf_counter() - t0)
    buf = bytearray(4 * MIB)
    t0 = time.perf_counter()
    for i in range(n):
        a = (i * 4096) % (4 * MIB) + 128
        buf[a : a + 64] = data
        bytes(buf[a : a + 64])
    base = 2 * n / (time.perf_counter() - t0)
    return {"guest_access_ops_per_s": ours, "baseline_bytearray_ops_per_s": base, "slowdown": base / ours}


_RSS_CHILD = r"""
import json, sys
sys.path.insert(0, %(root)r)
from bench.platform import _rss_kib
import svsm.kernel.hw as hw
base = _rss_kib()
p = hw.Platform(memory_size=64 << 30, vcpu_count=4)
created = _rss_kib()
bsp = p.vcpus[0]
hv = p.hypervisor
for spa in range(0, 64 << 30, hw.PAGE_SIZE_2M):
    assert hv.rmpupdate(spa, spa, assigned=True, page_size=1).rc == 0
# a VMSA so the BSP can run at VMPL0 and validate
p.firmware.install_vmsa(0, 0, 0)
assert hv.psmash(0).rc == 0
p.firmware.set_rmp(0, assigned=True, gpa=0, validated=True, vmsa=True)
vm = p.firmware.vmsa(0); vm.sev_features = 1; vm.vmpl = 0
bsp.vmrun(0)
for gpa in range(hw.PAGE_SIZE_2M, 64 << 30, hw.PAGE_SIZE_2M):
    assert bsp.pvalidate(gpa, 1, True).rc == 0
idle = _rss_kib()
print(json.dumps({"baseline_kib": base, "created_kib": created, "idle_validated_kib": idle}))
"""


def bench_run_vmpl() -> dict[str, float]:
    """Guest -> SVSM -> guest world switches (RUN_VMPL via the MSR protocol) vs. a plain call.

    Each round trip is two VMGEXITs and two VMRUNs with their RMP VMSA checks: the hardware
    share of every SVSM call.
    """
    from svsm.kernel.hw import MSR_GHCB, PAGE_SIZE, RunVmplRequest, Vcpu
    from svsm.kernel.hw.testing import make_guest

    p = make_guest(memory_size=8 * MIB, private=[(0, MIB)])
    bsp = p.vcpus[0]
    bsp.vmrun(0)
    view = bsp.view(0)
    gpa = 0x8000  # guest VMSA at VMPL1, made the way the SVSM makes it
    view.write(gpa + 0xCA, b"\x01")
    view.write_u64(gpa + 0x3B0, 1)
    assert bsp.rmpadjust(gpa, 0, 1 | 1 << 8 | 1 << 16).rc == 0
    bsp.set_vmsa(1, gpa // PAGE_SIZE)
    back = RunVmplRequest(1).encode()
    call = RunVmplRequest(0).encode()

    def entry(vcpu: Vcpu) -> None:
        vcpu.wrmsr(MSR_GHCB, back)
        vcpu.vmgexit()

    bsp.register_vmpl_entry(0, entry)
    bsp.vmrun(1)
    n = 5000
    t0 = time.perf_counter()
    for _ in range(n):
        bsp.wrmsr(MSR_GHCB, call)
        bsp.vmgexit()
    ours = n / (time.perf_counter() - t0)
    calls = [0]

    def plain(_: object) -> None:
        calls[0] += 1

    t0 = time.perf_counter()
    for _ in range(n):
        plain(bsp)
    base = n / (time.perf_counter() - t0)
    return {"run_vmpl_round_trips_per_s": ours, "baseline_calls_per_s": base, "slowdown": base / ours}


def bench_rss() -> dict[str, float]:
    """RSS of a fresh interpreter running a 64 GiB guest, measured in a subprocess."""
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD % {"root": root}], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    return {
        "rss_baseline_mib": r["baseline_kib"] / 1024,
        "rss_64g_created_delta_mib": (r["created_kib"] - r["baseline_kib"]) / 1024,
        "rss_64g_idle_validated_delta_mib": (r["idle_validated_kib"] - r["baseline_kib"]) / 1024,
        "ratio_idle_to_baseline": r["idle_validated_kib"] / r["baseline_kib"],
    }


def bench_launch() -> dict[str, float] | None:
    """PSP's launch-measurement bench, if bench/_launch.py exists."""
    path = pathlib.Path(__file__).with_name("_launch.py")
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("bench_launch", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.measure_launch()  # type: ignore[no-any-return]


def main() -> int:
    """Run every part and print one line per figure."""
    results: dict[str, dict[str, float] | None] = {
        "pvalidate": bench_pvalidate(),
        "access": bench_access(),
        "run_vmpl": bench_run_vmpl(),
        "rss": bench_rss(),
        "launch": bench_launch(),
    }
    for part, figures in results.items():
        if figures is None:
            print(f"{part:10s} (bench/_launch.py not present)")
            continue
        print(f"{part:10s} " + "  ".join(f"{k}={v:,.2f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Live-migration benchmark: throughput, downtime, and how total time grows with memory.

For each guest size and mode, a destination process (``svsm run --incoming 0``) receives a
guest migrated from this process over loopback TCP through the attested channel:

* ``idle``: guest memory filled with data (every page non-zero), then idle;
* ``writing``: the same, with the guest workload writing 1% of guest memory per second.

Baseline measured in the same run: AES-256-GCM encryption plus SHA-256 of the same number of
bytes in 1 MiB records (the least a migration must do per byte: seal it and hash it for the final
check).  Printed per run: total time, downtime (pause -> destination running), the final check's
digest time, rounds, bytes sent, guest-memory throughput and its ratio to the baseline (goal >= 0.5),
and the downtime goal (< 100 ms for a 1 GiB guest writing 1%/s).

The source runs the engine where ``svsm migrate`` does: in the sandboxed ``migrate`` module, behind
the kernel's ``vm`` service (``--path module``, default); ``--path kernel`` runs the same engine in
this process against ``MigratableVm`` directly (the test harness), to show what the sandbox costs.

    python bench/migrate.py [--sizes 256M,1G] [--modes idle,writing] [--path module|kernel] [--json]
"""

from __future__ import annotations

import os
import sys

# bench/ holds platform.py, which would shadow the stdlib module: drop this directory first.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

PAGE = 4096
_CLI = "import sys; from svsm.kernel.cli import main; sys.exit(main(sys.argv[1:]))"


def baseline(nbytes: int = 256 << 20) -> float:
    """Bytes per second of AES-256-GCM + SHA-256 over 1 MiB records on this machine."""
    aead = AESGCM(AESGCM.generate_key(256))
    rec = os.urandom(1 << 20)
    h = hashlib.sha256()
    t = time.perf_counter()
    for i in range(nbytes >> 20):
        aead.encrypt(i.to_bytes(12, "big"), rec, b"hdr")
        h.update(rec)
    return nbytes / (time.perf_counter() - t)


def _fill(cvm: Any) -> None:
    """Every accepted guest page gets distinct, non-zero content (a guest that used its memory)."""
    g = cvm.guest
    g.accept_memory(0, cvm.layout.svsm_base)
    mem = g.mem
    block = os.urandom(PAGE)
    for gpa in sorted(g.accepted):
        mem.write(gpa, gpa.to_bytes(8, "little") + block[8:])


def run_one(memory: str, mode: str, path: str = "module") -> dict[str, Any]:
    import contextlib

    from svsm.kernel import boot
    from svsm.kernel.cli.migrate import start_modules
    from svsm.kernel._boot import parse_size
    from svsm.kernel.migration import GuestFenced, MigratableVm, run_migration
    from svsm.kernel.migration._transport import connect
    from svsm.kernel.migration._workload import GuestWorkload
    from svsm.modules.migrate import MigrationAborted as EngineAborted
    from svsm.modules.migrate import MeasurementPolicy, MigrationOptions, Role, make_channel, make_verifier, migrate_source

    size = parse_size(memory)
    with tempfile.TemporaryDirectory() as tmp:
        pf = pathlib.Path(tmp) / "port"
        dst = subprocess.Popen([sys.executable, "-c", _CLI, "run", "--incoming", "0", "--port-file", str(pf),
                                "--memory", memory, "--vcpus", "1", "--json", "--after-steps", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            # Measure the tree as it is now, like the fresh destination process does (the image
            # is cached per process, and the source tree may have changed since the last run).
            from svsm.kernel._boot import kernel_image

            kernel_image.cache_clear()
            with boot(vcpus=1, memory=memory) as cvm, contextlib.ExitStack() as stack:
                _fill(cvm)
                host = start_modules(stack, cvm, "process") if path == "module" else None
                vm = MigratableVm(cvm)
                stop = threading.Event()
                th = None
                if mode == "writing":
                    # 1% of guest memory per second: pages_per_step x steps/s = 0.01 * frames
                    wl = GuestWorkload.create(cvm.guest, None, pages=1024, pages_per_step=16)
                    rate = 0.01 * (size // PAGE) / 16

                    def guest() -> None:
                        try:
                            wl.run(stop, vm.gate, steps_per_second=rate)
                        except GuestFenced:
                            pass

                    th = threading.Thread(target=guest, daemon=True)
                    th.start()
                    time.sleep(0.5)
                while not pf.exists():
                    if dst.poll() is not None:
                        raise RuntimeError(dst.stderr.read() if dst.stderr else "destination died")
                    time.sleep(0.05)
                ark = cvm.psp.chip.chain_pem()[0]
                with connect("127.0.0.1", int(pf.read_text()), io_timeout=600) as sock:
                    if host is not None:
                        rep = run_migration(host, vm, sock, "source", ark=ark)
                    else:
                        ver = make_verifier(ark, MeasurementPolicy.same_as(cvm.measurement))
                        try:
                            r = migrate_source(vm, sock, make_channel(vm, Role.SOURCE, ver, os.urandom), MigrationOptions())
                            rep = {**r.__dict__, "throughput": r.throughput}
                        except EngineAborted as exc:
                            rep = {"result": "aborted", "reason": exc.reason}
                if rep["result"] == "aborted":
                    raise MigrationAborted(rep.get("reason", ""))
                stop.set()
                if th is not None:
                    th.join(10)
            out, err = dst.communicate(timeout=600)
        finally:
            if dst.poll() is None:
                dst.kill()
                dst.wait()
    d = json.loads(out) if out.strip() else {}
    return {
        "memory": memory, "mode": mode, "path": path, "result": rep["result"], "total_s": rep["total_time"],
        "downtime_s": rep["downtime"], "digest_s": rep["digest_time"], "rounds": rep["rounds"],
        "pages_per_round": rep["pages_per_round"], "bytes_sent": rep["bytes_sent"],
        "memory_Bps": size / rep["total_time"], "wire_Bps": rep["throughput"],
        "destination_committed": d.get("migration", {}).get("result") == "committed",
    }  # fmt: skip


class MigrationAborted(Exception):
    """The source's report said ``aborted``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _run_retrying(memory: str, mode: str, path: str, attempts: int = 3) -> dict[str, Any]:
    """:func:`run_one`, again if the peers' measurements differed (the kernel's source files are
    measured at boot: on a shared development tree someone may edit them between the two boots)."""
    for i in range(attempts):
        try:
            return run_one(memory, mode, path)
        except MigrationAborted as exc:
            if "attestation" not in exc.reason or i == attempts - 1:
                raise
            print(f"({memory} {mode}: measurements differed, the tree changed under us; again)", file=sys.stderr)
    raise AssertionError("unreachable")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256M,1G", help="comma-separated guest sizes")
    ap.add_argument("--modes", default="idle,writing", help="idle, writing")
    ap.add_argument("--path", choices=("module", "kernel"), default="module",
                    help="engine in the sandboxed migrate module (default) or in this process")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = baseline()
    rows = [_run_retrying(m, mode, args.path) for m in args.sizes.split(",") for mode in args.modes.split(",")]
    for r in rows:
        r["ratio_to_aesgcm_sha256"] = r["memory_Bps"] / base
    if args.json:
        print(json.dumps({"baseline_Bps": base, "runs": rows}, indent=2))
        return 0
    print(f"engine: {args.path}; baseline AES-256-GCM + SHA-256 (1 MiB records): {base / 1e6:.0f} MB/s")
    print(f"{'memory':>7} {'mode':>8} {'total s':>8} {'down ms':>8} {'digest ms':>9} {'rounds':>6} "
          f"{'MB sent':>8} {'mem MB/s':>9} {'ratio':>6}")  # fmt: skip
    for r in rows:
        print(f"{r['memory']:>7} {r['mode']:>8} {r['total_s']:8.2f} {r['downtime_s'] * 1000:8.0f} "
              f"{r['digest_s'] * 1000:9.0f} {r['rounds']:6d} {r['bytes_sent'] / 1e6:8.1f} "
              f"{r['memory_Bps'] / 1e6:9.1f} {r['ratio_to_aesgcm_sha256']:6.2f}")  # fmt: skip
    idle = [r for r in rows if r["mode"] == "idle"]
    if len(idle) > 1:
        per_gib = [r["total_s"] / (r["memory_Bps"] * r["total_s"] / (1 << 30)) for r in idle]
        print("total time per GiB (idle): " + ", ".join(f"{r['memory']}: {p:.2f} s" for r, p in zip(idle, per_gib)))
    big = [r for r in rows if r["mode"] == "writing" and r["memory"].upper().startswith("1G")]
    for r in big:
        print(f"downtime goal (< 100 ms, 1 GiB writing 1%/s): {r['downtime_s'] * 1000:.0f} ms "
              f"({'met' if r['downtime_s'] < 0.1 else 'not met'})")  # fmt: skip
    print(f"throughput goal (>= 0.5 of baseline): best {max(r['ratio_to_aesgcm_sha256'] for r in rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

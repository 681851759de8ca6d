"""``svsm run``: boot a CVM, run the default guest workload, print what happened.

The workload is what a Linux guest does on an SVSM: accept its memory (page state change +
PVALIDATE through the SVSM), bring up every AP (CREATE_VCPU + AP creation; each AP then makes a
call from its own thread), query the protocols, fetch a services attestation and verify it
against the VCEK chain (root pinned).  When the vTPM serves, the guest's TPM driver then runs
TPM2_Startup, GetRandom, PCR_Extend + PCR_Read and checks that the EK in the attested services
manifest is the vTPM's EK (:mod:`._run_vtpm`).  ``--json`` prints the same figures for scripts.

The installed service modules run by default, in sandboxed processes (``--modules`` picks
threads or none); their keys and reports come from the booted SVSM.  ``--state DIR`` gives the
persist module its disk and keeps the chip in DIR; without it persist is not started (its store
would be volatile, so rollback protection would mean nothing) and the summary says so, as it
does for migrate (``svsm migrate`` / ``--incoming``).
Options are added in :func:`add_options`, so later ones (``--incoming PORT``) only add lines
there and in :func:`_main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

from ._main import ExitCode, UsageError

__all__ = ["register", "add_options", "boot_options", "run_workload", "WorkloadReport"]

#: Protocol numbers and names QUERY_PROTOCOL is asked about.
PROTOCOL_NAMES = {0: "core", 1: "attest", 2: "vtpm", 3: "apic", 4: "uefi-mm"}


def add_options(p: argparse.ArgumentParser) -> None:
    """The boot options of ``svsm run`` (extend here)."""
    p.add_argument("--vcpus", metavar="N", type=int, default=2, help="number of vCPUs (default 2)")
    p.add_argument("--memory", metavar="SIZE", default="64M", help="guest memory, e.g. 64M, 1G (default 64M)")
    p.add_argument("--guest-vmpl", metavar="VMPL", type=int, choices=(1, 2, 3), default=2,
                   help="VMPL the guest OS runs at (default 2, as COCONUT)")  # fmt: skip
    p.add_argument("--modules", choices=("none", "inprocess", "process"), default="process",
                   help="run the installed service modules (vTPM, ...): in sandboxed processes (default), "
                        "in threads, or not at all; persist needs --state, migrate runs with svsm migrate")  # fmt: skip
    p.add_argument("--state", metavar="DIR", type=pathlib.Path,
                   help="persistent state: DIR/persist.img (the persist module's disk) and DIR/psp (the chip)")
    p.add_argument("--anchor", metavar="HOST:PORT",
                   help="freshness anchor of the persist module (svsm anchor serve); needs --state")  # fmt: skip
    p.add_argument("--anchor-key", metavar="HEX", help="the anchor's public key to pin (default: trust on first use)")
    p.add_argument("--lockdep", action="store_true", help="run with the lock-order checker on (report inversions)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    from .migrate import add_incoming_options  # MIGRATE: --incoming PORT (destination of svsm migrate)

    add_incoming_options(p)


def boot_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`svsm.kernel.boot` from the parsed options.

    :raises UsageError: an option value is out of range.
    """
    from svsm.kernel._boot import parse_size

    if args.vcpus < 1 or args.vcpus > 64:
        raise UsageError("--vcpus must be 1..64")
    try:
        memory = parse_size(args.memory)
    except ValueError:
        raise UsageError(f"--memory: cannot parse {args.memory!r}") from None
    return {"vcpus": args.vcpus, "memory": memory, "guest_vmpl": args.guest_vmpl}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand."""
    p = subparsers.add_parser("run", help="boot a CVM with the SVSM and run the default guest workload")
    add_options(p)
    p.set_defaults(func=_main)


@dataclasses.dataclass
class WorkloadReport:
    """What ``svsm run`` prints."""

    measurement: str
    vcpus: int
    memory: int
    guest_vmpl: int
    phases: dict[str, float]
    accepted_bytes: int
    protocols: dict[str, list[int] | None]
    attestation: dict[str, Any]
    calls_by_protocol: dict[str, int]
    calls_per_cpu: list[int]
    allocator: dict[str, Any]
    locks: dict[str, Any]
    hypervisor: dict[str, Any]
    modules: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    vtpm: dict[str, Any] | None = None
    scheduler: dict[str, Any] = dataclasses.field(default_factory=dict)
    anchor: dict[str, Any] | None = None


#: The summary line of an installed module this run does not start, by name.
NOT_STARTED = {
    "persist": "not started (no --state: its store would be volatile)",
    "migrate": "not started (runs under svsm migrate / svsm run --incoming)",
}


def module_rows(host: Any) -> list[dict[str, Any]]:
    """One row per installed module for the summary: the started ones, then the skipped ones."""
    rows: list[dict[str, Any]] = []
    for m in host.modules():
        rows.append({
            "name": m.name, "version": m.version, "state": m.state, "mode": m.mode, "protocols": list(m.protocols),
            "protections": list(m.protections), "measurement": m.measurement[:16],
            "calls": host.module(m.name).statistics().calls, "restarts": m.restarts,
        })  # fmt: skip
    for name, why in sorted(host.skipped.items()):
        rows.append({"name": name, "version": "", "state": NOT_STARTED.get(name, f"not started ({why})"),
                     "mode": "", "protocols": [], "protections": [], "measurement": "", "calls": 0, "restarts": 0})  # fmt: skip
    return rows


def _asdict(nt: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in nt._asdict().items()}


def run_workload(cvm: Any, *, clock: Callable[[], float] = time.perf_counter, nonce: bytes | None = None) -> WorkloadReport:
    """Run the default guest workload on a booted CVM (see the module docstring).

    :raises RequestError: the SVSM refused a step; :raises VerificationError: bad attestation.
    """
    from svsm.kernel.sync import lock_order_checker

    phases = {"boot.launch": cvm.timings.launch, "boot.kernel": cvm.timings.kernel_init,
              "boot.guest": cvm.timings.guest_prepare}  # fmt: skip
    g = cvm.guest
    t = clock()
    accepted = g.accept_memory(0, cvm.layout.svsm_base)
    phases["accept_memory"] = clock() - t
    t = clock()
    aps = [g.start_ap(c.apic_id) for c in cvm.platform.vcpus[1:]]
    errors: list[BaseException] = []

    def ap_main(ap: Any) -> None:
        try:
            ap.query_protocol(0)
        except BaseException as exc:  # noqa: BLE001 -- re-raised on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=ap_main, args=(ap,), name=f"ap{ap.cpu.apic_id}") for ap in aps]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    phases["bring_up_aps"] = clock() - t
    t = clock()
    protocols = {}
    for num, name in PROTOCOL_NAMES.items():
        rng = g.query_protocol(num)
        protocols[name] = list(rng) if rng else None
    phases["query_protocols"] = clock() - t
    t = clock()
    att = g.attest(nonce if nonce is not None else os.urandom(64))
    phases["attest"] = clock() - t
    t = clock()
    report = att.verify(trusted_arks=[cvm.psp.chip.ark_cert])  # the verifier pins the chip's root
    phases["verify"] = clock() - t
    vtpm = None
    if protocols.get("vtpm"):
        from svsm.sdk.guest import VTPM_SERVICE_GUID

        from ._run_vtpm import vtpm_workload

        t = clock()
        vtpm = vtpm_workload(g, att.manifest.services, VTPM_SERVICE_GUID)
        phases["vtpm"] = clock() - t
    stats = cvm.statistics()
    lockdep = lock_order_checker().statistics()
    return WorkloadReport(
        measurement=cvm.measurement.hex(),
        vcpus=len(cvm.platform.vcpus),
        memory=cvm.platform.memory_size,
        guest_vmpl=cvm.svsm.guest_vmpl,
        phases=phases,
        accepted_bytes=accepted,
        protocols=protocols,
        attestation={
            "verified": True, "vmpl": report.vmpl, "measurement_matches": report.measurement == cvm.measurement,
            "manifest_services": [str(u) for u, _ in att.manifest.services], "certificates": len(att.certificates),
        },  # fmt: skip
        calls_by_protocol={PROTOCOL_NAMES.get(p, str(p)): n for p, n in sorted(stats.calls_by_protocol.items())},
        calls_per_cpu=list(stats.calls_per_cpu),
        allocator={"pages": _asdict(stats.allocator), "slab_large_pages": stats.slab.large_pages},
        locks={"PVALIDATE_LOCK": _asdict(stats.pvalidate_lock), "lock_order": _asdict(lockdep)},
        hypervisor={"vmgexits": stats.hypervisor.vmgexits, "page_state_changes": stats.hypervisor.page_state_changes,
                    "guest_requests": stats.hypervisor.guest_requests, "errors": stats.hypervisor.errors},  # fmt: skip
        vtpm=vtpm,
        scheduler=_scheduler_summary(stats.kernel_tasks),
    )


def _scheduler_summary(kt: Any) -> dict[str, Any]:
    """The kernel scheduler's figures for the summary (``scheduler`` in ``--json``)."""
    from svsm.kernel.sched import TaskState

    s = kt.scheduler
    return {
        "tasks_spawned": s.tasks_spawned, "tasks_by_state": {st.name.lower(): n for st, n in zip(TaskState, s.tasks_by_state, strict=True)},
        "context_switches": sum(c.context_switches for c in s.cpus), "timers_fired": s.timers_fired,
        "timers_pending": s.timers_pending, "failures": s.failures, "housekeeping_rounds": kt.housekeeping_rounds,
        "slab_pages_reaped": kt.slab_pages_reaped,
    }  # fmt: skip


def _render(rep: WorkloadReport) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    head = Table(title="pysvsm CVM", show_header=False)
    head.add_row("measurement", rep.measurement)
    head.add_row("vCPUs / memory / guest VMPL", f"{rep.vcpus} / {rep.memory >> 20} MiB / {rep.guest_vmpl}")
    head.add_row("accepted", f"{rep.accepted_bytes >> 10} KiB")
    head.add_row("protocols", ", ".join(f"{k} {v[0]}..{v[1]}" if v else f"{k} -" for k, v in rep.protocols.items()))
    att = rep.attestation
    head.add_row("attestation", f"verified, VMPL{att['vmpl']}, measurement matches: {att['measurement_matches']}, "
                 f"{len(att['manifest_services'])} services, {att['certificates']} certificates")  # fmt: skip
    if rep.vtpm is not None:
        v = rep.vtpm
        head.add_row("vTPM (guest driver)", f"TPM2_Startup {v['startup']}, GetRandom {v['random_bytes']} bytes, "
                     f"PCR16 extended; the SVSM report binds the EK: {'yes' if v['ek_matches_manifest'] else 'NO'} "
                     f"(EK sha256 {v['ek_sha256'][:16]}...)")  # fmt: skip
    con.print(head)
    started = [m for m in rep.modules if m["mode"]]
    if started:
        mods = Table(title="service modules (ring 3)")
        for col in ("module", "version", "state", "mode", "protocols", "measurement", "calls"):
            mods.add_column(col, overflow="fold", justify="right" if col == "calls" else "left")
        for m in started:
            mods.add_row(m["name"], m["version"], m["state"], m["mode"], ", ".join(str(p) for p in m["protocols"]) or "-",
                         m["measurement"], str(m["calls"]))  # fmt: skip
        con.print(mods)
        for m in started:
            con.print(f"  {m['name']} sandbox: {', '.join(m['protections']) or 'none (threads, no sandbox)'}", markup=False)
    for m in rep.modules:
        if not m["mode"]:
            con.print(f"  {m['name']}: {m['state']}", markup=False)
    if rep.anchor is not None:
        pin = "pinned key" if rep.anchor["pinned_key"] else "trust on first use"
        con.print(f"  persist anchor: {rep.anchor['address']} ({pin})", markup=False)
    phases = Table(title="time per phase")
    phases.add_column("phase")
    phases.add_column("ms", justify="right")
    for k, v in rep.phases.items():
        phases.add_row(k, f"{v * 1000:.1f}")
    con.print(phases)
    calls = Table(title="SVSM calls")
    calls.add_column("by protocol")
    calls.add_column("calls", justify="right")
    for k, n in rep.calls_by_protocol.items():
        calls.add_row(k, str(n))
    for i, n in enumerate(rep.calls_per_cpu):
        calls.add_row(f"on vCPU {i}", str(n))
    con.print(calls)
    res = Table(title="allocator and locks", show_header=False)
    a = rep.allocator["pages"]
    res.add_row("heap pages", f"{a['used_pages']} used / {a['total_pages']} ({a['allocations']} allocs, {a['frees']} frees)")
    lk = rep.locks["PVALIDATE_LOCK"]
    res.add_row("PVALIDATE_LOCK", f"{lk['read_acquisitions']} read, {lk['write_acquisitions']} write, {lk['contentions']} contended")
    res.add_row("lock order", ", ".join(f"{k}={v}" for k, v in rep.locks["lock_order"].items()))
    res.add_row("hypervisor", ", ".join(f"{k}={v}" for k, v in rep.hypervisor.items()))
    if rep.scheduler:
        sc = rep.scheduler
        res.add_row("kernel scheduler", f"{sc['tasks_spawned']} tasks, {sc['context_switches']} context switches, "
                    f"{sc['timers_fired']} timers fired, {sc['failures']} failures; housekeeping "
                    f"{sc['housekeeping_rounds']} rounds, {sc['slab_pages_reaped']} slab pages reaped")  # fmt: skip
    con.print(res)


def _anchor_options(args: argparse.Namespace) -> tuple[tuple[str, int] | None, bytes | None]:
    """``--anchor HOST:PORT`` and ``--anchor-key HEX``.  :raises UsageError: malformed or without --state."""
    text, key_hex = getattr(args, "anchor", None), getattr(args, "anchor_key", None)
    if text is None:
        if key_hex is not None:
            raise UsageError("--anchor-key needs --anchor")
        return None, None
    if args.state is None:
        raise UsageError("--anchor needs --state DIR (the persist module only runs with a disk)")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--anchor: expected HOST:PORT, got {text!r}")
    try:
        key = bytes.fromhex(key_hex) if key_hex is not None else None
    except ValueError:
        raise UsageError("--anchor-key: not hex") from None
    if key is not None and len(key) != 32:
        raise UsageError("--anchor-key: an Ed25519 public key is 32 bytes")
    return (host, int(port)), key


def _main(args: argparse.Namespace) -> int:
    import contextlib

    from svsm.kernel import boot
    from svsm.kernel.sync import lock_order_checker

    from ._run_vtpm import VtpmCheckFailed

    if getattr(args, "incoming", None) is not None:  # MIGRATE: wait for a migrating guest instead
        from .migrate import incoming_main

        return incoming_main(args)
    opts = boot_options(args)
    mode = args.modules
    if args.state is not None:
        try:
            args.state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--state {args.state}: {exc}") from None
        opts["psp_state_dir"] = str(args.state / "psp")
    anchor, anchor_key = _anchor_options(args)
    if args.lockdep:
        lock_order_checker().enable(raise_on_violation=False)
    try:
        with contextlib.ExitStack() as stack:
            cvm = stack.enter_context(boot(**opts))
            host = (stack.enter_context(cvm.run_modules(mode, state_dir=args.state, anchor=anchor, anchor_key=anchor_key))
                    if mode != "none" else None)  # fmt: skip
            rep = run_workload(cvm)
            if host is not None:
                rep.modules = module_rows(host)
            if anchor is not None:
                rep.anchor = {"address": f"{anchor[0]}:{anchor[1]}", "pinned_key": anchor_key.hex() if anchor_key else None}
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except VtpmCheckFailed as exc:
        print(f"svsm run: vTPM check failed: {exc}")
        return ExitCode.FAILED
    if args.json:
        print(json.dumps(dataclasses.asdict(rep), indent=2, default=str))
    else:
        _render(rep)
    return ExitCode.OK

"""``svsm migrate --to HOST:PORT`` and ``svsm run --incoming PORT``: live migration over TCP.

The source boots a CVM, starts the guest workload (pages written and PCR 16 extended, all its
state in guest memory and the vTPM), and migrates it to a destination that waits with
``svsm run --incoming PORT``.  Both SVSMs attest to each other; by default each accepts only a
peer with its own launch measurement under its own chip's ARK (``--allow-measurement`` and
``--ark`` widen that).  After the commit the destination finds the workload in guest memory,
checks every page and the PCR, and keeps running it; the source is fenced and refuses to resume.

The engine is the ``migrate`` module (entry point ``svsm.modules``), started with the other
modules in its sandboxed process; the CLI runs it with ``host.command("migrate", "source" |
"destination", ...)`` (:func:`svsm.kernel.migration.run_migration`), and it reaches the VM and the
peer only through the kernel's ``vm`` service.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._main import ExitCode, UsageError

__all__ = ["register", "add_incoming_options", "incoming_main", "migrate_out", "progress_display", "start_modules"]

log = logging.getLogger("svsm.cli.migrate")


def _add_trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-measurement", metavar="HEX", action="append", default=[],
                   help="also accept a peer with this launch measurement (repeatable; default: own only)")  # fmt: skip
    p.add_argument("--ark", metavar="PEM", type=pathlib.Path, help="pin this AMD root key (default: own chip's ARK)")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_incoming_options(p: argparse.ArgumentParser) -> None:
    """The ``svsm run`` options of a migration destination (``--incoming PORT`` and friends)."""
    p.add_argument("--incoming", metavar="PORT", type=int,
                   help="wait for a migrating guest on TCP PORT (0: any free port) instead of booting one")  # fmt: skip
    p.add_argument("--listen", metavar="HOST", default="127.0.0.1", help="address for --incoming (default loopback)")
    p.add_argument("--port-file", metavar="PATH", type=pathlib.Path, help="write the --incoming port here")
    p.add_argument("--after-steps", metavar="N", type=int, default=50,
                   help="workload steps the migrated guest runs before exiting (default 50)")  # fmt: skip
    p.add_argument("--accept-timeout", metavar="S", type=float, default=300.0, help="seconds to wait for a source")
    p.add_argument("--allow-measurement", metavar="HEX", action="append", default=[],
                   help="also accept a source with this launch measurement (repeatable)")  # fmt: skip
    p.add_argument("--ark", metavar="PEM", type=pathlib.Path, help="pin this AMD root key (default: own chip's ARK)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _trust(cvm: Any, args: argparse.Namespace) -> tuple[bytes, list[bytes]]:
    """(pinned ARK PEM, extra accepted measurements) from the options.  :raises UsageError: malformed."""
    try:
        extra = [bytes.fromhex(m) for m in args.allow_measurement]
    except ValueError:
        raise UsageError("--allow-measurement takes hex") from None
    if any(len(m) != 48 for m in extra):
        raise UsageError("--allow-measurement: a measurement is 48 bytes (96 hex digits)")
    try:
        ark = args.ark.read_bytes() if args.ark is not None else cvm.psp.chip.chain_pem()[0]
    except OSError as exc:
        raise UsageError(f"--ark: {exc}") from None
    return ark, extra


@contextlib.contextmanager
def progress_display(enabled: bool, label: str) -> Iterator[Callable[[Any], None] | None]:
    """A rich progress bar (on stderr) fed by the engine's progress events."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("pages"),
        TextColumn("{task.fields[rate]}"), TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )  # fmt: skip
    tasks: dict[tuple[str, int], Any] = {}

    def update(ev: Any) -> None:
        key = (ev.phase, ev.round)
        if key not in tasks:
            tasks[key] = bar.add_task(f"{label} {ev.phase} round {ev.round}", total=ev.round_pages, rate="", eta="")
        eta = f"{ev.eta:.1f}s" if ev.eta is not None else "-"
        bar.update(tasks[key], total=ev.round_pages, completed=ev.round_done, rate=f"{ev.rate / 1e6:.1f} MB/s", eta=eta)

    with bar:
        yield update


def start_modules(stack: contextlib.ExitStack, cvm: Any, mode: str, wait: float = 30.0) -> Any:
    """The installed modules behind ``cvm``'s SVSM, ``migrate`` included (persist needs a disk: not started).

    :returns: the started ``svsm.kernel.ipc.ModuleHost`` (stopped when ``stack`` closes).
    :raises UsageError: the ``migrate`` module is not available (blocked, or failed to load).
    """
    host = stack.enter_context(cvm.run_modules(mode, wait=wait, blocked=("persist",)))
    if "migrate" not in {m.name for m in host.modules()}:
        raise UsageError(f"the migrate module is not available: {host.skipped.get('migrate', 'blocked')}")
    return host


def _boot_and_modules(stack: contextlib.ExitStack, args: argparse.Namespace, opts: dict[str, Any]) -> tuple[Any, Any]:
    from svsm.kernel import boot

    try:
        cvm = stack.enter_context(boot(**opts))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    mode = getattr(args, "modules", "process")
    return cvm, start_modules(stack, cvm, "process" if mode == "none" else mode)


def _vtpm(guest: Any, buffer_gpa: int | None = None, timeout: float = 30.0) -> Any:
    from svsm.sdk import RequestError
    from svsm.sdk.tpm import VtpmDriver

    deadline = time.monotonic() + timeout
    while True:
        try:
            return VtpmDriver(guest, buffer_gpa=buffer_gpa)
        except RequestError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def migrate_out(host: Any, cvm: Any, vm: Any, sock: Any, args: argparse.Namespace, *, on_progress: Any = None) -> dict[str, Any]:
    """Run the source side on a connected socket in the ``migrate`` module.  :returns: its report."""
    from svsm.kernel.migration import run_migration

    ark, extra = _trust(cvm, args)
    return run_migration(host, vm, sock, "source", ark=ark, allow_measurements=extra, max_rounds=args.max_rounds,
                         converge_pages=args.converge_pages, on_progress=on_progress)  # fmt: skip


def _migrate_main(args: argparse.Namespace) -> int:
    from svsm.kernel._boot import parse_size
    from svsm.kernel.migration import GuestFenced, MigratableVm
    from svsm.kernel.migration._transport import connect, parse_endpoint
    from svsm.kernel.migration._workload import GuestWorkload
    from svsm.sdk import InvalidParameter

    try:
        host_, port = parse_endpoint(args.to)
        memory = parse_size(args.memory)
    except (InvalidParameter, ValueError) as exc:
        raise UsageError(str(exc)) from None
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        cvm, host = _boot_and_modules(stack, args, {"vcpus": args.vcpus, "memory": memory, "guest_vmpl": args.guest_vmpl})
        try:
            vm = MigratableVm(cvm, fence_record=args.fence_file)
        except GuestFenced as exc:
            raise UsageError(str(exc)) from None
        guest = cvm.guest
        guest.accept_memory(0, cvm.layout.svsm_base)
        wl = GuestWorkload.create(guest, _vtpm(guest), pages=args.workload_pages, pages_per_step=args.pages_per_step)
        stop, errors = threading.Event(), []

        def guest_main() -> None:
            try:
                wl.run(stop, vm.gate, steps_per_second=args.steps_per_second)
            except GuestFenced:
                pass  # migrated away: this vCPU never runs again
            except BaseException as exc:  # noqa: BLE001 -- reported on the main thread
                errors.append(exc)

        th = threading.Thread(target=guest_main, name="guest-vcpu0", daemon=True)
        th.start()
        time.sleep(args.warmup)
        try:
            sock = stack.enter_context(connect(host_, port))
        except OSError as exc:
            stop.set()
            raise UsageError(f"cannot reach {args.to}: {exc}") from None
        show = not args.no_progress and (not args.json or getattr(args, "progress_with_json", False))
        with progress_display(show, "source") as cb:
            rep = migrate_out(host, cvm, vm, sock, args, on_progress=cb)
        if rep["result"] == "aborted":
            stop.set()
            th.join(10)
            print(f"svsm migrate: aborted ({rep.get('reason')}); the guest keeps running here (step {wl.step})", file=sys.stderr)
            return ExitCode.FAILED
        th.join(10)
        stop.set()
        try:
            vm.resume()
            refused = False
        except GuestFenced:
            refused = True
        out = {"migration": rep, "source_steps": wl.steps_run, "workload_step": wl.step,
               "source_refuses_resume": refused,
               "guest_errors": [repr(e) for e in errors]}  # fmt: skip
    _print(out, args.json, "source")
    return ExitCode.OK if rep["result"] == "committed" and refused and not errors else ExitCode.FAILED


def incoming_main(args: argparse.Namespace) -> int:
    """``svsm run --incoming PORT``: boot, wait for a guest, run it after the commit."""
    from svsm.kernel.migration import MigratableVm, RunGate, run_migration
    from svsm.kernel.migration._transport import accept_one, listen
    from svsm.kernel.migration._workload import GuestWorkload

    from .run import boot_options

    opts = boot_options(args)
    with contextlib.ExitStack() as stack:
        cvm, host = _boot_and_modules(stack, args, opts)
        ark, extra = _trust(cvm, args)
        vm = MigratableVm(cvm, gate=RunGate(paused=True))
        try:
            srv = stack.enter_context(listen(args.listen, args.incoming, port_file=args.port_file))
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.listen}:{args.incoming}: {exc}") from None
        if not args.json:
            print(f"svsm run: waiting for a migration on {args.listen}:{srv.getsockname()[1]}", file=sys.stderr, flush=True)
        sock = stack.enter_context(accept_one(srv, timeout=args.accept_timeout))
        with progress_display(not (args.no_progress or args.json), "destination") as cb:
            rep = run_migration(host, vm, sock, "destination", ark=ark, allow_measurements=extra, on_progress=cb)
        if rep["result"] != "committed":
            print(f"svsm run --incoming: no guest ({rep['result']}: {rep.get('reason')}); not running anything", file=sys.stderr)
            return ExitCode.FAILED
        guest = cvm.guest
        out: dict[str, Any] = {"migration": rep}
        try:
            wl = GuestWorkload.attach(guest, lambda gpa: _vtpm(guest, gpa))
        except Exception as exc:  # noqa: BLE001 -- a guest without the workload is still migrated
            out["workload"] = {"found": False, "error": repr(exc)}
        else:
            first = wl.verify()
            wl.run(threading.Event(), vm.gate, max_steps=args.after_steps)
            after = wl.verify()
            out["workload"] = {"found": True, "resumed_at_step": first.step, "pcr_matches": first.pcr_matches,
                               "pages_checked": first.pages_checked, "step_after": after.step,
                               "pcr_matches_after": after.pcr_matches}  # fmt: skip
    _print(out, args.json, "destination")
    wk = out.get("workload", {})
    ok = rep["result"] == "committed" and wk.get("pcr_matches", True) and wk.get("pcr_matches_after", True)
    return ExitCode.OK if ok else ExitCode.FAILED


def _print(out: dict[str, Any], as_json: bool, role: str) -> None:
    if as_json:
        print(json.dumps(out, indent=2, default=str), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    rep = out["migration"]
    t = Table(title=f"migration ({role})", show_header=False)
    t.add_row("result", rep["result"])
    t.add_row("total time", f"{rep['total_time'] * 1000:.0f} ms")
    if role == "source":
        t.add_row("downtime", f"{rep['downtime'] * 1000:.0f} ms (digests {rep['digest_time'] * 1000:.0f} ms)")
    t.add_row("rounds / pages per round", f"{rep['rounds']} / {rep['pages_per_round']}")
    t.add_row("bytes sent / received", f"{rep['bytes_sent']} / {rep['bytes_received']}")
    t.add_row("throughput", f"{rep['throughput'] / 1e6:.1f} MB/s")
    t.add_row("chunks re-sent by the final check", str(rep["resent_chunks"]))
    t.add_row("peer measurement", rep["peer_measurement"])
    for k, v in out.items():
        if k != "migration":
            t.add_row(k, json.dumps(v, default=str))
    Console().print(t)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``migrate`` subcommand."""
    p = subparsers.add_parser("migrate", help="boot a CVM with a busy guest and live-migrate it to HOST:PORT",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--to", metavar="HOST:PORT", required=True, help="a destination started with svsm run --incoming")
    p.add_argument("--vcpus", metavar="N", type=int, default=2, help="vCPUs (must match the destination; default 2)")
    p.add_argument("--memory", metavar="SIZE", default="64M", help="guest memory (must match; default 64M)")
    p.add_argument("--guest-vmpl", type=int, choices=(1, 2, 3), default=2, help="guest VMPL (must match; default 2)")
    p.add_argument("--modules", choices=("process", "inprocess"), default="process", help="module mode (default process)")
    p.add_argument("--workload-pages", type=int, default=256, help="pages the guest workload cycles through")
    p.add_argument("--pages-per-step", type=int, default=4, help="pages written per workload step")
    p.add_argument("--steps-per-second", type=float, default=None, help="pace of the workload (default: flat out)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds the workload runs before migrating")
    p.add_argument("--max-rounds", type=int, default=8, help="pre-copy rounds before stop-and-copy anyway")
    p.add_argument("--converge-pages", type=int, default=256, help="stop once a round's dirty set is this small")
    p.add_argument("--fence-file", metavar="PATH", type=pathlib.Path,
                   help="record the commit here; a later run with this file refuses to start the guest")  # fmt: skip
    _add_trust_options(p)
    p.set_defaults(func=_migrate_main)

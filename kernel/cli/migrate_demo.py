"""``svsm migrate-demo``: both ends of a live migration on this machine, and the proof.

Starts ``svsm run --incoming 0`` as a second process (the destination), runs ``svsm migrate``'s
source side here with a guest that keeps writing memory and extending PCR 16, and then shows:
the attested channel's peer measurement, the progress and final report (total time, downtime,
bytes, rounds), that both SVSMs computed the same fingerprint (memory digests, VMSAs, guest keys,
vTPM state), that the migrated guest found its workload in memory with every page and the PCR
as expected and kept running, and that the source refuses to resume.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

from ._main import ExitCode, UsageError

__all__ = ["register", "run_demo"]

_CLI = "import sys; from svsm.kernel.cli import main; sys.exit(main(sys.argv[1:]))"


def _spawn_destination(args: argparse.Namespace, port_file: pathlib.Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", _CLI, "run", "--incoming", "0", "--listen", args.listen, "--port-file", str(port_file),
           "--memory", args.memory, "--vcpus", str(args.vcpus), "--json", "--after-steps", str(args.after_steps),
           "--accept-timeout", "120"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_port(proc: subprocess.Popen[str], port_file: pathlib.Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise UsageError(f"the destination exited early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    raise UsageError("the destination did not start listening")


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo; :returns: the combined proof (see the module docstring)."""
    from . import migrate as mig

    with tempfile.TemporaryDirectory(prefix="svsm-migrate-demo-") as tmp:
        port_file = pathlib.Path(tmp) / "port"
        proc = _spawn_destination(args, port_file)
        try:
            port = _wait_port(proc, port_file, 120.0)
            src_args = argparse.Namespace(
                to=f"{args.listen}:{port}", vcpus=args.vcpus, memory=args.memory, guest_vmpl=2, modules="process",
                workload_pages=args.workload_pages, pages_per_step=4, steps_per_second=None, warmup=args.warmup,
                max_rounds=8, converge_pages=256, fence_file=None, allow_measurement=[], ark=None, json=True, no_progress=args.no_progress,
                progress_with_json=True,
            )  # fmt: skip
            captured: dict[str, Any] = {}
            rc = _run_source(mig, src_args, captured)
            try:
                # a source that failed before connecting leaves the destination waiting: do not wait long
                out, err = proc.communicate(timeout=300 if rc == 0 else 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    try:
        dst = json.loads(out)
    except json.JSONDecodeError:
        raise UsageError(f"the destination failed (exit {proc.returncode}): {err.strip()[-2000:]}") from None
    src = captured.get("out", {})
    smig, dmig = src.get("migration", {}), dst.get("migration", {})
    wk = dst.get("workload", {})
    proof = {
        "source_rc": int(rc),
        "destination_rc": proc.returncode,
        "committed": smig.get("result") == dmig.get("result") == "committed",
        "fingerprints_identical": bool(smig.get("fingerprint")) and smig.get("fingerprint") == dmig.get("fingerprint"),
        "guest_continued": bool(wk.get("found")) and wk.get("resumed_at_step") == src.get("workload_step")
        and wk.get("step_after", 0) > wk.get("resumed_at_step", 0),
        "pcr_continuous": bool(wk.get("pcr_matches")) and bool(wk.get("pcr_matches_after")),
        "source_refuses_resume": bool(src.get("source_refuses_resume")),
    }
    return {"proof": proof, "source": src, "destination": dst}


def _run_source(mig: Any, args: argparse.Namespace, captured: dict[str, Any]) -> int:
    """The source side of ``svsm migrate`` with its printed report captured as JSON."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = mig._migrate_main(args)
    try:
        captured["out"] = json.loads(buf.getvalue())
    except json.JSONDecodeError:
        captured["out"] = {}
    return int(rc)


def _render(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    src, dst = res["source"].get("migration", {}), res["destination"].get("migration", {})
    t = Table(title="live migration: final report", show_header=False)
    t.add_row("total time", f"{src.get('total_time', 0) * 1000:.0f} ms")
    t.add_row("downtime (pause -> destination running)", f"{src.get('downtime', 0) * 1000:.0f} ms")
    t.add_row("bytes sent", str(src.get("bytes_sent")))
    t.add_row("rounds / pages per round", f"{src.get('rounds')} / {src.get('pages_per_round')}")
    t.add_row("throughput", f"{src.get('throughput', 0) / 1e6:.1f} MB/s")
    t.add_row("final check: chunks re-sent", str(src.get("resent_chunks")))
    t.add_row("destination attested source", dst.get("peer_measurement", "")[:32] + "...")
    con.print(t)
    p = Table(title="proof")
    p.add_column("claim")
    p.add_column("holds")
    for k, v in res["proof"].items():
        p.add_row(k, "[green]yes[/]" if v is True or v == 0 else f"[red]{v}[/]")
    con.print(p)


def _main(args: argparse.Namespace) -> int:
    res = run_demo(args)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    else:
        _render(res)
    pr = res["proof"]
    ok = pr["source_rc"] == 0 and pr["destination_rc"] == 0 and all(v for k, v in pr.items() if not k.endswith("_rc"))
    return ExitCode.OK if ok else ExitCode.FAILED


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``migrate-demo`` subcommand."""
    p = subparsers.add_parser("migrate-demo", help="live-migrate a busy guest between two local SVSM processes",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--memory", default="64M", help="guest memory (default 64M)")
    p.add_argument("--vcpus", type=int, default=2, help="vCPUs (default 2)")
    p.add_argument("--listen", default="127.0.0.1", help="destination address (default loopback)")
    p.add_argument("--workload-pages", type=int, default=256, help="pages the guest workload cycles through")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds the workload runs before migrating")
    p.add_argument("--after-steps", type=int, default=50, help="steps the migrated guest runs on the destination")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)

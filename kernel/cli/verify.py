"""``svsm verify DIR``: check a report against its ARK -> ASK -> VCEK chain and print it.

``DIR`` holds ``report.bin``, ``ark.pem``, ``ask.pem`` and ``vcek.pem`` (what ``svsm attest``
writes).  Exit status 0 when everything verifies, 1 (FAILED) when anything does not.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from ._main import ExitCode, UsageError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``verify`` subcommand."""
    p = subparsers.add_parser("verify", help="verify an SNP attestation report and its certificate chain")
    p.add_argument("dir", type=pathlib.Path, help="directory with report.bin, ark.pem, ask.pem, vcek.pem")
    p.add_argument("--json", action="store_true", help="print the parsed report as JSON")
    p.add_argument("--nonce", help="hex; REPORT_DATA must start with it (rest zero)")
    p.add_argument("--measurement", help="hex; the expected launch digest")
    p.set_defaults(func=_run)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from svsm.sdk.attestation import ReportFormatError, VerificationError, load_chain, report_table, report_to_dict, verify_report

    try:
        files = {n: (args.dir / n).read_bytes() for n in ("report.bin", "ark.pem", "ask.pem", "vcek.pem")}
    except OSError as exc:
        raise UsageError(f"{exc.filename}: {exc.strerror}") from exc
    try:
        report = verify_report(files["report.bin"], load_chain(files["ark.pem"], files["ask.pem"], files["vcek.pem"]))
        if args.nonce is not None and report.report_data != bytes.fromhex(args.nonce).ljust(64, b"\0"):
            raise VerificationError("REPORT_DATA does not match --nonce")
        if args.measurement is not None and report.measurement != bytes.fromhex(args.measurement):
            raise VerificationError("MEASUREMENT does not match --measurement")
    except (ReportFormatError, VerificationError) as exc:
        print(f"svsm verify: FAILED: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except ValueError as exc:
        raise UsageError(f"bad hex: {exc}") from exc
    if args.json:
        print(json.dumps({"verified": True, "report": report_to_dict(report)}, indent=2))
    else:
        from rich.console import Console

        console = Console()
        console.print(report_table(report, title="SEV-SNP attestation report (verified)"))
        console.print("[bold green]OK[/]: ARK -> ASK -> VCEK chain and report signature verify")
    return ExitCode.OK

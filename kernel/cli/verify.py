"""``svsm verify DIR``: check a report against its ARK -> ASK -> VCEK chain and print it.

``DIR`` holds ``report.bin``, ``ark.pem``, ``ask.pem`` and ``vcek.pem`` (what ``svsm attest``
writes).  When it also holds ``manifest.bin`` (a services attestation through the SVSM), the
binding REPORT_DATA = SHA-512(nonce || manifest) is checked, with ``--nonce`` or else
``nonce.bin``; without a manifest ``--nonce`` must equal REPORT_DATA (zero-padded).
Exit status 0 when everything verifies, 1 (FAILED) when anything does not.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
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
    p.add_argument("--nonce", help="hex, up to 64 bytes (zero-padded): the nonce the report must be bound to")
    p.add_argument("--measurement", help="hex; the expected launch digest")
    p.add_argument("--ark", type=pathlib.Path, action="append",
                   help="trusted root (PEM; repeatable): DIR/ark.pem must be one of them")
    p.set_defaults(func=_run)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from cryptography import x509

    from svsm.sdk.attestation import ReportFormatError, VerificationError, load_chain, report_table, report_to_dict, verify_report

    try:
        files = {n: (args.dir / n).read_bytes() for n in ("report.bin", "ark.pem", "ask.pem", "vcek.pem")}
        for path in args.ark or ():
            path.stat()
    except OSError as exc:
        raise UsageError(f"{exc.filename}: {exc.strerror}") from exc
    try:
        trusted = None
        if args.ark:
            trusted = [x509.load_pem_x509_certificate(path.read_bytes()) for path in args.ark]
        chain = load_chain(files["ark.pem"], files["ask.pem"], files["vcek.pem"])
        report = verify_report(files["report.bin"], chain, trusted_arks=trusted)
        nonce = bytes.fromhex(args.nonce).ljust(64, b"\0") if args.nonce is not None else None
        manifest_path = args.dir / "manifest.bin"
        if manifest_path.exists():
            if nonce is None and (args.dir / "nonce.bin").exists():
                nonce = (args.dir / "nonce.bin").read_bytes()
            if nonce is not None:
                expect = hashlib.sha512(nonce + manifest_path.read_bytes()).digest()
                if not hmac.compare_digest(report.report_data, expect):
                    raise VerificationError("REPORT_DATA is not SHA-512(nonce || manifest)")
        elif nonce is not None and not hmac.compare_digest(report.report_data, nonce):
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

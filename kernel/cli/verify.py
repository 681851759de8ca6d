"""``svsm verify DIR``: check a report against its ARK -> ASK -> VCEK chain and print it.

``DIR`` holds ``report.bin``, ``ark.pem``, ``ask.pem`` and ``vcek.pem`` (what ``svsm attest``
writes).  When it also holds ``manifest.bin`` (a services attestation through the SVSM), the
binding REPORT_DATA = SHA-512(nonce || manifest) is checked, with ``--nonce`` or else
``nonce.bin``, and the report must be a VMPL0 one (the SVSM's: at VMPL1-3 the guest OS picks
REPORT_DATA, so it could bind any manifest it likes); without a manifest ``--nonce`` must equal REPORT_DATA (zero-padded).
A guest policy with DEBUG set fails too (``--allow-debug`` accepts it): the host can read and write
such a guest, and MEASUREMENT does not show the policy.
Exit status 0 when everything verifies, 1 (FAILED) when anything does not.

The chain in ``DIR`` comes from whoever produced the report, so it proves nothing unless its
root is one the verifier already trusts.  The trusted roots are the ``--ark`` files, or by
default the ARK of the local simulated chip (``--chip-dir``, default the PSP state directory),
the way a real verifier pins AMD's published ARK.  ``--no-pin`` checks only the chain's own
consistency and says so.
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

#: Guest policy bit DEBUG (snp.md): the host may read and write the guest's memory.
_POLICY_DEBUG = 1 << 19


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``verify`` subcommand."""
    p = subparsers.add_parser("verify", help="verify an SNP attestation report and its certificate chain")
    p.add_argument("dir", type=pathlib.Path, help="directory with report.bin, ark.pem, ask.pem, vcek.pem")
    p.add_argument("--json", action="store_true", help="print the parsed report as JSON")
    p.add_argument("--nonce", help="hex, up to 64 bytes (zero-padded): the nonce the report must be bound to")
    p.add_argument("--measurement", help="hex; the expected launch digest")
    p.add_argument("--ark", type=pathlib.Path, action="append",
                   help="trusted root (PEM; repeatable): DIR/ark.pem must be one of them")
    p.add_argument("--state-dir", type=pathlib.Path,
                   help="simulated chips' directory (as for svsm attest); its --chip's ARK is trusted when no --ark is given")
    p.add_argument("--chip", default="default", help="the simulated chip whose ARK is trusted by default")
    p.add_argument("--allow-debug", action="store_true",
                   help="accept a guest policy that allows debugging (the host can read and write that guest)")
    p.add_argument("--no-pin", action="store_true",
                   help="trust whatever ARK DIR holds (checks only the chain's consistency; insecure)")
    p.set_defaults(func=_run)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from cryptography import x509

    from svsm.sdk.attestation import ReportFormatError, VerificationError, load_chain, report_table, report_to_dict, verify_report

    try:
        files = {n: (args.dir / n).read_bytes() for n in ("report.bin", "ark.pem", "ask.pem", "vcek.pem")}
        roots = list(args.ark or ())
        if not roots and not args.no_pin:
            roots = [_default_ark(args.state_dir, args.chip)]
        for path in roots:
            path.stat()
    except OSError as exc:
        raise UsageError(f"{exc.filename}: {exc.strerror}") from exc
    try:
        trusted = [x509.load_pem_x509_certificate(path.read_bytes()) for path in roots] or None
        chain = load_chain(files["ark.pem"], files["ask.pem"], files["vcek.pem"])
        report = verify_report(files["report.bin"], chain, trusted_arks=trusted)
        nonce = bytes.fromhex(args.nonce).ljust(64, b"\0") if args.nonce is not None else None
        manifest_path = args.dir / "manifest.bin"
        if manifest_path.exists():
            # A services manifest means something only in a report the SVSM asked for: at any
            # other VMPL the guest OS chose REPORT_DATA itself, and with it the "manifest".
            if report.vmpl != 0:
                raise VerificationError(f"a services manifest needs a VMPL0 report, this one is VMPL{report.vmpl}")
            if nonce is None and (args.dir / "nonce.bin").exists():
                nonce = (args.dir / "nonce.bin").read_bytes()
            if nonce is not None:
                expect = hashlib.sha512(nonce + manifest_path.read_bytes()).digest()
                if not hmac.compare_digest(report.report_data, expect):
                    raise VerificationError("REPORT_DATA is not SHA-512(nonce || manifest)")
        elif nonce is not None and not hmac.compare_digest(report.report_data, nonce):
            raise VerificationError("REPORT_DATA does not match --nonce")
        if report.policy & _POLICY_DEBUG and not args.allow_debug:
            # MEASUREMENT does not cover the policy: the same image launched with DEBUG is the host's.
            raise VerificationError("the guest policy allows debugging (pass --allow-debug to accept it)")
        if args.measurement is not None and report.measurement != bytes.fromhex(args.measurement):
            raise VerificationError("MEASUREMENT does not match --measurement")
    except (ReportFormatError, VerificationError) as exc:
        print(f"svsm verify: FAILED: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except ValueError as exc:
        raise UsageError(f"bad hex: {exc}") from exc
    if args.json:
        print(json.dumps({"verified": True, "root_pinned": trusted is not None, "report": report_to_dict(report)}, indent=2))
    else:
        from rich.console import Console

        console = Console()
        console.print(report_table(report, title="SEV-SNP attestation report (verified)"))
        console.print("[bold green]OK[/]: ARK -> ASK -> VCEK chain and report signature verify")
        if trusted is None:
            console.print("[bold yellow]WARNING[/]: --no-pin: the ARK was not checked against a trusted root")
    return ExitCode.OK


def _default_ark(state_dir: pathlib.Path | None, chip: str) -> pathlib.Path:
    """The ARK of the local simulated chip: the root a verifier on this host trusts by default."""
    from svsm.kernel.hw.psp import default_state_dir

    path = (state_dir / chip if state_dir is not None else default_state_dir(chip)) / "ark.pem"
    if not path.exists():
        raise UsageError(f"no trusted root: {path} does not exist; pass --ark PEM (or --no-pin to skip the check)")
    return path

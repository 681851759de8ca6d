"""``svsm attest``: launch a CVM on the simulated chip and save a signed report and its chain.

Writes ``report.bin`` (the 1184-byte ATTESTATION_REPORT) plus ``ark.pem``, ``ask.pem`` and
``vcek.pem`` into ``--out``; ``svsm verify DIR`` (or any SNP verifier) checks them.

The report is obtained the way an SVSM at VMPL0 gets one: an MSG_REPORT_REQ sealed with
VMPCK0 from the secrets page the PSP filled at launch, answered through the PSP's
guest-request entry.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import pathlib

from ._main import ExitCode, UsageError

__all__ = ["register"]

log = logging.getLogger(__name__)
DEFAULT_OVMF = pathlib.Path("/usr/share/ovmf/OVMF.fd")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``attest`` subcommand."""
    from svsm.kernel.hw.psp import CPU_SIGS, PRODUCTS

    p = subparsers.add_parser("attest", help="launch a CVM on the simulated chip and write a signed report + chain")
    p.add_argument("--out", required=True, type=pathlib.Path, help="directory for report.bin, ark.pem, ask.pem, vcek.pem")
    p.add_argument("--nonce", default="", help="hex, up to 64 bytes, placed in REPORT_DATA (zero-padded)")
    p.add_argument("--ovmf", type=pathlib.Path, help=f"firmware to launch (default {DEFAULT_OVMF} if present, else a minimal image)")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--vcpu-type", choices=list(CPU_SIGS), default="EPYC-Milan")
    p.add_argument("--guest-features", type=lambda s: int(s, 0), default=0x1)
    p.add_argument("--vmpl", type=int, choices=range(4), default=0, help="VMPL the report shows")
    p.add_argument("--report-version", type=int, choices=(2, 3, 5), default=3)
    p.add_argument("--state-dir", type=pathlib.Path, help="simulated chip state (default: per-user data dir)")
    p.add_argument("--chip", default="default", help="name of the simulated chip")
    p.add_argument("--product", choices=sorted(PRODUCTS), default="Milan", help="product of a newly made chip")
    p.set_defaults(func=_run)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from svsm.kernel.hw.psp import (
        CPU_SIGS, Chip, FirmwareImage, FirmwareImageError, SectionType, SnpFirmware, build_image, launch, launch_plan,
    )  # fmt: skip
    from svsm.sdk.attestation import SNP_REPORT_REQ, SNP_REPORT_RSP, SNP_SECRETS_PAGE, GuestMessageClient, MsgType

    try:
        nonce = bytes.fromhex(args.nonce)
    except ValueError as exc:
        raise UsageError(f"--nonce is not hex: {exc}") from exc
    if len(nonce) > 64:
        raise UsageError("--nonce is longer than 64 bytes")
    ovmf = args.ovmf or (DEFAULT_OVMF if DEFAULT_OVMF.exists() else None)
    try:
        if ovmf is not None:
            data = ovmf.read_bytes()
        else:
            data = build_image(sections=[(0x800000, 0x1000, SectionType.SNP_SECRETS)])
        image = FirmwareImage.parse(data)
    except OSError as exc:
        raise UsageError(f"{exc.filename}: {exc.strerror}") from exc
    except FirmwareImageError as exc:
        raise UsageError(f"firmware: {exc}") from exc
    if not any(s.type is SectionType.SNP_SECRETS for s in image.sections):
        raise UsageError("the firmware has no SNP secrets section; the guest would have no VMPCK")

    chip = Chip.load_or_create(args.state_dir / args.chip if args.state_dir else None, name=args.chip, product=args.product)
    fw = SnpFirmware(chip, report_version=args.report_version)
    plan = launch_plan(image, vcpus=args.vcpus, vcpu_sig=CPU_SIGS[args.vcpu_type], guest_features=args.guest_features)
    result = launch(fw, plan)
    assert result.secrets_page is not None
    secrets = SNP_SECRETS_PAGE.from_buffer_copy(result.secrets_page)
    client = GuestMessageClient(secrets.vmpck(0), 0)
    req = SNP_REPORT_REQ(vmpl=args.vmpl)
    ctypes.memmove(req.report_data, nonce.ljust(64, b"\0"), 64)
    rsp = SNP_REPORT_RSP.from_buffer_copy(client.response(fw.guest_request(result.ctx, client.request(MsgType.REPORT_REQ, bytes(req)))))
    if rsp.status != 0:
        log.error("PSP refused the report request: status %#x", rsp.status)
        return ExitCode.FAILED
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.bin").write_bytes(bytes(rsp.report)[: rsp.report_size])
    for name, pem in zip(("ark.pem", "ask.pem", "vcek.pem"), chip.chain_pem()):
        (args.out / name).write_bytes(pem)
    print(f"measurement {result.measurement.hex()}")
    print(f"wrote {args.out / 'report.bin'} and the ARK/ASK/VCEK chain")
    return ExitCode.OK

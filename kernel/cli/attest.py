"""``svsm attest``: launch a CVM on the simulated chip and save a signed report and its chain.

Writes ``report.bin`` (the 1184-byte ATTESTATION_REPORT) plus ``ark.pem``, ``ask.pem`` and
``vcek.pem`` into ``--out``; ``svsm verify DIR`` (or any SNP verifier) checks them.

By default a whole CVM boots (``svsm.kernel.boot``) and its guest OS asks the SVSM for a
services attestation (ATTEST_SERVICES): the SVSM fetches a VMPL0 report from the PSP with
VMPCK0, REPORT_DATA = SHA-512(nonce || services manifest); ``nonce.bin`` and ``manifest.bin``
are written too.  ``--direct`` skips the SVSM: it launches a firmware image (``--ovmf``) and
sends MSG_REPORT_REQ with VMPCK0 itself, REPORT_DATA = the nonce (zero-padded).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
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
    p.add_argument("--nonce", help="hex, up to 64 bytes (zero-padded to 64; default: 64 random bytes)")
    p.add_argument("--direct", action="store_true", help="no SVSM: launch --ovmf and ask the PSP with VMPCK0 directly")
    p.add_argument("--ovmf", type=pathlib.Path,
                   help=f"--direct: firmware to launch (default {DEFAULT_OVMF} if present, else a minimal image)")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--vcpu-type", choices=list(CPU_SIGS), default="EPYC-Milan")
    p.add_argument("--guest-features", type=lambda s: int(s, 0), default=0x1)
    p.add_argument("--vmpl", type=int, choices=range(4), default=0, help="--direct: VMPL the report shows")
    p.add_argument("--report-version", type=int, choices=(2, 3, 5), default=3, help="--direct: report version")
    p.add_argument("--state-dir", type=pathlib.Path, help="simulated chip state (default: per-user data dir)")
    p.add_argument("--chip", default="default", help="name of the simulated chip")
    p.add_argument("--product", choices=sorted(PRODUCTS), default="Milan", help="product of a newly made chip")
    p.set_defaults(func=_run)  # fmt: skip


def _nonce(text: str | None) -> bytes:
    if text is None:
        return os.urandom(64)
    try:
        nonce = bytes.fromhex(text)
    except ValueError as exc:
        raise UsageError(f"--nonce is not hex: {exc}") from exc
    if len(nonce) > 64:
        raise UsageError("--nonce is longer than 64 bytes")
    return nonce.ljust(64, b"\0")


def _chip_dir(args: argparse.Namespace) -> pathlib.Path:
    from svsm.kernel.hw.psp import default_state_dir

    return args.state_dir / args.chip if args.state_dir else default_state_dir(args.chip)


def _write_chain(out: pathlib.Path, pems: tuple[bytes, bytes, bytes]) -> None:
    for name, pem in zip(("ark.pem", "ask.pem", "vcek.pem"), pems):
        (out / name).write_bytes(pem)


def _run(args: argparse.Namespace) -> int:
    nonce = _nonce(args.nonce)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.direct:
        return _direct(args, nonce)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from svsm.kernel import boot
    from svsm.kernel.hw.psp import Chip
    from svsm.sdk.attestation import ARK_GUID, ASK_GUID, VCEK_GUID

    chip_dir = _chip_dir(args)
    Chip.load_or_create(chip_dir, product=args.product)  # make it with the requested product if new
    with boot(vcpus=args.vcpus, psp_state_dir=str(chip_dir)) as cvm:
        guest = cvm.guest
        guest.accept_memory(0, cvm.layout.svsm_base)
        att = guest.attest(nonce)
        measurement = cvm.measurement
    pems = tuple(x509.load_der_x509_certificate(att.certificates[g]).public_bytes(Encoding.PEM)
                 for g in (ARK_GUID, ASK_GUID, VCEK_GUID))  # fmt: skip
    (args.out / "report.bin").write_bytes(att.report)
    (args.out / "nonce.bin").write_bytes(nonce)
    (args.out / "manifest.bin").write_bytes(att.manifest_bytes)
    _write_chain(args.out, pems)  # type: ignore[arg-type]
    print(f"measurement {measurement.hex()}")
    print(f"wrote {args.out / 'report.bin'} (services attestation through the SVSM), nonce, manifest and the chain")
    return ExitCode.OK


def _direct(args: argparse.Namespace, nonce: bytes) -> int:
    from svsm.kernel.hw.psp import (
        CPU_SIGS, Chip, FirmwareImage, FirmwareImageError, SectionType, SnpFirmware, build_image, launch, launch_plan,
    )  # fmt: skip
    from svsm.sdk.attestation import SNP_REPORT_REQ, SNP_REPORT_RSP, SNP_SECRETS_PAGE, GuestMessageClient, MsgType

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

    chip = Chip.load_or_create(_chip_dir(args), product=args.product)
    fw = SnpFirmware(chip, report_version=args.report_version)
    plan = launch_plan(image, vcpus=args.vcpus, vcpu_sig=CPU_SIGS[args.vcpu_type], guest_features=args.guest_features)
    result = launch(fw, plan)
    assert result.secrets_page is not None
    secrets = SNP_SECRETS_PAGE.from_buffer_copy(result.secrets_page)
    client = GuestMessageClient(secrets.vmpck(0), 0)
    req = SNP_REPORT_REQ(vmpl=args.vmpl)
    ctypes.memmove(req.report_data, nonce, 64)
    rsp = SNP_REPORT_RSP.from_buffer_copy(client.response(fw.guest_request(result.ctx, client.request(MsgType.REPORT_REQ, bytes(req)))))
    if rsp.status != 0:
        log.error("PSP refused the report request: status %#x", rsp.status)
        return ExitCode.FAILED
    (args.out / "report.bin").write_bytes(bytes(rsp.report)[: rsp.report_size])
    for stale in ("nonce.bin", "manifest.bin"):
        (args.out / stale).unlink(missing_ok=True)
    _write_chain(args.out, chip.chain_pem())
    print(f"measurement {result.measurement.hex()}")
    print(f"wrote {args.out / 'report.bin'} and the ARK/ASK/VCEK chain")
    return ExitCode.OK

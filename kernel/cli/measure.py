"""``svsm measure``: the SNP launch digest, with sev-snp-measure's options and output.

``svsm measure --mode snp --vcpus N --vcpu-type T --ovmf PATH [--kernel K ...]`` prints the
96 hex digits ``sev-snp-measure`` prints for the same arguments (``--vmm-type`` QEMU, ec2, gce;
modes snp, snp:ovmf-hash, snp:svsm).
"""

from __future__ import annotations

import argparse
import base64
import pathlib

from svsm.kernel.hw.psp import (
    CPU_SIGS, FirmwareImage, FirmwareImageError, LaunchDigest, LaunchUpdate, PageType, SevHashes, VmmType,
    calc_launch_digest, cpu_sig, launch_plan, svsm_launch_plan,
)  # fmt: skip

from ._main import ExitCode, UsageError

__all__ = ["register"]


def _int(s: str) -> int:
    return int(s, 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``measure`` subcommand."""
    p = subparsers.add_parser("measure", help="print the SNP launch digest of a firmware image (like sev-snp-measure)")
    p.add_argument("--mode", choices=["snp", "snp:ovmf-hash", "snp:svsm"], default="snp",
                   help="snp: full launch digest; snp:ovmf-hash: the firmware pages only; snp:svsm: OVMF + SVSM image")
    p.add_argument("--vcpus", metavar="N", type=int, help="number of guest vCPUs")
    p.add_argument("--vcpu-type", metavar="CPUTYPE", choices=list(CPU_SIGS), help=f"vCPU model ({', '.join(CPU_SIGS)})")
    p.add_argument("--vcpu-sig", metavar="VALUE", type=_int, help="vCPU signature (CPUID 1 EAX)")
    p.add_argument("--vcpu-family", metavar="FAMILY", type=int)
    p.add_argument("--vcpu-model", metavar="MODEL", type=int)
    p.add_argument("--vcpu-stepping", metavar="STEPPING", type=int)
    p.add_argument("--vmm-type", metavar="VMMTYPE", choices=[v.value for v in VmmType], default="QEMU",
                   help="whose launch to reproduce (QEMU, ec2, gce)")
    p.add_argument("--ovmf", metavar="PATH", required=True, type=pathlib.Path, help="OVMF firmware image")
    p.add_argument("--kernel", metavar="PATH", type=pathlib.Path, help="kernel for measured direct boot")
    p.add_argument("--initrd", metavar="PATH", type=pathlib.Path, help="initrd (with --kernel)")
    p.add_argument("--append", metavar="CMDLINE", help="kernel command line (with --kernel)")
    p.add_argument("--guest-features", metavar="VALUE", type=_int, default=0x1, help="SEV_FEATURES (default 0x1)")
    p.add_argument("--output-format", choices=["hex", "base64"], default="hex")
    p.add_argument("--snp-ovmf-hash", metavar="HASH", help="precomputed firmware digest (hex)")
    p.add_argument("--dump-vmsa", action="store_true", help="write the measured VMSAs to vmsa<N>.bin")
    p.add_argument("--svsm", metavar="PATH", type=pathlib.Path, help="snp:svsm: the SVSM image")
    vars_ = p.add_mutually_exclusive_group()
    vars_.add_argument("--vars-size", metavar="SIZE", type=int, help="snp:svsm: size of OVMF_VARS in bytes")
    vars_.add_argument("--vars-file", metavar="PATH", type=pathlib.Path, help="snp:svsm: the OVMF_VARS file")
    p.set_defaults(func=_run)  # fmt: skip


def _vcpu_sig(args: argparse.Namespace, vmm: VmmType) -> int:
    if args.vcpu_family is not None:
        if args.vcpu_model is None or args.vcpu_stepping is None:
            raise UsageError("--vcpu-family needs --vcpu-model and --vcpu-stepping")
        return cpu_sig(args.vcpu_family, args.vcpu_model, args.vcpu_stepping)
    if args.vcpu_sig is not None:
        return int(args.vcpu_sig)
    if args.vcpu_type is not None:
        return CPU_SIGS[args.vcpu_type]
    if vmm is not VmmType.QEMU:
        return 0  # EC2 and GCE put a fixed 0x600 in RDX
    raise UsageError("missing --vcpu-type or --vcpu-sig or --vcpu-family")


def _dump(plan: list[LaunchUpdate]) -> None:
    for u in plan:
        if u.page_type is PageType.VMSA:
            pathlib.Path(f"vmsa{u.vcpu}.bin").write_bytes(u.data or b"")


def _svsm_plan(args: argparse.Namespace, ovmf: FirmwareImage) -> list[LaunchUpdate]:
    if args.svsm is None or args.vcpus is None:
        raise UsageError("snp:svsm mode needs --svsm and --vcpus")
    if args.vars_file is not None:
        vars_size = args.vars_file.stat().st_size
    elif args.vars_size is not None:
        vars_size = args.vars_size
    else:
        raise UsageError("snp:svsm mode requires --vars-size or --vars-file")
    svsm = FirmwareImage.parse(args.svsm.read_bytes(), end_at=ovmf.gpa - vars_size)
    return svsm_launch_plan(ovmf, svsm, vcpus=args.vcpus, vcpu_sig=_vcpu_sig(args, VmmType.QEMU))


def _run(args: argparse.Namespace) -> int:

    if (args.initrd or args.append) and args.kernel is None:
        raise UsageError("--kernel required when using --initrd or --append")
    try:
        data = args.ovmf.read_bytes()
        image = FirmwareImage.parse(data)
        if args.mode == "snp:ovmf-hash":
            ld = LaunchDigest()
            ld.update_normal(image.gpa, image.data)
            digest = ld.digest
        elif args.mode == "snp:svsm":
            plan = _svsm_plan(args, image)
            digest = LaunchDigest().apply(plan)
            if args.dump_vmsa:
                _dump(plan)
        else:
            if args.vcpus is None:
                raise UsageError("missing --vcpus N in guest mode 'snp'")
            hashes = None
            if args.kernel is not None:
                initrd = args.initrd.read_bytes() if args.initrd else None
                hashes = SevHashes.of(args.kernel.read_bytes(), initrd, args.append)
            seed = bytes.fromhex(args.snp_ovmf_hash) if args.snp_ovmf_hash else None
            vmm = VmmType(args.vmm_type)
            sig = _vcpu_sig(args, vmm)
            digest = calc_launch_digest(image, vcpus=args.vcpus, vcpu_sig=sig, guest_features=args.guest_features,
                                        hashes=hashes, ovmf_hash=seed, vmm_type=vmm)  # fmt: skip
            if args.dump_vmsa:
                plan = launch_plan(image, vcpus=args.vcpus, vcpu_sig=sig, guest_features=args.guest_features,
                                   hashes=hashes, include_firmware=False, vmm_type=vmm)  # fmt: skip
                _dump(plan)
    except OSError as exc:
        raise UsageError(f"{exc.filename}: {exc.strerror}") from exc
    except (FirmwareImageError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    print(digest.hex() if args.output_format == "hex" else base64.b64encode(digest).decode())
    return ExitCode.OK

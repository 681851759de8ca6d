"""``svsm modules``: list installed ring-3 modules with the protections in force, or call one.

``svsm modules list`` discovers modules (entry points ``svsm.modules``), starts each in
its sandbox to observe what is actually in force, and prints a rich table (``--json``
for scripts).  ``svsm modules call PROTOCOL CALL`` starts them and makes one call, as
the guest would, printing RAX/RCX/RDX/R8.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ._main import ExitCode, UsageError

__all__ = ["register"]


def _int(text: str) -> int:
    return int(text, 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svsm modules``."""
    p = subparsers.add_parser("modules", help="list or call installed ring-3 service modules")
    sub = p.add_subparsers(dest="modules_command", metavar="ACTION")
    sub.required = True
    for name, helptext in (("list", "show modules, capabilities and the sandbox in force"), ("call", "make one call")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--policy", metavar="FILE", help="module policy (JSON)")
        q.add_argument("--block", metavar="NAME", action="append", default=[], help="skip module NAME (repeatable)")
        q.add_argument("--in-process", action="store_true", help="run modules as threads (no sandbox; debugging)")
        q.add_argument("--json", action="store_true", help="print JSON")
        q.add_argument("--disk", metavar="FILE", help="host disk image for the disk syscalls (default: 4 MiB in memory)")
    lst = sub.choices["list"]
    lst.add_argument("--no-start", action="store_true", help="only read manifests; do not start modules")
    lst.set_defaults(func=_list)
    call = sub.choices["call"]
    call.add_argument("protocol", type=_int, help="protocol number (e.g. 0x40000001)")
    call.add_argument("call", type=_int, help="call number")
    for reg in ("rcx", "rdx", "r8", "r9"):
        call.add_argument(f"--{reg}", type=_int, default=0, help=f"input {reg.upper()}")
    call.set_defaults(func=_call)


def _host(args: argparse.Namespace) -> Any:
    from svsm.kernel.ipc import BlockDisk, MemoryDisk, ModuleHost, Providers, load_policy
    from svsm.sdk import InvalidFormat

    try:
        policy = load_policy(args.policy)
    except InvalidFormat as exc:
        raise UsageError(str(exc)) from None
    if args.disk:
        from svsm.kernel.hw.blockdev import FileImage

        disk: Any = BlockDisk(FileImage(args.disk))
    else:
        disk = MemoryDisk()
    return ModuleHost.from_installed(
        blocked=args.block,
        policy=policy,
        mode="inprocess" if args.in_process else "process",
        providers=Providers(disk=disk),
    )


def _list(args: argparse.Namespace) -> int:
    host = _host(args)
    try:
        if not args.no_start:
            host.start()
        infos = host.modules()
        skipped = dict(host.skipped)
        undumpable = host.kernel_undumpable
    finally:
        host.close()
    if args.json:
        print(
            json.dumps(
                {
                    "kernel": {"pid": os.getpid(), "non_dumpable": undumpable},
                    "modules": [info._asdict() for info in infos],
                    "skipped": skipped,
                },
                indent=2,
            )
        )
        return ExitCode.OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title="svsm modules")
    for col in ("name", "version", "state", "protocols", "capabilities (granted/requested)", "protections", "measurement"):
        table.add_column(col, overflow="fold")
    for i in infos:
        caps = ", ".join(c if c in i.granted else f"[strike]{c}[/strike]" for c in i.requested) or "-"
        table.add_row(
            i.name,
            i.version,
            i.state + (f" ({i.last_failure})" if i.last_failure else ""),
            ", ".join(f"{p:#x}" for p in i.protocols) or "-",
            caps,
            ", ".join(i.protections) or ("not started" if args.no_start else "none (in-process)"),
            i.measurement[:16] + "...",
        )
    console = Console()
    console.print(table)
    for name, why in sorted(skipped.items()):
        console.print(f"skipped {name}: {why}", markup=False)
    if not args.no_start:
        console.print(f"kernel process non-dumpable: {'yes' if undumpable else 'no'}")
    return ExitCode.OK


def _call(args: argparse.Namespace) -> int:
    host = _host(args)
    try:
        host.start()
        out = host.call(args.protocol, args.call, args.rcx, args.rdx, args.r8, args.r9)
    finally:
        host.close()
    if args.json:
        print(json.dumps(out._asdict()))
    else:
        print(f"RAX={out.rax:#x} RCX={out.rcx:#x} RDX={out.rdx:#x} R8={out.r8:#x}")
    return ExitCode.OK if out.rax == 0 else ExitCode.FAILED

"""``svsm new-module NAME``: scaffold a complete module package from the packaged templates.

The package has a pyproject with the ``svsm.modules`` entry point, the module, and a
passing test; ``pip install ./NAME`` makes ``svsm modules list`` show it.
"""

from __future__ import annotations

import argparse
import importlib.resources
import pathlib
import re
import string
import zlib

from ._main import ExitCode, UsageError

__all__ = ["register", "scaffold"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svsm new-module``."""
    p = subparsers.add_parser("new-module", help="scaffold a ring-3 service module package")
    p.add_argument("name", help="module name ([a-z][a-z0-9_]*, <= 32)")
    p.add_argument("--dir", metavar="PATH", default=".", help="parent directory (default: .)")
    p.add_argument("--protocol", metavar="N", type=lambda s: int(s, 0), default=None,
                   help="vendor protocol number (default: derived from the name, >= 0x40000000)")  # fmt: skip
    p.set_defaults(func=_main)


def scaffold(name: str, parent: pathlib.Path, protocol: int | None = None) -> pathlib.Path:
    """Write the package for module ``name`` under ``parent``; returns its directory.

    :raises UsageError: bad name or protocol, or the directory exists.
    """
    from svsm.sdk import VENDOR_PROTOCOL_BASE

    if not _NAME.match(name):
        raise UsageError(f"module name {name!r} must match [a-z][a-z0-9_]{{0,31}}")
    if protocol is None:
        protocol = VENDOR_PROTOCOL_BASE + 0x1000 + zlib.crc32(name.encode()) % 0x10000
    if not VENDOR_PROTOCOL_BASE <= protocol <= 0xFFFF_FFFF:
        raise UsageError(f"protocol must be in {VENDOR_PROTOCOL_BASE:#x}..0xffffffff")
    dest = parent / name
    if dest.exists():
        raise UsageError(f"{dest} already exists")
    package = f"svsm_{name}"
    values = {
        "name": name,
        "dist": f"svsm-{name.replace('_', '-')}",
        "package": package,
        "classname": "".join(part.capitalize() for part in name.split("_")) + "Module",
        "protocol_hex": f"{protocol:#010x}",
    }
    root = importlib.resources.files(__package__) / "templates" / "module"

    def walk(node: importlib.resources.abc.Traversable, rel: pathlib.PurePosixPath) -> None:
        for child in node.iterdir():
            if child.name == "__pycache__":
                continue
            target_rel = rel / (package if child.name == "package" else child.name.removesuffix(".tmpl"))
            if child.is_dir():
                walk(child, target_rel)
            else:
                out = dest / target_rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(string.Template(child.read_text()).substitute(values))

    walk(root, pathlib.PurePosixPath("."))
    return dest


def _main(args: argparse.Namespace) -> int:
    dest = scaffold(args.name, pathlib.Path(args.dir), args.protocol)
    print(f"created {dest} -- next: pip install {dest} && svsm modules list")
    return ExitCode.OK

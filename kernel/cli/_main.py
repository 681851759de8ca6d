"""Argument parsing and subcommand discovery for ``svsm`` (tox's ``run()``/``main()`` split).

Each subcommand is one module exposing ``register(subparsers) -> None``; the
parser it adds sets ``func(args) -> int``.  Built-in kernel subcommands are
listed in :data:`BUILTIN`; packages (the shipped modules included) add their own
through the ``svsm.commands`` entry-point group, so there is no private side door.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

__all__ = ["ExitCode", "UsageError", "main", "run", "BUILTIN"]

log = logging.getLogger("svsm.cli")

#: Kernel-side subcommand modules, relative to this package.
BUILTIN: tuple[str, ...] = (
    "measure",
    "attest",
    "verify",
    "run",
    "modules",
    "new_module",
    "tpm",
    "migrate",
    "migrate_demo",
)


class ExitCode(enum.IntEnum):
    """Process exit status of ``svsm``."""

    #: Everything worked.
    OK = 0
    #: A check failed (bad signature, failed verification, guest saw an error).
    FAILED = 1
    #: Bad command line or an expected user error (printed as one line).
    USAGE = 2
    #: Interrupted by the user.
    INTERRUPTED = 130


class UsageError(Exception):
    """An expected user error: printed as one line, exit status :attr:`ExitCode.USAGE`."""

    exit_code: int = ExitCode.USAGE


def _load_subcommands(sub: argparse._SubParsersAction) -> None:
    for name in BUILTIN:
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}":
                continue  # not built yet in this tree
            raise
        mod.register(sub)
    for ep in entry_points(group="svsm.commands"):
        try:
            ep.load()(sub)
        except Exception:  # a broken plugin must not break the whole CLI
            log.exception("svsm.commands plugin %r failed to register", ep.name)


def build_parser() -> argparse.ArgumentParser:
    """Build the full parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="svsm", description="pysvsm: a simulated SEV-SNP CVM with an SVSM")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _load_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand.

    :returns: an :class:`ExitCode` value.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"svsm: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `svsm run --json | head`: the reader left; stop quietly, as shell tools do.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())

"""``svsm anchor serve``: run the reference freshness anchor on loopback TCP.

Registered through the ``svsm.commands`` entry-point group (the shipped modules use the same door
as third-party code).  It prints one line ``anchor listening on HOST:PORT key HEX`` and serves
until interrupted; give the key to the CVM (``--anchor-key``) to pin it, or let the store learn it
on first use.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
import time

from ._anchor_service import AnchorService, chain_verifier, load_or_create_key, serve_tcp

__all__ = ["register"]

log = logging.getLogger("svsm.cli.anchor")

DEFAULT_PORT = 7095


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svsm anchor serve`` to the CLI."""
    anchor = subparsers.add_parser("anchor", help="freshness anchor for the persistence module")
    sub = anchor.add_subparsers(dest="anchor_command", metavar="ACTION")
    sub.required = True
    serve = sub.add_parser("serve", help="serve monotonic generations and leases to attested SVSMs")
    serve.add_argument("--state", type=pathlib.Path, required=True, help="directory for the key and state")
    serve.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", help="HOST:PORT (port 0 picks one)")
    serve.add_argument("--chip-dir", type=pathlib.Path, help="PSP chip directory holding ark.pem and ask.pem")
    serve.add_argument("--ark", type=pathlib.Path, help="trusted ARK certificate (PEM)")
    serve.add_argument("--ask", type=pathlib.Path, help="trusted ASK certificate (PEM)")
    serve.add_argument("--vcek", type=pathlib.Path, action="append", default=[],
                       help="known VCEK certificate (PEM) for reports sent without one; repeatable")
    serve.add_argument("--allow-measurement", action="append", default=[], metavar="HEX",
                       help="serve only SVSMs with this launch measurement; repeatable")
    serve.add_argument("--lease-ttl", type=float, default=30.0, help="seconds before an idle lease expires")
    serve.add_argument("--any-vmpl", action="store_true", help="accept reports requested below VMPL0")
    serve.add_argument("--one-store-per-measurement", action="store_true",
                       help="treat a new store of a known SVSM as a wiped disk (rollback)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    ark_path = args.ark or (args.chip_dir / "ark.pem" if args.chip_dir else None)
    ask_path = args.ask or (args.chip_dir / "ask.pem" if args.chip_dir else None)
    if ark_path is None or ask_path is None:
        print("svsm: error: anchor serve needs --chip-dir or --ark and --ask", file=sys.stderr)
        return 2
    vceks = list(args.vcek)
    if args.chip_dir is not None:
        vceks += sorted(args.chip_dir.glob("vcek*.pem"))
    try:
        verifier = chain_verifier(ark_path.read_bytes(), ask_path.read_bytes(), [p.read_bytes() for p in vceks])
        allowed = {bytes.fromhex(h) for h in args.allow_measurement} or None
        host, _, port = args.listen.rpartition(":")
        args.state.mkdir(parents=True, exist_ok=True)
        key = load_or_create_key(args.state / "anchor.key")
    except (OSError, ValueError) as exc:
        print(f"svsm: error: {exc}", file=sys.stderr)
        return 2
    service = AnchorService(key, verifier, clock=time.time_ns, rng=os.urandom,
                            state_path=args.state / "anchor.json", lease_ttl_ns=int(args.lease_ttl * 1e9),
                            allowed_measurements=allowed, require_vmpl0=not args.any_vmpl,
                            one_store_per_measurement=args.one_store_per_measurement)
    server = serve_tcp(service, host or "127.0.0.1", int(port))
    bound_host, bound_port = server.server_address[:2]
    print(f"anchor listening on {bound_host}:{bound_port} key {service.public_key.hex()}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        log.info("anchor stopped: %s", service.statistics())
    return 0

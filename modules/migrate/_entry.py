"""The package as a module object: the ``svsm.modules`` entry point names ``svsm.modules.migrate``.

The migration engine runs here, in the sandboxed ``migrate`` module process.  The kernel starts
a migration with ``ModuleHost.command("migrate", "source" | "destination", params)`` (JSON,
:class:`MigrateParams`) and gets the report back as JSON; meanwhile the engine reaches the VM and
the peer only through the kernel's ``vm`` service (:mod:`._service`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated

import msgspec

from svsm.sdk import Capability as Cap
from svsm.sdk import InvalidParameter, Manifest, ModuleContext, hookimpl
from svsm.sdk.attestation import AttestationReport

from ._channel import Role
from ._engine import (MigrationAborted, MigrationInDoubt, MigrationOptions, Progress, make_channel, migrate_destination,
                      migrate_source)
from ._policy import MeasurementPolicy, make_verifier
from ._service import SERVICE, ServicePort, ServiceStream

__all__ = ["MANIFEST", "MigrateParams", "svsm_module_command"]

MANIFEST = Manifest(
    name="migrate",
    version="0.2.0",
    capabilities=[Cap.LOG, Cap.RANDOM, Cap.TIME],
    services=[SERVICE],
    description="live migration: attested channel, pre-copy, stop-and-copy, final check, two-phase commit",
)

_Hex = Annotated[str, msgspec.Meta(max_length=96, pattern="^[0-9a-fA-F]*$")]


class MigrateParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the kernel passes to ``source`` / ``destination`` (JSON).

    :ivar ark: the pinned AMD root key (PEM) the peer's VCEK chain must end in.
    :ivar allow_measurements: launch measurements accepted besides this SVSM's own (hex).
    :ivar max_rounds: see :class:`~._engine.MigrationOptions`.
    :ivar converge_pages: see :class:`~._engine.MigrationOptions`.
    """

    ark: Annotated[str, msgspec.Meta(max_length=16384)]
    allow_measurements: Annotated[list[_Hex], msgspec.Meta(max_length=64)] = []
    max_rounds: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 8
    converge_pages: Annotated[int, msgspec.Meta(ge=0, le=1 << 24)] = 256


class _Throttle:
    """Forward at most one progress event per ``interval`` seconds, and every round's last."""

    def __init__(self, port: ServicePort, clock: Callable[[], float], interval: float = 0.1) -> None:
        self.port, self.clock, self.interval, self.last = port, clock, interval, -1e9

    def __call__(self, ev: Progress) -> None:
        now = self.clock()
        if ev.round_done >= ev.round_pages or now - self.last >= self.interval:
            self.last = now
            self.port.progress(ev)


@hookimpl
def svsm_module_command(name: str, payload: bytes, ctx: ModuleContext) -> bytes | None:
    """``source`` / ``destination``: run one end of a migration; returns the report (JSON).

    The report's ``result`` is ``committed``, ``fenced`` (source: decided, not acknowledged),
    ``aborted`` (``reason`` says why; a source resumed its guest) or ``in-doubt`` (destination).

    :raises InvalidParameter: malformed parameters.
    """
    if name not in ("source", "destination"):
        return None
    try:
        params = msgspec.json.decode(payload, type=MigrateParams)
        extra = [bytes.fromhex(m) for m in params.allow_measurements]
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise InvalidParameter(f"bad migration parameters: {exc}") from None
    sys_ = ctx.syscalls
    port, stream = ServicePort(sys_.service), ServiceStream(sys_.service)

    def clock() -> float:
        return sys_.time_ns() / 1e9

    role = Role.SOURCE if name == "source" else Role.DESTINATION
    own = bytes.fromhex(port.info()["measurement"])
    # The TCB floor is this SVSM's own REPORTED_TCB: never move the guest to older firmware.
    own_tcb = AttestationReport.from_bytes(port.attest(bytes(64))[0]).tcb("reported_tcb")
    policy = dataclasses.replace(MeasurementPolicy.same_as(own, *extra), min_tcb=own_tcb)
    verifier = make_verifier(params.ark.encode(), policy)
    channel = make_channel(port, role, verifier, sys_.random)
    opts = MigrationOptions(max_rounds=params.max_rounds, converge_pages=params.converge_pages)
    run = migrate_source if role is Role.SOURCE else migrate_destination
    try:
        rep = run(port, stream, channel, opts, on_progress=_Throttle(port, clock), clock=clock)
    except MigrationAborted as exc:
        return _json({"role": name, "result": "aborted", "reason": exc.reason})
    except MigrationInDoubt as exc:
        return _json({"role": name, "result": "in-doubt", "reason": str(exc)})
    out = dataclasses.asdict(rep)
    out["throughput"] = rep.throughput
    return _json(out)


def _json(obj: object) -> bytes:
    return msgspec.json.encode(obj)

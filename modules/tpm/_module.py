"""The vTPM ring-3 service module: SVSM protocol 2 (coconut-svsm.md 2.5, 5) around the engine.

The package ``svsm.modules.tpm`` is the module object the ``svsm.modules`` entry point names:
it exports :data:`MANIFEST` and the hook functions below, which act on one
:class:`VtpmService` per module process.

State: the engine's non-volatile state is written to storage key ``"state"`` after every
command that changed it, and read back at start.  If that write fails after a successful command
that may write NV, the command is rolled back and answered TPM_RC_NV_UNAVAILABLE (the reference
TPM's answer to a failed NV write); other state waits in memory for the next write.  A state that fails to load stops the module
(COCONUT panics on purpose, so a blank TPM never overwrites the keys).  Migration and crash
checkpoints use ``svsm_save_state`` which also carries PCRs, loaded objects and sessions.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import os
import struct
import time
from typing import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from svsm.sdk import (BufferSpec, CallSpec, InvalidFormat, InvalidParameter, InvalidRequest, Manifest,
                      ModuleContext, ProtocolSpec, Reply, Request, RequestError, hookimpl)
from svsm.sdk.tpm import (SVSM_VTPM_CMD, SVSM_VTPM_PROTOCOL, SVSM_VTPM_QUERY, VTPM_BUFFER_SIZE,
                          VTPM_QUERY_FEATURES, VTPM_QUERY_PLATFORM_COMMANDS, decode_vtpm_request,
                          encode_vtpm_response)

from ._constants import CC, RC, RH
from ._dispatch import COMMANDS
from ._ek import create_ek, ek_template_rsa2048, provision_ek
from ._engine import Tpm
from ._state import StateError

__all__ = ["MANIFEST", "VTPM_SERVICE_GUID", "STATE_KEY", "VtpmService", "SeededRng", "svsm_module_start",
           "svsm_handle_request", "svsm_save_state", "svsm_restore_state", "svsm_service_manifest",
           "svsm_module_stop"]

log = logging.getLogger(__name__)

VTPM_SERVICE_GUID = "c476f1eb-0123-45a5-9641-b4e7dde5bfe3"
STATE_KEY = "state"

MANIFEST = Manifest(
    name="tpm", version="0.1",
    protocols=[ProtocolSpec(number=SVSM_VTPM_PROTOCOL, calls=[
        CallSpec(call=SVSM_VTPM_QUERY),
        CallSpec(call=SVSM_VTPM_CMD, buffer=BufferSpec(gpa_register="rcx", size=VTPM_BUFFER_SIZE, writable=True)),
    ])],
    capabilities=["log", "random", "time", "storage"],
    service_guid=VTPM_SERVICE_GUID,
    request_timeout=30.0,
    description="TPM 2.0 (SVSM vTPM protocol 2); manifest = EK TPMT_PUBLIC",
)


class SeededRng:
    """AES-256-CTR keystream seeded from the kernel's random syscall (one syscall, many nonces).

    :param seed: 48 bytes: key (32) and initial counter (16).
    """

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 48:
            raise ValueError("SeededRng needs 48 seed bytes")
        self._enc = Cipher(algorithms.AES(seed[:32]), modes.CTR(seed[32:])).encryptor()

    def __call__(self, n: int) -> bytes:
        """``n`` pseudo-random bytes."""
        return self._enc.update(bytes(n))


class VtpmService:
    """One engine plus its storage, serving SVSM_VTPM_QUERY and SVSM_VTPM_CMD."""

    def __init__(self) -> None:
        self.tpm: Tpm | None = None
        #: the running TPM came from storage (a restart), not from manufacturing (a fresh start)
        self.from_storage = False
        self.manifest: bytes = b""
        self._now = 0.0
        self._clock_fn: Callable[[], float] = time.monotonic
        self.saves = 0
        #: commands rolled back because storage failed after they ran
        self.storage_failures = 0

    def _clock(self) -> float:
        return self._now

    def _tick(self, ctx: ModuleContext) -> None:
        self._now = self._clock_fn()

    def start(self, ctx: ModuleContext) -> None:
        """Load the TPM from storage or manufacture one, and power it on (the guest sends Startup).

        :raises StateError: the stored state is corrupt: the module must not start with a blank TPM
            (that would overwrite the keys), so the start fails on purpose, as COCONUT panics.
        """
        caps = ctx.capabilities
        rng = SeededRng(ctx.syscalls.random(48)) if "random" in caps else SeededRng(os.urandom(48))
        if "time" in caps:
            self._clock_fn = lambda: ctx.syscalls.time_ns() / 1e9
        self._tick(ctx)
        blob = ctx.syscalls.storage_get(STATE_KEY) if "storage" in caps else None
        self.from_storage = blob is not None
        if blob is not None:
            self.tpm = Tpm(rng=rng, clock=self._clock, state=blob)
        else:
            self.tpm = Tpm(rng=rng, clock=self._clock)
            ctx.log.info("vTPM manufactured (no saved state)")
        self.manifest = b""
        self.persist(ctx)  # new seeds reach storage before anything is derived from them

    def _provision(self, ctx: ModuleContext) -> None:
        """EK certificates and the manifest, on first use (RSA prime search is slow in Python and
        must not count against the module start deadline; COCONUT also creates its EK lazily)."""
        if self.manifest or self.tpm is None:
            return
        now = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=int(self._now))
        provision_ek(self.tpm, now if self._now > 946684800 else datetime.datetime(2026, 1, 1))
        self.manifest = create_ek(self.tpm, ek_template_rsa2048()).public.marshal()
        self.persist(ctx)

    def service_manifest(self, ctx: ModuleContext) -> bytes | None:
        """The RSA EK's TPMT_PUBLIC (made on first request)."""
        self._provision(ctx)
        return self.manifest or None

    def persist(self, ctx: ModuleContext) -> None:
        """Write the non-volatile state to storage if a command changed it."""
        tpm = self.tpm
        if tpm is not None and tpm.dirty and "storage" in ctx.capabilities:
            ctx.syscalls.storage_put(STATE_KEY, tpm.save_state())
            tpm.dirty = False
            self.saves += 1

    def handle(self, request: Request, ctx: ModuleContext) -> Reply:
        """SVSM_VTPM_QUERY / SVSM_VTPM_CMD exactly as COCONUT's vtpm.rs answers them.

        :raises InvalidParameter: RCX = 0, platform command != 8, locality != 0, size > 4087.
        :raises InvalidRequest: the TPM is not powered on.
        """
        if request.call == SVSM_VTPM_QUERY:
            return Reply(rcx=VTPM_QUERY_PLATFORM_COMMANDS, rdx=VTPM_QUERY_FEATURES)
        if request.rcx == 0 or request.buffer is None:
            raise InvalidParameter("SVSM_VTPM_CMD: no buffer")
        page = request.buffer
        req = decode_vtpm_request(page)
        if req.locality != 0:
            raise InvalidParameter("SVSM_VTPM_CMD: locality must be 0")
        tpm = self.tpm
        if tpm is None or not tpm.powered:
            raise InvalidRequest("vTPM not powered on")
        self._tick(ctx)
        self._provision(ctx)
        tpm = self.tpm  # _provision never replaces it, but read it once
        assert tpm is not None
        # A command that may write NV runs against a snapshot: if storage then fails, the TPM goes
        # back to it and the guest gets TPM_RC_NV_UNAVAILABLE, as the reference TPM answers when its
        # NV write fails -- never an error for a command that took effect.
        undo = None
        if "storage" in ctx.capabilities and _may_write_nv(req.command):
            undo = (tpm.save_state(include_volatile=True), tpm.dirty)
        response = tpm.execute(req.command, req.locality)
        try:
            self.persist(ctx)
        except RequestError as exc:
            self.storage_failures += 1
            if undo is not None and response[6:10] == b"\x00\x00\x00\x00":
                ctx.log.warning("vTPM: storage write failed (%s): command 0x%s rolled back, TPM_RC_NV_UNAVAILABLE",
                                type(exc).__name__, bytes(req.command[6:10]).hex())
                self.tpm = Tpm(rng=tpm.rng, clock=self._clock, state=undo[0])
                self.tpm.dirty = undo[1]  # still unwritten if an earlier write had failed too
                response = _NV_UNAVAILABLE
            else:
                # A failed command (its only persistent effect is dictionary-attack bookkeeping, which
                # must not be undone) or one without a snapshot: the state stays in memory, dirty, and
                # is written after the next command; the guest gets the TPM's own answer.
                ctx.log.warning("vTPM: storage write failed (%s) after command 0x%s; retried after the next one",
                                type(exc).__name__, bytes(req.command[6:10]).hex())
        out = encode_vtpm_response(response)
        return Reply(buffer=out + page[len(out):])

    def restore(self, state: bytes, ctx: ModuleContext) -> None:
        """Replace the engine with ``state`` (from :meth:`save`, possibly another machine).

        A snapshot older than the state this process loaded from storage is ignored (the kernel
        re-applies the last migration/checkpoint snapshot after a crash; NV must not roll back).
        The TPM is left exactly as given (``save()`` right after gives the same bytes), and the
        manifest carried by the snapshot is reused, so no EK is derived at restore or on the
        first request after it (that derivation takes seconds and would be guest downtime).

        :raises InvalidFormat: the state does not load; the running TPM is kept.
        """
        manifest, tag, blob = _split_snapshot(state)
        rng = self.tpm.rng if self.tpm is not None else SeededRng(os.urandom(48))
        try:
            tpm = Tpm(rng=rng, clock=self._clock, state=blob)
        except StateError:
            raise InvalidFormat("vTPM state rejected") from None
        current = self.tpm
        if self.from_storage and current is not None and tpm.generation < current.generation:
            # a crash checkpoint older than what storage already holds: restoring it would roll NV back
            ctx.log.warning("vTPM: ignoring a stale checkpoint (generation %d < %d)", tpm.generation,
                            current.generation)
            return
        self.tpm = tpm
        # the manifest is the EK public of *this* state's endorsement seed, else it is recomputed on
        # the next request (restores also run under the start deadline)
        self.manifest = manifest if manifest and hmac.compare_digest(tag, _manifest_tag(tpm)) else b""
        if "storage" in ctx.capabilities:  # the restored NV replaces what storage had
            ctx.syscalls.storage_put(STATE_KEY, tpm.save_state())
            tpm.dirty = False
            self.saves += 1

    def save(self) -> bytes | None:
        """Whole state including volatile parts, and the manifest once known (see :meth:`restore`)."""
        tpm = self.tpm
        if tpm is None:
            return None
        state = tpm.save_state(include_volatile=True)
        if not self.manifest:
            return state
        return _SNAPSHOT.pack(_SNAPSHOT_MAGIC, len(self.manifest)) + self.manifest + _manifest_tag(tpm) + state


#: TPM_RC_NV_UNAVAILABLE: the NV write behind the command failed; the command had no effect
_NV_UNAVAILABLE = b"\x80\x01\x00\x00\x00\x0a" + RC.NV_UNAVAILABLE.to_bytes(4, "big")


def _may_write_nv(command: bytes) -> bool:
    """Whether ``command`` is one that may change persistent state (TPMA_CC.nv), PCR_Extend aside
    (PCRs are volatile here; it never writes NV)."""
    if len(command) < 10:
        return False
    spec = COMMANDS.get(int.from_bytes(command[6:10], "big"))
    return spec is not None and spec.nv and spec.cc != CC.PCR_Extend


#: snapshot = magic | u16 size | manifest | tag (32) | engine state; a bare engine state is accepted too
_SNAPSHOT_MAGIC = b"PYVTPMS\x01"
_SNAPSHOT = struct.Struct(">8sH")


def _manifest_tag(tpm: Tpm) -> bytes:
    """Binds a carried manifest to the endorsement seed it was derived from."""
    return hashlib.sha256(b"pysvsm vTPM manifest\x00" + tpm.seeds[RH.ENDORSEMENT]).digest()


def _split_snapshot(snapshot: bytes) -> tuple[bytes, bytes, bytes]:
    """(manifest, tag, engine state) of a :meth:`VtpmService.save` snapshot.

    :raises InvalidFormat: a truncated snapshot.
    """
    if not snapshot.startswith(_SNAPSHOT_MAGIC):
        return b"", b"", snapshot
    if len(snapshot) < _SNAPSHOT.size:
        raise InvalidFormat("vTPM state rejected")
    n = _SNAPSHOT.unpack_from(snapshot)[1]
    end = _SNAPSHOT.size + n
    if len(snapshot) < end + 32:
        raise InvalidFormat("vTPM state rejected")
    return snapshot[_SNAPSHOT.size:end], snapshot[end:end + 32], snapshot[end + 32:]


_SERVICE = VtpmService()


@hookimpl
def svsm_module_start(ctx: ModuleContext) -> None:
    """Load or manufacture the vTPM (see :meth:`VtpmService.start`)."""
    _SERVICE.start(ctx)


@hookimpl
def svsm_handle_request(request: Request, ctx: ModuleContext) -> Reply | None:
    """Serve SVSM_VTPM_QUERY (0) and SVSM_VTPM_CMD (1)."""
    return _SERVICE.handle(request, ctx)


@hookimpl
def svsm_save_state(ctx: ModuleContext) -> bytes | None:
    """Whole vTPM state (non-volatile + PCRs, objects, sessions) for migration/checkpoints."""
    return _SERVICE.save()


@hookimpl
def svsm_restore_state(state: bytes, ctx: ModuleContext) -> None:
    """Resume from :func:`svsm_save_state` output."""
    _SERVICE.restore(state, ctx)


@hookimpl
def svsm_service_manifest(ctx: ModuleContext) -> bytes | None:
    """The RSA EK's TPMT_PUBLIC (coconut-svsm.md 5.2)."""
    return _SERVICE.service_manifest(ctx)


@hookimpl
def svsm_module_stop(ctx: ModuleContext) -> None:
    """Flush state that changed."""
    _SERVICE.persist(ctx)

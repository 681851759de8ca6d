"""The ring-3 persistence module: serves every other module's storage syscalls from the store.

Everything it needs comes through syscalls: the host disk (``disk``), the sealing key
(``derive_key``: HKDF of the PSP key bound to the SVSM measurement, the module's name and code
measurement), time and randomness.  A store that fails to open (authentication, rollback, clone)
makes ``svsm_module_start`` fail with the reason in the kernel log: the kernel reports the module as
failed and storage stays with the kernel's volatile fallback -- an empty store never replaces it.
"""

from __future__ import annotations

import json
from typing import Any

from svsm.sdk import (InvalidParameter, InvalidRequest, Manifest, Module, ModuleContext, RequestError,
                      UnsupportedCall, hookimpl)
from svsm.sdk import Capability as Cap

from ._anchor import AnchorClient
from ._anchor_proto import canonical, decode
from ._errors import AnchorError, StoreUnavailable
from ._format import BLOCK_SIZE
from ._store import DEFAULT_QUOTA, FreshnessAnchor, Quota, Store, StoreStatistics

__all__ = ["ANCHOR_SERVICE", "PersistModule", "SyscallBlockIO", "SEALING_KEY_CONTEXT", "kernel_anchor"]

#: Context of the derived-key syscall for the store's sealing key (changing it orphans stores).
SEALING_KEY_CONTEXT = b"pysvsm persist sealing key v1"
#: Kernel service relaying anchor frames (``svsm.kernel.hw.blockdev.AnchorLink`` on the host side).
ANCHOR_SERVICE = "anchor"
#: Key, in the module's own (kernel-held, volatile) namespace, of the anchor lease this CVM holds:
#: it survives a restart of the module process, not a reboot of the CVM.
LEASE_KEY = "anchor-lease"
#: Renew the anchor lease when a storage call comes this long after the last contact (TTL is 30 s).
HEARTBEAT_NS = 10 * 10**9
#: Blocks moved per disk syscall (the ABI caps a blob at 768 KiB).
_CHUNK = 64


class SyscallBlockIO:
    """The host disk through the kernel's ``disk`` syscalls, as the store's :class:`BlockIO`."""

    block_size = BLOCK_SIZE

    def __init__(self, syscalls: Any) -> None:
        self._sys = syscalls
        self._blocks = syscalls.disk_size() // BLOCK_SIZE

    @property
    def num_blocks(self) -> int:
        """Device size in blocks (read once at start)."""
        return self._blocks

    def read(self, lba: int, count: int = 1) -> bytes:
        """Read blocks, at most :data:`_CHUNK` per syscall."""
        out = []
        for first in range(lba, lba + count, _CHUNK):
            n = min(_CHUNK, lba + count - first)
            out.append(self._sys.disk_read(first * BLOCK_SIZE, n * BLOCK_SIZE))
        return b"".join(out)

    def write(self, lba: int, data: bytes) -> None:
        """Write whole blocks, at most :data:`_CHUNK` per syscall."""
        step = _CHUNK * BLOCK_SIZE
        for off in range(0, len(data), step):
            self._sys.disk_write(lba * BLOCK_SIZE + off, data[off:off + step])

    def flush(self) -> None:
        """fsync on the host."""
        self._sys.disk_flush()


def kernel_anchor(ctx: ModuleContext, lease: bytes = b"") -> AnchorClient | None:
    """The anchor reached through the kernel's ``anchor`` service, or None if the host has none.

    The relay is untrusted: requests carry SNP reports (the ``attest`` syscall), replies are checked
    against the pinned key (the operator's, from the service's ``config``; else trust on first use,
    then sealed into the store).
    """
    sys = ctx.syscalls
    if f"svc:{ANCHOR_SERVICE}" not in ctx.capabilities:
        return None
    try:
        config = json.loads(sys.service(ANCHOR_SERVICE, "config"))
        key = bytes.fromhex(config.get("anchor_key") or "") or None
    except UnsupportedCall:
        return None  # no anchor configured on this host
    except (RequestError, ValueError, AttributeError) as exc:
        raise AnchorError(f"anchor link configuration unusable: {exc}") from None

    def exchange(msg: dict[str, Any]) -> dict[str, Any]:
        try:
            return decode(sys.service(ANCHOR_SERVICE, "exchange", canonical(msg)))
        except RequestError as exc:  # unreachable, refused by the relay, or a malformed frame
            raise AnchorError(f"anchor link: {exc}") from None

    module = (ctx.manifest.name, ctx.measurement) if ctx.measurement else None  # ABI 1.2: who the kernel says we are
    return AnchorClient(exchange, lambda rd: (sys.attestation_report(rd), b""), rng=sys.random, anchor_key=key,
                        lease=lease, module=module)


class PersistModule(Module):
    """Module object: one store per module process.

    :param anchor: a freshness anchor (None: rollback protection is off, said at start).
    :param quotas: per-namespace limits; others get ``default_quota``.
    """

    MANIFEST = Manifest(
        name="persist",
        version="0.1.0",
        capabilities=[Cap.LOG, Cap.RANDOM, Cap.TIME, Cap.ATTEST, Cap.DERIVE_KEY, Cap.DISK, Cap.SERVE_STORAGE,
                      Cap.STORAGE],
        services=[ANCHOR_SERVICE],
        request_timeout=30.0,
        description="sealed, crash-safe, tamper-evident storage for the other modules",
    )

    def __init__(self, anchor: FreshnessAnchor | None = None, quotas: dict[str, Quota] | None = None,
                 default_quota: Quota = DEFAULT_QUOTA) -> None:
        self.anchor, self.quotas, self.default_quota = anchor, quotas or {}, default_quota
        self.store: Store | None = None

    @hookimpl
    def svsm_module_start(self, ctx: ModuleContext) -> None:
        """Open (or format) the store; fail the module if it cannot be trusted."""
        sys = ctx.syscalls
        key = sys.derived_key(SEALING_KEY_CONTEXT, 32)
        own = "storage" in ctx.capabilities  # the kernel's volatile store for the provider itself
        try:
            anchor = self.anchor
            if anchor is None:
                anchor = kernel_anchor(ctx, (own and sys.storage_get(LEASE_KEY)) or b"")
            self.store = Store.open(SyscallBlockIO(sys), key, clock=sys.time_ns, rng=sys.random,
                                    anchor=anchor, quotas=self.quotas, default_quota=self.default_quota)
            if own and isinstance(anchor, AnchorClient) and anchor.lease:
                sys.storage_put(LEASE_KEY, anchor.lease)
        except StoreUnavailable as exc:
            ctx.log.error("persist: refusing to serve: %s (%s)", exc, getattr(exc, "detail", ""))
            raise
        st = self.store.statistics()
        ctx.log.info("persist: serving generation %d, %d records in %d namespaces", st.generation,
                     st.records, st.namespaces)

    def statistics(self) -> StoreStatistics | None:
        """The store's figures (None before it opened)."""
        return self.store.statistics() if self.store is not None else None

    @hookimpl
    def svsm_module_stop(self, ctx: ModuleContext) -> None:
        """Release the anchor lease."""
        if self.store is not None and self.store.failed is None:
            self.store.close()

    @hookimpl
    def svsm_storage_request(self, op: str, namespace: str, key: str, value: bytes,
                             ctx: ModuleContext) -> bytes | list[str] | bool | None:
        """Serve one storage syscall of module ``namespace``.

        :raises InvalidRequest: the store stopped serving (the reason is in the kernel log).
        """
        store = self.store
        if store is None:
            raise InvalidRequest("persistent store not open")
        try:
            try:
                store.heartbeat_if_due(HEARTBEAT_NS)
            except AnchorError as exc:  # counted in the anchor client's statistics; retried next call
                ctx.log.warning("persist: anchor heartbeat failed, lease may lapse: %s", exc)
            if op == "get":
                return store.get(namespace, key)
            if op == "put":
                store.put(namespace, key, value)
                return None
            if op == "delete":
                existed = store.contains(namespace, key)
                if existed:
                    store.delete(namespace, key)
                return existed
            if op == "list":
                return store.list(namespace, key)
        except StoreUnavailable as exc:
            ctx.log.error("persist: store stopped serving: %s", exc)
            raise InvalidRequest("persistent store unavailable") from exc
        raise InvalidParameter(f"unknown storage op {op!r}")

"""The kernel's ``vm`` service for live migration: what the migration engine may do to the VM.

The migration engine (``svsm.modules.migrate``) never touches the machine; it calls these
operations (the ``VmPort`` it is written against).  They run with the SVSM's privileges:

* pages are read in plaintext through the SVSM's own VMPL0 view (and shared pages through
  C=0), together with their RMP state -- the hypervisor sees only ciphertext;
* the hypervisor's dirty log is passed through as it is: untrusted, a hint for pre-copy only;
  :meth:`MigratableVm.digests` is what the final check trusts;
* on the destination, pages and their RMP state are imported the way the AMD-SP imports a
  guest for a migration agent (firmware access: no guest PVALIDATE needed), the guest's keys go
  into the destination PSP's guest context, and module states through their restore hooks.

Every input from the peer is checked here (frame range, state bits, sizes) even though it
arrived over the attested channel: the kernel does not trust a module's arguments.

(About 650 lines: every operation the ``vm`` service performs on one VM lives in this class.)
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import pathlib
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from svsm.kernel._svsm import SEV_FEATURES
from svsm.kernel.hw import VMSA, HardwareFault, RmpEntry
from svsm.kernel.protocols._core import EFER_SVME
from svsm.sdk import FatalError, InvalidParameter, InvalidRequest

from ._digest import WriteTrackedDigests, default_threads, keyed_digest
from ._gate import GateState, GuestFenced, RunGate
from ._state import (
    PAGE_ASSIGNED,
    PAGE_PERMS_SHIFT,
    PAGE_STATE_MASK,
    PAGE_VALIDATED,
    PAGE_VMSA,
    STATE_VERSION,
    GuestKeys,
    MachineState,
    ModuleState,
    VcpuState,
    decode_state,
    encode_state,
)

__all__ = ["MigratableVm", "VmStatistics", "Page", "CHUNK_PAGES", "MIGRATION_REPORT_LABEL"]

log = logging.getLogger("svsm.kernel.migration")

PAGE = 4096
_ZERO = bytes(PAGE)
_VMPL_PERMS_ALL = 0x1F
#: Pages per digest chunk of the final check (1 MiB).
CHUNK_PAGES = 256
_HDR = struct.Struct("<IB")

#: Domain label of migration reports (``svsm.modules.migrate.migration_report_data`` must agree; tested).
MIGRATION_REPORT_LABEL = b"pysvsm migration report v1\0"

#: ``(gfn, state word, plaintext or None for an all-zero page)``.
Page = tuple[int, int, bytes | None]


class VmStatistics(NamedTuple):
    """Counters of one :class:`MigratableVm`."""

    pages_read: int
    pages_written: int
    zero_pages: int
    digests: int
    dirty_reported: int
    dirty_ignored: int


class MigratableVm:
    """One booted CVM (``svsm.kernel.Cvm``) as the migration engine sees it.

    :param cvm: the running (source) or freshly booted, not yet started (destination) CVM.
    :param gate: the run gate of its guest vCPUs (a destination's starts paused).
    :param module_host: where module states are saved/restored (default: the SVSM's).
    :param skip_modules: module names whose state does not move (the migration engine's own).
    :param threads: hashing threads for :meth:`digests` (default: twice the usable CPUs, at most 8).
    :param clock: monotonic seconds (injected).
    :param fence_record: a file that :meth:`fence` writes (atomically, fsynced) and whose
        existence makes this constructor refuse: a restarted source never runs a migrated guest.
    :raises GuestFenced: ``fence_record`` exists (the guest was migrated away earlier).
    """

    def __init__(
        self,
        cvm: Any,
        *,
        gate: RunGate | None = None,
        module_host: Any = None,
        skip_modules: Iterable[str] = ("migrate",),
        threads: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        fence_record: pathlib.Path | None = None,
    ) -> None:
        if fence_record is not None and fence_record.exists():
            raise GuestFenced(f"{fence_record} says this guest was migrated away")
        self._fence_record = fence_record
        self.cvm = cvm
        self.platform = cvm.platform
        self.gate = gate if gate is not None else RunGate(clock=clock)
        #: A destination: built with its guest paused (a source's gate runs).  Only a destination
        #: whose guest is still paused takes pages or machine state.
        self._incoming = self.gate.state is GateState.PAUSED
        self.module_host = module_host if module_host is not None else cvm.svsm.module_host
        self._skip = frozenset(skip_modules)
        self._threads = default_threads() if threads is None else max(1, threads)
        self._clock = clock
        lay = cvm.layout
        self._frames = range(0, lay.svsm_base // PAGE)
        self._mem = self.platform.memory
        self.fenced = False
        self._attr_cache: dict[int, tuple[bool, int]] = {}
        self._import_kw: dict[int, dict[str, Any]] = {}
        #: Chunk digests of a destination (memory changes only through write_pages until resume).
        self._dcache: dict[int, bytes] | None = None
        self._last_state: MachineState | None = None
        self._gmac: AESGCM | None = None
        #: A source's digests kept valid by the trusted write record (between start/stop_dirty_log).
        self._tracked: WriteTrackedDigests | None = None
        #: Digest chunks as an ascending import passes them (:meth:`_digest_passed`).
        self.eager_digests = True
        self._eager_next = 0
        self.pages_read = self.pages_written = self.zero_pages = self.n_digests = 0
        self.dirty_reported = self.dirty_ignored = 0

    # -- identity ----------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Shape of the VM: a destination must match it exactly."""
        return {
            "memory_size": self.platform.memory_size,
            "guest_frames": len(self._frames),
            "vcpus": len(self.platform.vcpus),
            "guest_vmpl": self.cvm.svsm.guest_vmpl,
            "modules": sorted(self._module_names()),
            "measurement": self.cvm.measurement.hex(),
            "trusted_writes": hasattr(self._mem, "take_written"),
        }

    def attest(self, report_data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """A VMPL0 report of this SVSM binding ``report_data``, with the ARK/ASK/VCEK PEMs.

        The report's REPORT_DATA is SHA-512(:data:`MIGRATION_REPORT_LABEL` || ``report_data``):
        whoever drives migration (the ``migrate`` module, through the ``vm`` service) never gets
        a VMPL0 report over bytes of its choosing, so it cannot forge the services attestation
        (SHA-512(nonce || manifest)) or any other VMPL0 binding.

        :raises InvalidParameter: ``report_data`` is not 64 bytes.
        """
        if len(report_data) != 64:
            raise InvalidParameter("REPORT_DATA must be 64 bytes")
        report_data = hashlib.sha512(MIGRATION_REPORT_LABEL + bytes(report_data)).digest()
        # The SVSM's own MSG_REPORT_REQ at VMPL0 (VMPCK0); built by the PSP directly so that no
        # guest vCPU's GHCB is borrowed while the guest keeps running on it.
        report = self.cvm.psp.build_report(self.cvm.psp_context, report_data, 0)
        ark, ask, vcek = self.cvm.psp.chip.chain_pem()
        return report, ark, ask, vcek

    def frames(self) -> range:
        """Every guest frame (GFN) that migrates: guest RAM below the SVSM."""
        return self._frames

    # -- dirty logging (the hypervisor's, untrusted) -----------------------------------------------
    def start_dirty_log(self) -> None:
        """Ask the hypervisor to log guest writes from now on (and start the trusted write record)."""
        self.platform.hypervisor.enable_dirty_logging(True)
        if self._tracked is None and hasattr(self._mem, "take_written") and not self._incoming:
            self._tracked = WriteTrackedDigests(self._mem, self.chunk_frames, self._mapping)

    def dirty_frames(self) -> set[int]:
        """The hypervisor's dirty GFNs since the last call, limited to guest frames (a hint)."""
        got = self.platform.hypervisor.get_dirty_log(clear=True)
        self.dirty_reported += len(got)
        lo, hi = self._frames.start, self._frames.stop
        out = {g for g in got if isinstance(g, int) and lo <= g < hi}
        self.dirty_ignored += len(got) - len(out)
        return out

    def stop_dirty_log(self) -> None:
        """Stop logging (best effort: the hypervisor may ignore it)."""
        if self._tracked is not None:
            self._tracked.close()
            self._tracked = None
        try:
            self.platform.hypervisor.enable_dirty_logging(False)
        except (ValueError, AttributeError):
            log.warning("hypervisor refused to stop dirty logging")

    # -- pages ---------------------------------------------------------------------------------------
    def _decode(self, attr: int) -> tuple[bool, int]:
        """(the guest's own page?, state word) of an RMP attribute word (memoised: few distinct words)."""
        got = self._attr_cache.get(attr)
        if got is None:
            e = RmpEntry.unpack(attr, 0)
            if not e.assigned:
                got = (False, 0)
            elif e.asid != self.platform.asid or e.immutable:
                got = (False, -1)
            else:
                state = PAGE_ASSIGNED | (PAGE_VALIDATED if e.validated else 0) | (PAGE_VMSA if e.vmsa else 0)
                for v in (1, 2, 3):
                    state |= (e.perms[v] & 0xFF) << (PAGE_PERMS_SHIFT + 8 * (v - 1))
                got = (True, state)
            self._attr_cache[attr] = got
        return got

    def _page(self, gfn: int) -> Page:
        plat = self.platform
        sfn = plat.npt.get(gfn, gfn) if plat.npt else gfn
        if sfn is None:
            raise InvalidRequest(f"guest frame {gfn:#x} is unmapped by the hypervisor")
        attr, rgfn = plat.rmp.lookup(sfn)
        private, state = self._decode(attr)
        # The RMP checks of a VMPL0 C=1 access are the ones above (VMPL0 always has every
        # permission on a guest page), so read through the memory controller directly.
        if private:
            if rgfn != gfn:
                raise InvalidRequest(f"guest frame {gfn:#x} is not the guest's page")
            data = self._mem.read_plain(sfn, 0, PAGE) if state & PAGE_VALIDATED else None
        elif state < 0:
            raise InvalidRequest(f"guest frame {gfn:#x} is not the guest's page")
        else:
            data = self._mem.read_raw(sfn, 0, PAGE)
        if data is not None and data == _ZERO:
            data = None
        return gfn, state, data

    def read_pages(self, gfns: Sequence[int]) -> list[Page]:
        """Plaintext and RMP state of ``gfns`` (through the SVSM's mappings).

        :raises InvalidParameter: a frame outside guest memory.
        :raises InvalidRequest: the hypervisor took a frame away from the guest.
        """
        out = []
        frames = self._frames
        try:
            for g in gfns:
                if g not in frames:
                    raise InvalidParameter(f"frame {g:#x} is not guest memory")
                p = self._page(g)
                if p[2] is None:
                    self.zero_pages += 1
                out.append(p)
        except HardwareFault as exc:
            raise InvalidRequest(f"guest memory became unreadable: {exc}") from exc
        self.pages_read += len(out)
        return out

    def write_pages(self, pages: Iterable[Page]) -> None:
        """Import pages and their RMP state (destination, guest not running).

        :raises InvalidParameter: a frame outside guest memory, unknown state bits, bad size, or a
            VMSA page that is not a runnable guest-VMPL VMSA (CREATE_VCPU's checks).
        :raises InvalidRequest: not a destination whose guest is paused.
        """
        self._check_incoming()
        plat = self.platform
        fa, mem, frames = plat.firmware, plat.memory, self._frames
        pages = list(pages)
        for gfn, state, data in pages:  # every record is checked before any is applied
            if (not isinstance(gfn, int) or gfn not in frames or state & ~PAGE_STATE_MASK
                    or (state and not state & PAGE_ASSIGNED) or (data is not None and len(data) != PAGE)):  # fmt: skip
                raise InvalidParameter("malformed page record")
            if state & PAGE_VMSA:
                self._check_vmsa(data)
        n = 0
        if self._dcache is None:
            self._dcache = {}  # from now on guest memory changes only here (the guest is not running)
        cache = self._dcache
        for gfn, state, data in pages:
            cache.pop((gfn - frames.start) // CHUNK_PAGES, None)
            gpa = gfn * PAGE
            sfn = plat.npt.get(gfn, gfn) if plat.npt else gfn
            if sfn is None:
                raise InvalidRequest(f"guest frame {gfn:#x} is unmapped by the hypervisor")
            if state & PAGE_ASSIGNED:
                kw = self._import_kw.get(state)
                if kw is None:
                    perms = (_VMPL_PERMS_ALL, *((state >> (PAGE_PERMS_SHIFT + 8 * i)) & 0xFF for i in range(3)))
                    kw = self._import_kw[state] = {"assigned": True, "validated": bool(state & PAGE_VALIDATED),
                                                   "vmsa": bool(state & PAGE_VMSA), "perms": perms}  # fmt: skip
                fa.set_rmp(sfn * PAGE, gpa=gpa, **kw)
                mem.zero_plain(sfn)  # plaintext form without decrypting the old DRAM first
                if data is not None:
                    mem.write_plain(sfn, 0, data)
            else:
                fa.set_rmp(sfn * PAGE, assigned=False)
                if data is None:
                    mem.discard(sfn)
                else:
                    mem.write_raw(sfn, 0, data)
            n += 1
        self.pages_written += n
        if pages and self.eager_digests:
            self._digest_passed(pages[-1][0])

    def _digest_passed(self, gfn: int) -> None:
        """Digest the chunks an ascending import has moved past (destination, round 0).

        A freshly booted destination receives round 0 in frame order, so every chunk below the
        one ``gfn`` falls in is complete until a later round rewrites it (which drops its cached
        digest again).  Hashing them now spreads the destination's side of the final check over
        the transfer instead of doing it all when round 0 ends -- which is exactly when an idle
        guest's source stops and runs its own full pass, competing for the same CPUs on one host.
        """
        upto = (gfn - self._frames.start) // CHUNK_PAGES
        if upto > self._eager_next:
            todo = [c for c in range(self._eager_next, upto) if self._dcache is not None and c not in self._dcache]
            self._eager_next = upto
            if todo:
                self.digests(todo)

    def _check_incoming(self) -> None:
        """:raises InvalidRequest: this is not a destination whose guest is still paused."""
        if not self._incoming or self.gate.state is not GateState.PAUSED:
            raise InvalidRequest("only a paused migration destination imports guest state")

    def _check_vmsa(self, data: bytes | None) -> None:
        """A VMSA coming from the peer must be what CREATE_VCPU would accept: the guest's VMPL,
        EFER.SVME, the machine's SEV_FEATURES (never VMPL0: the host may VMRUN any VMSA page).

        :raises InvalidParameter: it is not.
        """
        if data is None or len(data) != PAGE:
            raise InvalidParameter("VMSA page without contents")
        v = VMSA.from_buffer_copy(data)
        if v.vmpl != self.cvm.svsm.guest_vmpl or not v.efer & EFER_SVME or v.sev_features != SEV_FEATURES:
            raise InvalidParameter("VMSA page is not a guest VMSA")

    # -- the final check -----------------------------------------------------------------------------
    def _chunk_digest(self, chunk: int) -> bytes:
        """SHA-256 of one chunk: per frame its state word and, unless all-zero, its plaintext.

        The same bytes as hashing :meth:`_page` of every frame, with the per-frame work inlined
        (this is the stop-time pass: it runs with the guest paused, for every frame).
        """
        h = hashlib.sha256(chunk.to_bytes(8, "little"))
        start = self._frames.start + chunk * CHUNK_PAGES
        stop = min(start + CHUNK_PAGES, self._frames.stop)
        parts: list[bytes] = []
        add = parts.append
        plat = self.platform
        npt, lookup, mem = plat.npt, plat.rmp.lookup, self._mem
        read_plain, read_raw = mem.read_plain, mem.read_raw
        decoded, decode, pack = self._attr_cache, self._decode, _HDR.pack
        zero_hdr: dict[int, bytes] = {}
        try:
            for g in range(start, stop):
                sfn = npt.get(g, g) if npt else g
                if sfn is None:
                    raise InvalidRequest(f"guest frame {g:#x} is unmapped by the hypervisor")
                attr, rgfn = lookup(sfn)
                got = decoded.get(attr)
                private, state = got if got is not None else decode(attr)
                if private:
                    if rgfn != g:
                        raise InvalidRequest(f"guest frame {g:#x} is not the guest's page")
                    data = read_plain(sfn, 0, PAGE) if state & PAGE_VALIDATED else None
                elif state < 0:
                    raise InvalidRequest(f"guest frame {g:#x} is not the guest's page")
                else:
                    data = read_raw(sfn, 0, PAGE)
                if data is None or data == _ZERO:
                    hdr = zero_hdr.get(state)
                    if hdr is None:
                        hdr = zero_hdr[state] = pack(state, 0)
                    add(hdr)
                else:
                    add(pack(state, 1))
                    add(data)
        except HardwareFault as exc:
            raise InvalidRequest(f"guest memory became unreadable: {exc}") from exc
        joined = b"".join(parts)
        gmac = self._gmac
        if gmac is None:
            h.update(joined)  # one large update: hashlib releases the GIL
            return h.digest()
        return keyed_digest(gmac, chunk, joined)

    def _chunk_digest_reference(self, chunk: int) -> bytes:
        """:meth:`_chunk_digest` written plainly over :meth:`_page` (tests compare the two)."""
        h = hashlib.sha256(chunk.to_bytes(8, "little"))
        start = self._frames.start + chunk * CHUNK_PAGES
        for g in range(start, min(start + CHUNK_PAGES, self._frames.stop)):
            _, state, data = self._page(g)
            h.update(_HDR.pack(state, 0) if data is None else _HDR.pack(state, 1) + data)
        return h.digest()

    def set_digest_key(self, key: bytes) -> None:
        """Key the chunk digests with the migration channel's 32-byte ``digest_key`` (both ends).

        Keyed, a chunk's digest is SHA-256(label || chunk || GMAC_key(state words + plaintext)):
        GHASH under a key only the two SVSMs hold is a universal hash (two different 1 MiB chunks
        collide with probability <= 2^16 / 2^128), and it runs ~10x faster than SHA-256 here,
        which is what the stop-time pass -- guest downtime -- is made of.  Cached digests go.

        :raises InvalidParameter: not 32 bytes.
        """
        if len(key) != 32:
            raise InvalidParameter("digest key must be 32 bytes")
        self._gmac = AESGCM(bytes(key))
        if self._dcache is not None:
            self._dcache = {}
        if self._tracked is not None:
            self._tracked.forget()

    def chunk_count(self) -> int:
        """Number of digest chunks over guest memory."""
        return -(-len(self._frames) // CHUNK_PAGES)

    def chunk_frames(self, chunk: int) -> range:
        """The guest frames of digest chunk ``chunk``.  :raises InvalidParameter: no such chunk."""
        if not 0 <= chunk < self.chunk_count():
            raise InvalidParameter("no such chunk")
        start = self._frames.start + chunk * CHUNK_PAGES
        return range(start, min(start + CHUNK_PAGES, self._frames.stop))

    def digests(self, chunks: Sequence[int] | None = None) -> list[bytes]:
        """SHA-256 per chunk of guest memory (state words + plaintext), computed in-kernel.

        Once pages are imported (a destination), digests are cached per chunk and invalidated by
        :meth:`write_pages`, so the final check at stop-and-copy rehashes only what changed.

        :param chunks: which chunks (default: all, in order).
        """
        todo = list(range(self.chunk_count())) if chunks is None else list(chunks)
        for c in todo:
            self.chunk_frames(c)
        cache: dict[int, bytes] = self._dcache if self._dcache is not None else {}
        tracked, snaps = self._tracked, {}
        if tracked is not None and self._dcache is None:  # a source: reuse what the write record vouches for
            tracked.take()
            cache, snaps = tracked.split(sorted(set(todo)))
        missing = sorted({c for c in todo if c not in cache})
        self.n_digests += len(missing)
        if self._threads == 1 or len(missing) < 8:
            fresh = [self._chunk_digest(c) for c in missing]
        else:
            with concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="migrate-digest") as ex:
                fresh = list(ex.map(self._chunk_digest, missing))
        got = dict(zip(missing, fresh))
        if self._dcache is not None:
            self._dcache.update(got)
        elif tracked is not None:
            for c, d in got.items():
                tracked.store(c, d, snaps[c])
        return [cache[c] if c in cache else got[c] for c in todo]

    def _mapping(self, chunk: int) -> tuple[Any, list[tuple[int, int]]]:
        """(system frames, RMP (attributes, GPA frame) per frame) of a chunk, to compare later."""
        frames, npt, lookup = self.chunk_frames(chunk), self.platform.npt, self.platform.rmp.lookup
        if not npt:
            return frames, list(map(lookup, frames))
        sfns = [npt.get(g, g) for g in frames]
        return sfns, [lookup(s) if s is not None else (-1, -1) for s in sfns]

    # -- vCPUs ---------------------------------------------------------------------------------------
    def pause(self) -> float:
        """Stop the guest's vCPUs (stop-and-copy).  :returns: seconds waited for them."""
        return self.gate.pause()

    def resume(self) -> None:
        """Run the guest (source after a failed migration, destination at commit).

        :raises GuestFenced: this machine committed the guest away.
        """
        self.gate.resume()
        self._dcache = None  # the guest writes again: digests must be recomputed

    def fence(self) -> None:
        """Never run this guest again: record it, refuse the gate, drop its VMSAs, retire its keys."""
        if self._fence_record is not None:
            rec = {"measurement": self.cvm.measurement.hex(), "fenced": "migrated away"}
            tmp = self._fence_record.with_name(self._fence_record.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(rec, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._fence_record)
        self.gate.fence()
        self.fenced = True
        gv = self.cvm.svsm.guest_vmpl
        for v in self.platform.vcpus:
            if v.vmpl == gv:
                v.halt()
            v.set_vmsa(gv, None)
        ctx = self.cvm.psp_context
        for i in range(gv, 4):
            ctx.vmpcks[i] = bytes(32)
        log.info("guest fenced: it now runs on the migration destination")

    # -- machine state -------------------------------------------------------------------------------
    def _module_names(self) -> list[str]:
        host = self.module_host
        if host is None:
            return []
        return [m.name for m in host.modules() if m.name not in self._skip and m.state == "serving"]

    def export_state(self) -> bytes:
        """VMSAs, GHCB MSRs, guest keys and module states (guest paused).

        :raises InvalidRequest: the guest is running (pause first).
        """
        if self.gate.state is GateState.RUNNING:
            raise InvalidRequest("pause the guest before exporting its state")
        svsm, gv = self.cvm.svsm, self.cvm.svsm.guest_vmpl
        vcpus = []
        ghcbs = getattr(self.platform.hypervisor, "ghcb_gfn", {})
        for v in self.platform.vcpus:
            cur = svsm.percpu[v.index].current() if v.index < len(svsm.percpu) else None
            if cur is None:
                vcpus.append(VcpuState(v.index, v.apic_id, 0, 0, False, None, v.ghcb_msr[gv]))
                continue
            vmsa_gpa, caa = cur
            rec = svsm.registry.get(vmsa_gpa)
            owned = bool(rec and rec.guest_owned)
            data = None if owned else v.vmsa(gv).to_bytes()
            vcpus.append(VcpuState(v.index, v.apic_id, vmsa_gpa, caa, owned, data, v.ghcb_msr[gv],
                                   int(ghcbs.get((v.apic_id, gv), 0))))  # fmt: skip
        ctx = self.cvm.psp_context
        keys = GuestKeys(gv, [bytes(k) for k in ctx.vmpcks[gv:]], list(ctx.seqnos[gv:]), bytes(ctx.vmrk))
        modules = []
        for name in self._module_names():
            blob = self.module_host.save_state(name)
            if blob is not None:
                modules.append(ModuleState(name, bytes(blob)))
        st = MachineState(STATE_VERSION, self.platform.memory_size, gv, vcpus, keys, modules)
        self._last_state = st
        return encode_state(st)

    def import_state(self, blob: bytes) -> None:
        """Install a source's machine state (destination, guest not running).

        :raises InvalidParameter: malformed, a different machine shape or module set, or a VMSA
            that is not a runnable guest-VMPL VMSA.
        :raises InvalidRequest: not a destination whose guest is paused.
        """
        self._check_incoming()
        try:
            st = decode_state(blob)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise InvalidParameter("malformed machine state") from exc
        svsm, gv = self.cvm.svsm, self.cvm.svsm.guest_vmpl
        if (st.version != STATE_VERSION or st.memory_size != self.platform.memory_size or st.guest_vmpl != gv
                or len(st.vcpus) != len(self.platform.vcpus) or st.keys.first != gv
                or len(st.keys.vmpcks) != 4 - gv or len(st.keys.seqnos) != 4 - gv):  # fmt: skip
            raise InvalidParameter("machine state does not fit this VM")
        missing = {m.name for m in st.modules} - set(self._module_names())
        if missing:
            raise InvalidParameter(f"modules missing on the destination: {sorted(missing)}")
        for vs in st.vcpus:  # every VMSA is checked before anything is installed
            if vs.vmsa_gpa and vs.guest_owned:
                if vs.vmsa_gpa % PAGE or vs.vmsa_gpa // PAGE not in self._frames:
                    raise InvalidParameter("guest VMSA outside guest memory")
                self._check_vmsa(self._page(vs.vmsa_gpa // PAGE)[2])
            elif vs.vmsa_gpa:
                self._check_vmsa(vs.vmsa)
        for vs in st.vcpus:
            self._import_vcpu(vs, svsm, gv)
        ctx = self.cvm.psp_context
        for i, (k, s) in enumerate(zip(st.keys.vmpcks, st.keys.seqnos), start=gv):
            ctx.vmpcks[i], ctx.seqnos[i] = bytes(k), int(s)
        ctx.vmrk = bytes(st.keys.vmrk)
        for m in st.modules:
            self.module_host.restore_state(m.name, m.state)
        self._last_state = st

    def _import_vcpu(self, vs: VcpuState, svsm: Any, gv: int) -> None:
        v = self.platform.vcpus[vs.index]
        if v.apic_id != vs.apic_id:
            raise InvalidParameter("vCPU topology differs")
        v.ghcb_msr[gv] = vs.ghcb_msr
        if vs.host_ghcb_gfn:
            if vs.host_ghcb_gfn not in self._frames:
                raise InvalidParameter("GHCB outside guest memory")
            self.platform.hypervisor.ghcb_gfn[(v.apic_id, gv)] = vs.host_ghcb_gfn
        pc = svsm.percpu[vs.index]
        cur = pc.current()
        if not vs.vmsa_gpa:
            if cur is not None:
                raise InvalidParameter("the destination runs a guest vCPU the source does not")
            return
        if vs.guest_owned:
            if vs.vmsa_gpa // PAGE not in self._frames or vs.vmsa is not None:
                raise InvalidParameter("guest VMSA outside guest memory")
            svsm.registry.register(vs.vmsa_gpa, vs.caa_gpa, vs.index, guest_owned=True)
            svsm.registry.set_in_use(vs.vmsa_gpa)
            v.set_vmsa(gv, vs.vmsa_gpa // PAGE)
            pc.attach(vs.vmsa_gpa, vs.caa_gpa)
            return
        if cur is None or vs.vmsa is None:
            raise InvalidParameter("SVSM-owned guest VMSA without a destination VMSA")
        own_vmsa, own_caa = cur
        self.platform.firmware.write_private(own_vmsa, vs.vmsa)
        if vs.caa_gpa != own_caa:
            if vs.caa_gpa // PAGE not in self._frames:
                raise InvalidParameter("calling area outside guest memory")
            svsm.registry.remap_caa(own_vmsa, vs.caa_gpa)
            pc.attach(own_vmsa, vs.caa_gpa)

    # -- proof ---------------------------------------------------------------------------------------
    def fingerprint(self, digests: Sequence[bytes] | None = None, *, memory: str | None = None) -> dict[str, str]:
        """Hashes of everything that must be identical on both ends (guest paused or not started).

        Memory (all chunk digests), the guest VMSAs, the guest keys, and each module's state as
        this end handed it over (source: what the module saved; destination: what the module was
        given -- a module's restore fidelity is its own contract, checked by its tests).

        :param digests: this VM's :meth:`digests` if already computed.
        :param memory: or their hash (SHA-256 of the concatenated digests, hex), as the
            ``vm`` service's ``fingerprint`` op passes it.
        """
        st = self._last_state
        if st is None:
            self.export_state()
            st = self._last_state
        assert st is not None
        vmsas = hashlib.sha256()
        for vs in st.vcpus:
            v = self.platform.vcpus[vs.index]
            if vs.vmsa_gpa:
                vmsas.update(v.vmsa(st.guest_vmpl).to_bytes())
        ctx, gv = self.cvm.psp_context, st.guest_vmpl  # the keys as this PSP holds them now
        live = GuestKeys(gv, [bytes(k) for k in ctx.vmpcks[gv:]], list(ctx.seqnos[gv:]), bytes(ctx.vmrk))
        keys = hashlib.sha256(msgspec.msgpack.encode(live)).hexdigest()
        out = {
            "memory": memory if memory is not None
            else hashlib.sha256(b"".join(self.digests() if digests is None else digests)).hexdigest(),
            "vmsas": vmsas.hexdigest(),
            "keys": keys,
        }
        for m in st.modules:
            out[f"module:{m.name}"] = hashlib.sha256(m.state).hexdigest()
        return out

    def statistics(self) -> VmStatistics:
        """A snapshot of the counters."""
        return VmStatistics(self.pages_read, self.pages_written, self.zero_pages, self.n_digests,
                            self.dirty_reported, self.dirty_ignored)  # fmt: skip

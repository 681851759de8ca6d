"""A guest workload whose whole state lives in the guest: proof that a migrated guest goes on.

It is guest-OS code (it uses only the guest driver, ``svsm.sdk.guest``, and the vTPM driver):
each step writes a few pages of its region with a pattern derived from the step number, and
every few steps extends PCR 16 through the vTPM with ``SHA-256(step)``.  Its control block --
step counter, region, vTPM buffer, the PCR value it expects -- is a guest page whose address
sits in the secrets page's ``guest_usage`` field (the OS-area bytes the guest owns).  So on a
destination, :meth:`GuestWorkload.attach` finds everything in guest memory alone,
:meth:`GuestWorkload.verify` checks every page and the PCR against the counter, and the loop
continues from the next step: the guest did not notice the migration.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from svsm.sdk import FatalError

__all__ = ["GuestWorkload", "WorkloadCheck", "CONTROL", "GUEST_USAGE_OFFSET"]

log = logging.getLogger("svsm.kernel.migration.workload")

PAGE = 4096
#: Offset of ``guest_usage[32]`` in the SNP secrets page (snp.md 2.5, OS area).
GUEST_USAGE_OFFSET = 0xE0
_MAGIC = 0x4D49_4752_4154_4521  # "MIGRATE!"
#: The control block: magic, version, region pages, pages written per step, PCR period,
#: step, region GPA, vTPM buffer GPA, expected PCR 16 (SHA-256 bank).
CONTROL = struct.Struct("<QIIIIQQQ32s")
assert CONTROL.size == 80
_PCR = 16
_TPM_ST_NO_SESSIONS, _TPM_ST_SESSIONS = 0x8001, 0x8002
_TPM_CC_STARTUP, _TPM_CC_PCR_EXTEND, _TPM_CC_PCR_READ = 0x144, 0x182, 0x17E
_TPM_RS_PW, _TPM_ALG_SHA256 = 0x4000_0009, 0x000B
_TPM_RC_INITIALIZE = 0x100
_HDR = struct.Struct(">HII")
#: TPM2_PCR_Read response: header, pcrUpdateCounter, one selection (hash, 3 select bytes), count, TPM2B.
_PCR_READ_DIGEST_OFFSET = _HDR.size + 4 + (4 + 2 + 1 + 3) + 4 + 2


class WorkloadCheck(NamedTuple):
    """Result of :meth:`GuestWorkload.verify`."""

    step: int
    pages_checked: int
    pcr_matches: bool


def _pattern(step: int, index: int) -> bytes:
    return (step.to_bytes(8, "little") + index.to_bytes(8, "little")) * (PAGE // 16)


def _cmd(tag: int, cc: int, body: bytes) -> bytes:
    return _HDR.pack(tag, _HDR.size + len(body), cc) + body


class GuestWorkload:
    """The demo/test workload on one guest vCPU.

    :param guest: the guest driver (``svsm.sdk.guest.Guest``).
    :param tpm: a vTPM device (``execute(command) -> response``), or None for memory only.
    :param control_gpa: the control block page (set by :meth:`create`/:meth:`attach`).
    """

    def __init__(self, guest: Any, tpm: Any, control_gpa: int) -> None:
        self.guest, self.tpm, self.control_gpa = guest, tpm, control_gpa
        self.steps_run = 0

    # -- control block ------------------------------------------------------------------------------
    def _read(self) -> tuple[int, ...]:
        return CONTROL.unpack(self.guest.mem.read(self.control_gpa, CONTROL.size))

    def _write(self, *fields: Any) -> None:
        self.guest.mem.write(self.control_gpa, CONTROL.pack(*fields))

    @property
    def step(self) -> int:
        """Steps completed so far (from guest memory)."""
        return self._read()[5]

    @classmethod
    def create(cls, guest: Any, tpm: Any, *, pages: int = 64, pages_per_step: int = 4, pcr_every: int = 8) -> GuestWorkload:
        """Set up a new workload in guest memory (accepted pages from the guest's pool).

        :raises FatalError: not enough accepted guest memory.
        """
        taken = guest.pool.take_contiguous(pages + 1)
        control, region = taken[0], taken[1]
        buf = tpm.gpa if tpm is not None else 0
        if tpm is not None:
            rc = _HDR.unpack_from(tpm.execute(_cmd(_TPM_ST_NO_SESSIONS, _TPM_CC_STARTUP, b"\x00\x00")))[2]
            if rc not in (0, _TPM_RC_INITIALIZE):
                raise FatalError(f"TPM2_Startup failed: {rc:#x}")
        self = cls(guest, tpm, control)
        pcr = self._pcr_read() if tpm is not None else bytes(32)
        self._write(_MAGIC, 1, pages, pages_per_step, pcr_every, 0, region, buf, pcr)
        guest.mem.write(guest.secrets_gpa + GUEST_USAGE_OFFSET, control.to_bytes(8, "little"))
        return self

    @classmethod
    def attach(cls, guest: Any, make_tpm: Callable[[int], Any] | None = None) -> GuestWorkload:
        """Find a running workload from guest memory (e.g. on a migration destination).

        :param make_tpm: builds the vTPM driver on the recorded buffer GPA.
        :raises FatalError: no workload in this guest's memory.
        """
        raw = guest.mem.read(guest.secrets_gpa + GUEST_USAGE_OFFSET, 8)
        control = int.from_bytes(raw, "little")
        if not control:
            raise FatalError("no workload control block in guest memory")
        f = CONTROL.unpack(guest.mem.read(control, CONTROL.size))
        if f[0] != _MAGIC or f[1] != 1:
            raise FatalError("workload control block is corrupt")
        tpm = make_tpm(f[7]) if make_tpm is not None and f[7] else None
        return cls(guest, tpm, control)

    # -- the work -----------------------------------------------------------------------------------
    def run_step(self) -> int:
        """One step: write ``pages_per_step`` region pages, maybe extend the PCR, bump the counter.

        :returns: the new step count.
        """
        magic, ver, pages, per, every, step, region, buf, pcr = self._read()
        step += 1
        mem = self.guest.mem
        for k in range(per):
            idx = ((step - 1) * per + k) % pages
            mem.write(region + idx * PAGE, _pattern(step, idx))
        if self.tpm is not None and step % every == 0:
            digest = hashlib.sha256(step.to_bytes(8, "little")).digest()
            body = struct.pack(">II", _PCR, 9) + struct.pack(">IHBH", _TPM_RS_PW, 0, 0, 0)
            body += struct.pack(">IH", 1, _TPM_ALG_SHA256) + digest
            rc = _HDR.unpack_from(self.tpm.execute(_cmd(_TPM_ST_SESSIONS, _TPM_CC_PCR_EXTEND, body)))[2]
            if rc:
                raise FatalError(f"TPM2_PCR_Extend failed: {rc:#x}")
            pcr = hashlib.sha256(pcr + digest).digest()
        self._write(magic, ver, pages, per, every, step, region, buf, pcr)
        self.steps_run += 1
        return step

    def run(self, stop: threading.Event, gate: Any = None, *, max_steps: int | None = None,
            steps_per_second: float | None = None, clock: Callable[[], float] = time.monotonic) -> int:  # fmt: skip
        """Run steps until ``stop`` is set (each inside ``gate.running()`` when a gate is given).

        :param steps_per_second: pace (None: as fast as possible).
        :returns: steps run by this call.
        :raises GuestFenced: the gate was fenced (the guest now runs elsewhere).
        """
        n, t0 = 0, clock()
        while not stop.is_set() and (max_steps is None or n < max_steps):
            if gate is None:
                self.run_step()
            else:
                with gate.running(timeout=None):
                    self.run_step()
            n += 1
            if steps_per_second:
                ahead = t0 + n / steps_per_second - clock()
                if ahead > 0:
                    stop.wait(ahead)
        return n

    def _pcr_read(self) -> bytes:
        body = struct.pack(">IHB3s", 1, _TPM_ALG_SHA256, 3, bytes([0, 0, 1 << (_PCR - 16)]))
        rsp = self.tpm.execute(_cmd(_TPM_ST_NO_SESSIONS, _TPM_CC_PCR_READ, body))
        rc = _HDR.unpack_from(rsp)[2]
        if rc:
            raise FatalError(f"TPM2_PCR_Read failed: {rc:#x}")
        return bytes(rsp[_PCR_READ_DIGEST_OFFSET : _PCR_READ_DIGEST_OFFSET + 32])

    def verify(self) -> WorkloadCheck:
        """Check every region page and PCR 16 against the step counter in guest memory.

        :raises FatalError: a page does not hold what the counter implies.
        """
        magic, ver, pages, per, every, step, region, buf, pcr = self._read()
        written: dict[int, int] = {}
        for s in range(max(1, step - pages), step + 1):
            for k in range(per):
                written[((s - 1) * per + k) % pages] = s
        mem = self.guest.mem
        for idx in range(pages):
            want = _pattern(written[idx], idx) if idx in written else bytes(PAGE)
            if mem.read(region + idx * PAGE, PAGE) != want:
                raise FatalError(f"workload page {idx} does not match step {step}")
        ok = self._pcr_read() == pcr if self.tpm is not None else True
        return WorkloadCheck(step, pages, ok)

"""The machine: memory, RMP, vCPUs, hypervisor, and the AMD-SP's privileged operations.

``Platform(memory_size=..., vcpu_count=..., asid=..., c_bit=51, seed=0)`` builds an SNP-capable
machine with one guest.  The PSP firmware (``svsm.kernel.hw.psp``) is injected and reaches memory
and the RMP only through :class:`FirmwareAccess` (``platform.firmware``).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, NamedTuple

from ._constants import PAGE_SHIFT, PAGE_SIZE, VMPL_COUNT
from ._memory import MemoryStatistics, PhysicalMemory
from ._rmp import RMP, RmpEntry, RmpStatistics
from ._vcpu import Vcpu
from ._views import GuestView, HostView
from ._vmsa import VmsaView

if TYPE_CHECKING:
    from ._hypervisor import Hypervisor

__all__ = ["Platform", "FirmwareAccess", "PlatformStatistics"]


class PlatformStatistics(NamedTuple):
    """Snapshot of the machine's counters."""

    memory: MemoryStatistics
    rmp: RmpStatistics
    vcpus: int


class FirmwareAccess:
    """Hazardous: the AMD-SP's privileged view of memory and the RMP (for the PSP's launch).

    Nothing here applies RMP checks: these are the operations only the firmware can do
    (LAUNCH_UPDATE writing a page in the guest's key, setting ASSIGNED+VALIDATED, the VMSA bit,
    IMMUTABLE).  Only ``svsm.kernel.hw.psp`` should hold this object.

    .. versionadded:: 0.1
    """

    __slots__ = ("_platform",)

    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    def _sfn(self, spa: int) -> int:
        if spa % PAGE_SIZE:
            raise ValueError(f"address {spa:#x} is not page-aligned")
        sfn = spa >> PAGE_SHIFT
        self._platform.memory.check_sfn(sfn)
        return sfn

    def read_raw(self, spa: int) -> bytes:
        """The page's DRAM bytes (what the host left there, e.g. plaintext before LAUNCH_UPDATE)."""
        return self._platform.memory.read_raw(self._sfn(spa), 0, PAGE_SIZE)

    def read_private(self, spa: int) -> bytes:
        """The page decrypted with the guest key (plaintext of a launched page)."""
        return self._platform.memory.read_plain(self._sfn(spa), 0, PAGE_SIZE)

    def write_private(self, spa: int, data: bytes) -> None:
        """Write ``data`` (<= 4096 bytes, from offset 0) into the page under the guest key."""
        if len(data) > PAGE_SIZE:
            raise ValueError("more than one page")
        self._platform.memory.write_plain(self._sfn(spa), 0, data)

    def encrypt_in_place(self, spa: int) -> bytes:
        """LAUNCH_UPDATE's conversion: take the page's DRAM bytes as plaintext, encrypt them.

        :returns: the plaintext (for measuring).
        """
        sfn = self._sfn(spa)
        mem = self._platform.memory
        data = mem.read_raw(sfn, 0, PAGE_SIZE)
        mem.write_plain(sfn, 0, data)
        return data

    def set_rmp(
        self,
        spa: int,
        *,
        assigned: bool,
        gpa: int = 0,
        asid: int | None = None,
        validated: bool = False,
        vmsa: bool = False,
        immutable: bool = False,
        perms: tuple[int, int, int, int] | None = None,
    ) -> None:
        """Set the 4 KiB RMP entry of ``spa`` wholesale.

        :param asid: default: the platform's guest ASID when ``assigned``.
        :param perms: VMPL0..3 masks; default VMPL0 all, VMPL1-3 none.
        """
        if asid is None:
            asid = self._platform.asid if assigned else 0
        self._platform.rmp.firmware_set(
            self._sfn(spa), assigned=assigned, gpa=gpa, asid=asid, validated=validated, vmsa=vmsa, immutable=immutable, perms=perms
        )

    def rmp_entry(self, spa: int) -> RmpEntry:
        """The decoded RMP entry covering ``spa``."""
        return self._platform.rmp.read(self._sfn(spa))

    def install_vmsa(self, vcpu_index: int, vmpl: int, spa: int) -> None:
        """Point vCPU ``vcpu_index``'s VMPL ``vmpl`` at the VMSA page ``spa`` (launch)."""
        self._platform.vcpus[vcpu_index].set_vmsa(vmpl, self._sfn(spa))

    def vmsa(self, spa: int) -> VmsaView:
        """Register accessors over the VMSA page at ``spa``."""
        return VmsaView(self._platform.memory, self._sfn(spa))


class Platform:
    """One SNP machine running one guest.

    :param memory_size: guest memory in bytes (multiple of 4 KiB); sparse, so 64 GiB is cheap.
    :param vcpu_count: number of vCPUs (APIC IDs 0..n-1).
    :param asid: the guest's ASID (non-zero).
    :param c_bit: C-bit position (CPUID 0x8000_001F EBX[5:0]), e.g. 51.
    :param seed: seeds the memory-encryption key when ``rng`` is not given.
    :param rng: randomness source (injectable, house rule 9).
    :param hypervisor: default: an honest :class:`~svsm.kernel.hw.Hypervisor`.
    :param psp: the PSP firmware object (``svsm.kernel.hw.psp``); may be attached later.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        memory_size: int,
        vcpu_count: int = 1,
        asid: int = 1,
        c_bit: int = 51,
        seed: int = 0,
        rng: random.Random | None = None,
        hypervisor: Hypervisor | None = None,
        psp: Any = None,
    ) -> None:
        if not 0 < asid <= 0xFFFF:
            raise ValueError("the guest ASID must be non-zero")
        if not 0 < c_bit < 64:
            raise ValueError("C-bit position must be 1..63")
        if vcpu_count < 1:
            raise ValueError("need at least one vCPU")
        self.rng = rng if rng is not None else random.Random(seed)
        key = self.rng.randbytes(64)
        while key[:32] == key[32:]:
            key = self.rng.randbytes(64)
        self.memory_size = memory_size
        self.asid = asid
        self.c_bit = c_bit
        self.vmpl_count = VMPL_COUNT
        self.memory = PhysicalMemory(memory_size, key)
        self.rmp = RMP(self.memory.npages)
        #: Nested page table overrides GFN -> SFN (None = unmapped); identity when absent.
        self.npt: dict[int, int | None] = {}
        #: GFNs written by the guest since the hypervisor last collected them; None = logging off.
        self.dirty_log: set[int] | None = None
        self.vcpus = [Vcpu(self, i, i) for i in range(vcpu_count)]
        self.host = HostView(self)
        self.firmware = FirmwareAccess(self)
        self.psp = psp
        if hypervisor is None:
            from ._hypervisor import Hypervisor

            hypervisor = Hypervisor()
        self.hypervisor = hypervisor
        hypervisor.attach(self)

    def guest_view(self, vmpl: int, vcpu_index: int = 0) -> GuestView:
        """The memory view of code on ``vcpu_index`` at ``vmpl``."""
        return self.vcpus[vcpu_index].view(vmpl)

    def vcpu_by_apic_id(self, apic_id: int) -> Vcpu | None:
        """The vCPU with that APIC ID, if any."""
        for v in self.vcpus:
            if v.apic_id == apic_id:
                return v
        return None

    def add_vcpu(self, apic_id: int) -> Vcpu:
        """Hot-add a vCPU (the hypervisor does this for AP creation of an unknown APIC ID)."""
        v = Vcpu(self, len(self.vcpus), apic_id)
        self.vcpus.append(v)
        return v

    def strip_c_bit(self, address: int) -> tuple[int, bool]:
        """Split a guest page-table address into (GPA, C-bit set?)."""
        c = 1 << self.c_bit
        return address & ~c, bool(address & c)

    def statistics(self) -> PlatformStatistics:
        """Snapshot of memory, RMP and vCPU counts."""
        return PlatformStatistics(self.memory.statistics(), self.rmp.statistics(), len(self.vcpus))

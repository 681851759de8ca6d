"""Boot: launch the CVM through the PSP, bring up the SVSM kernel, prepare and start the guest.

GPA layout (all inside guest memory; the host maps it identically):

* ``[0, svsm_base)`` guest RAM.  The guest firmware image ends at 1 MiB (legacy BIOS shadow);
  its SEV metadata names the guest's secrets page, CPUID page and calling area (low pages).
* ``[svsm_base, svsm_base + svsm_size)`` the SVSM region, 2 MiB aligned at the top: the kernel
  image (the source of the ``svsm.kernel`` package, so the launch digest changes when the
  kernel's code does), the SVSM secrets page, the BSP's VMPL0 VMSA, a boot GHCB page, the
  guest-request pages, then the heap (validated by the kernel itself: page state change +
  PVALIDATE, 2 MiB where aligned).  See :class:`~svsm.kernel._svsm.MemoryLayout`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import pathlib
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from svsm.kernel.hw import Platform
from svsm.kernel.hw.psp import Chip, FirmwareImage, PageType, SectionType, SnpFirmware, build_image, launch
from svsm.kernel.hw.psp import LaunchUpdate as _LaunchUpdate
from svsm.kernel.protocols import ModuleHost
from svsm.sdk.attestation import ARK_GUID, ASK_GUID, VCEK_GUID

from ._launch_params import launch_parameters_page
from ._svsm import FIRMWARE_END, FIRMWARE_SECTIONS, FIRMWARE_SIZE, PAGE, MemoryLayout, Svsm, _build_vmsa

__all__ = ["boot", "Cvm", "Svsm", "MemoryLayout", "BootTimings", "CvmStatistics", "kernel_image", "parse_size"]

log = logging.getLogger("svsm.kernel.boot")


def parse_size(text: str | int) -> int:
    """``"64M"`` / ``"1G"`` / ``"4096"`` -> bytes.  :raises ValueError: unparsable."""
    if isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    return int(t[:-1] if mult != 1 else t, 0) * mult


@functools.lru_cache(maxsize=1)
def kernel_image() -> bytes:
    """The SVSM image: every ``svsm.kernel`` source file, sorted by path, with its name and length.

    Measured at launch, so any change to the kernel's code changes the launch digest.
    """
    root = pathlib.Path(__file__).resolve().parent
    out = bytearray(b"PYSVSM-KERNEL-IMAGE\0")
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        out += len(rel).to_bytes(4, "little") + rel + len(data).to_bytes(8, "little") + data
    return bytes(out + bytes(-len(out) % PAGE))


class _PspPort:
    """Binds the PSP firmware to this guest's context for the hypervisor (GuestRequestFirmware)."""

    def __init__(self, fw: SnpFirmware, ctx: Any) -> None:
        self.fw, self.ctx = fw, ctx

    def guest_request(self, request: bytes) -> bytes:
        return self.fw.guest_request(self.ctx, request)

    def certificates(self) -> Sequence[tuple[uuid.UUID, bytes]]:
        ark, ask, vcek = self.fw.chip.chain_der()
        return [(VCEK_GUID, vcek), (ASK_GUID, ask), (ARK_GUID, ark)]


class BootTimings(NamedTuple):
    """Seconds spent in each boot phase."""

    launch: float
    kernel_init: float
    guest_prepare: float


@functools.lru_cache(maxsize=8)
def _chip(state_dir: str | None) -> Chip:
    return Chip.load_or_create(state_dir)


class CvmStatistics(NamedTuple):
    """Everything ``svsm run`` reports about a CVM."""

    calls_by_protocol: dict[int, int]
    calls_per_cpu: tuple[int, ...]
    allocator: Any
    slab: Any
    pvalidate_lock: Any
    registry: Any
    core: Any
    hypervisor: Any
    kernel_tasks: Any = None  #: :class:`~svsm.kernel._kernel_tasks.KernelTaskStatistics`


class Cvm:
    """A running confidential VM: platform, PSP, hypervisor, the SVSM, and the guest on vCPU 0.

    Use :func:`boot`; :meth:`shutdown` runs when its ``with`` block ends.
    """

    def __init__(self, platform: Platform, psp: SnpFirmware, ctx: Any, svsm: Svsm, firmware: FirmwareImage,
                 measurement: bytes, timings: BootTimings) -> None:  # fmt: skip
        self.platform = platform
        self.psp = psp
        self.psp_context = ctx
        self.hypervisor = platform.hypervisor
        self.svsm = svsm
        self.firmware = firmware
        self.measurement = measurement
        self.timings = timings
        self.layout = svsm.layout
        self._guest: Any = None
        self._closed = False
        #: The measured SVSM launch parameters page (guest VMPL, vCPUs, memory size).
        self.launch_parameters = b""
        self.platform.hypervisor.send_init(platform.vcpus[0].apic_id)

    @property
    def guest(self) -> Any:
        """The guest OS driver on the BSP (:class:`svsm.sdk.guest.Guest`), running at the guest VMPL."""
        if self._guest is None:
            from svsm.sdk.guest import Guest

            lay, bsp = self.layout, self.platform.vcpus[0]
            self._guest = Guest(
                bsp, self.svsm.guest_vmpl, secrets_gpa=lay.guest_secrets_gpa, ram=lay.guest_ram,
                reserved=[(self.firmware.gpa, len(self.firmware.data)), (0, 0x8000)],
                cpus=self.platform.vcpu_by_apic_id, apic_ids=[c.apic_id for c in self.platform.vcpus],
            )  # fmt: skip
        return self._guest

    def guest_on(self, apic_id: int) -> Any:
        """The guest driver on the vCPU with ``apic_id``: the BSP's, or an AP the guest started.

        :raises ValueError: no such vCPU, or the guest has not started that AP.
        """
        g = self.guest
        if apic_id == g.cpu.apic_id:
            return g
        if apic_id not in g.aps:
            raise ValueError(f"the guest has not started the AP with APIC ID {apic_id}")
        return g.aps[apic_id][0]

    @contextlib.contextmanager
    def run_modules(
        self, mode: str = "process", *, state_dir: str | pathlib.Path | None = None, wait: float = 30.0,
        anchor: tuple[str, int] | None = None, anchor_key: bytes | None = None,
        blocked: Iterable[str] | None = None,
    ) -> Iterator[Any]:
        """Start the installed service modules behind this CVM's SVSM; stop them at the end.

        Their keys come from the booted SVSM (:attr:`Svsm.module_key_root`, bound to the
        measurement) and their reports from its PSP channel (:meth:`Svsm.module_report`), so
        this runs after boot, before the guest needs them.

        :param mode: ``"process"`` (sandboxed) or ``"inprocess"`` (threads; tests).
        :param state_dir: the persist module's disk lives in ``state_dir/persist.img``; without
            it the persist module is not started (storage stays volatile).
        :param wait: seconds to wait for each module to serve.
        :param anchor: ``(host, port)`` of the persist module's freshness anchor, relayed by the
            kernel service ``anchor`` (``svsm.kernel.hw.blockdev.AnchorLink``); registered before
            the modules start, since persist asks the anchor at start.
        :param anchor_key: the anchor's public key to pin (without it: trust on first use).
        :param blocked: installed modules not to start; default: ``migrate`` (it runs under
            ``svsm migrate``), and ``persist`` too without ``state_dir``.
        :returns: the ``svsm.kernel.ipc.ModuleHost``.
        """
        from svsm.kernel.ipc import ModuleHost, Providers

        with contextlib.ExitStack() as stack:
            disk = None
            if state_dir is not None:
                from svsm.kernel.hw.blockdev import open_state_disk

                disk = open_state_disk(state_dir)
                stack.callback(disk.close)
            providers = Providers(report=self.svsm.module_report, key_root=self.svsm.module_key_root, disk=disk)
            if blocked is None:
                blocked = ("migrate",) if state_dir is not None else ("persist", "migrate")
            extra: dict[str, Any] = {}
            if "scheduler" in inspect.signature(ModuleHost).parameters:  # supervision as a kernel task
                extra["scheduler"] = self.svsm.tasks.scheduler
            host = ModuleHost.from_installed(mode=mode, blocked=blocked, providers=providers, **extra)
            if anchor is not None:
                from svsm.kernel.hw.blockdev import ANCHOR_SERVICE, AnchorLink

                host.register_service(ANCHOR_SERVICE, AnchorLink(*anchor, anchor_key=anchor_key))
            stack.enter_context(host)
            self.svsm.attach_module_host(host)
            stack.callback(self.svsm.attach_module_host, None)
            for info in host.modules():
                host.wait_module_ready(info.name, wait)
            yield host

    def statistics(self) -> CvmStatistics:
        """Calls, allocator, lock and hypervisor counters."""
        s = self.svsm
        return CvmStatistics(
            s.dispatcher.statistics().by_protocol, s.loop.statistics().calls_per_cpu,
            s.allocator.statistics(), s.slab.statistics(), s.pvalidate_lock.statistics(),
            s.registry.statistics(), s.core.statistics(), self.hypervisor.statistics(), s.tasks.statistics(),
        )  # fmt: skip

    def shutdown(self, *, check_leaks: bool = True) -> None:
        """Stop every vCPU, check the kernel's allocators for leaks, decommission (idempotent).

        :param check_leaks: run the SVSM's leak check (skipped when unwinding from an error).
        :raises MemoryLeak: the kernel leaked memory (a ``FatalError``).
        """
        if self._closed:
            return
        self._closed = True
        for v in self.platform.vcpus:
            with v.exec_lock:  # not in the middle of a guest instruction or of kernel work
                v.unregister_vmpl_entry(0)
                if v.vmpl is not None:
                    v.halt()
        try:
            tasks = getattr(self.svsm, "tasks", None)
            if tasks is not None:
                try:
                    tasks.shutdown()
                except Exception:
                    if check_leaks:
                        raise
                    log.exception("kernel tasks failed while unwinding")
            if check_leaks:
                self.svsm.shutdown()
        finally:
            self.psp.decommission(self.psp_context)

    def __enter__(self) -> Cvm:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.shutdown(check_leaks=exc_type is None)


def _launch_plan(layout: MemoryLayout, image: bytes, firmware: FirmwareImage, params: bytes) -> list[_LaunchUpdate]:
    """What the PSP measures: kernel image, launch parameters page, secrets, firmware, VMSA."""
    plan = [
        _LaunchUpdate(PageType.NORMAL, layout.svsm_base, len(image), image),
        _LaunchUpdate(PageType.NORMAL, layout.params_gpa, PAGE, params),
        _LaunchUpdate(PageType.SECRETS, layout.secrets_gpa, PAGE),
        _LaunchUpdate(PageType.NORMAL, firmware.gpa, len(firmware.data), firmware.data),
    ]
    for sec in firmware.sections:
        kind = PageType.CPUID if sec.type is SectionType.CPUID else PageType.ZERO
        plan.append(_LaunchUpdate(kind, sec.gpa, sec.size))
    plan.append(_LaunchUpdate(PageType.VMSA, layout.bsp_vmsa_gpa, PAGE, _build_vmsa(0), vcpu=0))
    return plan


def _writer(platform: Platform) -> Callable[[PageType, int, bytes, int | None], None]:
    fa = platform.firmware

    def write(page_type: PageType, gpa: int, data: bytes, vcpu: int | None) -> None:
        for off in range(0, len(data), PAGE):
            spa = gpa + off
            fa.write_private(spa, data[off : off + PAGE])
            fa.set_rmp(spa, assigned=True, gpa=spa, validated=True, vmsa=page_type is PageType.VMSA)
        if page_type is PageType.VMSA and vcpu is not None:
            fa.install_vmsa(vcpu, 0, gpa)

    return write


@contextlib.contextmanager
def boot(
    vcpus: int = 2,
    memory: str | int = "64M",
    guest_vmpl: int = 2,
    *,
    module_host: ModuleHost | None = None,
    hypervisor: Any = None,
    psp_state_dir: str | None = None,
    seed: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[Cvm]:
    """Boot a CVM and yield it running; shut it down when the block ends.

    :param vcpus: number of vCPUs (APIC IDs 0..n-1).
    :param memory: guest memory size (``"64M"``, bytes); a multiple of 2 MiB.
    :param guest_vmpl: the VMPL the guest OS runs at (1-3; COCONUT uses 2).
    :param module_host: the ring-3 module runtime serving further protocols.
    :param hypervisor: a :class:`~svsm.kernel.hw.Hypervisor` (e.g. an adversary); default honest.
    :param psp_state_dir: where the simulated chip's keys live (default: shared per user).
    :param seed: seeds memory encryption keys and PSP randomness for a deterministic run (tests,
        benchmarks); default None: both come from the OS RNG, so the host cannot predict them.
    :param clock: monotonic clock for timings.
    :raises ValueError: bad sizes or VMPL.

    .. versionadded:: 0.1
    """
    if not 1 <= guest_vmpl <= 3:
        raise ValueError("guest VMPL must be 1, 2 or 3")
    size = parse_size(memory)
    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    t0 = clock()
    image = kernel_image()
    layout = MemoryLayout.compute(size, len(image), vcpus)
    fw_image = FirmwareImage.parse(build_image(FIRMWARE_SIZE, sections=FIRMWARE_SECTIONS), end_at=FIRMWARE_END)
    platform = Platform(memory_size=size, vcpu_count=vcpus, rng=rng, hypervisor=hypervisor)
    fw = SnpFirmware(_chip(psp_state_dir), rng=rng.randbytes)
    params = launch_parameters_page(guest_vmpl=guest_vmpl, vcpus=vcpus, memory_size=size)
    result = launch(fw, _launch_plan(layout, image, fw_image, params), write=_writer(platform))
    platform.psp = _PspPort(fw, result.ctx)
    t1 = clock()
    svsm = Svsm(platform, layout, guest_vmpl=guest_vmpl, module_host=module_host, clock=clock)
    try:
        svsm.init()
        t2 = clock()
        svsm.prepare_guest(fw_image)
    except BaseException:
        fw.decommission(result.ctx)  # a CVM that never ran must not keep its keys at the PSP
        raise
    t3 = clock()
    log.info("booted: %d vCPUs, %d MiB, measurement %s", vcpus, size >> 20, result.measurement.hex())
    cvm = Cvm(platform, fw, result.ctx, svsm, fw_image, result.measurement, BootTimings(t1 - t0, t2 - t1, t3 - t2))
    cvm.launch_parameters = params
    try:
        yield cvm
    except BaseException:
        cvm.shutdown(check_leaks=False)
        raise
    cvm.shutdown()

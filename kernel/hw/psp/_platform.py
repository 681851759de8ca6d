"""The PSP attached to one :class:`~svsm.kernel.hw.Platform`: launch into its memory, serve its guest.

kernel/hw's seam (docs/dev/hw-api.md, "PSP seam"): the hypervisor calls
``platform.psp.guest_request(request_page) -> response_page`` and ``platform.psp.certificates()``;
the launch reaches memory and the RMP only through ``platform.firmware`` (FirmwareAccess).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from svsm.sdk.attestation import ARK_GUID, ASK_GUID, VCEK_GUID

from ._firmware import FwError, GuestContext, PspError, PspStatistics, SnpFirmware
from ._launch import LaunchResult, launch
from ._measure import LaunchUpdate, PageType

__all__ = ["PlatformPsp"]

log = logging.getLogger(__name__)
PAGE_SIZE = 4096


class PlatformPsp:
    """One guest's view of the PSP, in the shape kernel/hw's hypervisor expects.

    :param fw: the chip's firmware (shared by every guest on the chip).
    :param platform: the machine (its ``firmware`` accessor is the only way to memory).
    :param vmsa_spa: where vCPU ``i``'s VMSA page goes (the hypervisor picks real VMSA
        pages; default: the last pages of memory, ``memory_size - (i + 1) * 4096``).

    .. versionadded:: 0.1
    """

    def __init__(self, fw: SnpFirmware, platform: Any, *, vmsa_spa: Callable[[int], int] | None = None) -> None:
        self.fw = fw
        self.platform = platform
        self._vmsa_spa = vmsa_spa or (lambda i: platform.memory_size - (i + 1) * PAGE_SIZE)
        self.ctx: GuestContext | None = None
        self.result: LaunchResult | None = None

    def _spa(self, gpa: int) -> int:
        return int(self.platform.host.translate(gpa))

    def _write(self, page_type: PageType, gpa: int, data: bytes, vcpu: int | None) -> None:
        fa = self.platform.firmware
        if page_type is PageType.VMSA:
            assert vcpu is not None
            spa = self._vmsa_spa(vcpu)
            fa.write_private(spa, data)
            fa.set_rmp(spa, assigned=True, gpa=spa, validated=True, vmsa=True)
            fa.install_vmsa(vcpu, 0, spa)
            return
        for off in range(0, len(data), PAGE_SIZE):
            spa = self._spa(gpa + off)
            fa.write_private(spa, data[off : off + PAGE_SIZE])
            fa.set_rmp(spa, assigned=True, gpa=gpa + off, validated=True)

    def launch(self, plan: Iterable[LaunchUpdate], *, policy: int = 0x30000, host_data: bytes = bytes(32),
               id_block: bytes | None = None, id_auth: bytes | None = None) -> LaunchResult:  # fmt: skip
        """Launch the platform's guest: every page of ``plan`` lands in guest memory, assigned
        to the guest's ASID and validated; VMSA pages get the RMP VMSA bit and become the vCPUs'
        VMPL0 VMSAs.

        :returns: the launch result (measurement, secrets page location).
        :raises PspError: a firmware command failed.
        """
        self.result = launch(self.fw, plan, write=self._write, policy=policy, host_data=host_data,
                             id_block=id_block, id_auth=id_auth)  # fmt: skip
        self.ctx = self.result.ctx
        log.info("launched guest ASID %d, measurement %s", self.ctx.asid, self.result.measurement.hex())
        return self.result

    def guest_request(self, request: bytes) -> bytes:
        """The hypervisor's GUEST_REQUEST entry: request page bytes in, response page bytes out.

        :raises PspError: with ``fw_error`` (the hypervisor puts it in SW_EXITINFO2[31:0]).
        """
        if self.ctx is None:
            raise PspError(FwError.INVALID_GUEST, "no guest launched on this platform")
        return self.fw.guest_request(self.ctx, request)

    def certificates(self) -> Sequence[tuple[uuid.UUID, bytes]]:
        """VCEK, ASK, ARK (DER) for EXT_GUEST_REQUEST's certificate table."""
        ark, ask, vcek = self.fw.chip.chain_der(self.fw.reported_tcb)
        return [(VCEK_GUID, vcek), (ASK_GUID, ask), (ARK_GUID, ark)]

    def statistics(self) -> PspStatistics:
        """The chip firmware's counters."""
        return self.fw.statistics()

"""Hazardous: a hypervisor that attacks the guest, for adversarial tests only.

Each attack is off until a test switches it on.  Everything goes through the same host-side
powers the honest hypervisor has (host view, RMPUPDATE/PSMASH, the nested page table, the GHCB
protocol), so whatever succeeds here would succeed against real hardware too -- and whatever the
platform refuses (writing private memory, raising VMPL permissions) stays refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._constants import PAGE_SHIFT, PAGE_SIZE
from .._hypervisor import Hypervisor
from .._psc import PageStateChangeEntry

if TYPE_CHECKING:
    from .._vcpu import Vcpu

__all__ = ["AdversarialHypervisor"]

log = logging.getLogger(__name__)


class AdversarialHypervisor(Hypervisor):
    """A :class:`~svsm.kernel.hw.Hypervisor` with switchable attacks.

    Attributes a test sets:

    * ``drop_events``: SW_EXITCODEs (full GHCB) answered by doing nothing and not writing the
      GHCB back -- the guest sees its own request unchanged.
    * ``fake_psc_success``: page state changes report success but change no RMP entry.
    * ``replay_guest_requests``: forward the *first* request page ever seen instead of the current
      one (the PSP's sequence numbers must refuse it).
    * ``tamper_response``: callable applied to every PSP response page before the guest sees it.
    * ``hide_dirty``: GFNs never reported by the dirty log.
    * ``before_vmgexit``: callables run with the vCPU before each VMGEXIT is handled.

    .. versionadded:: 0.1
    """

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.drop_events: set[int] = set()
        self.fake_psc_success = False
        self.replay_guest_requests = False
        self.tamper_response: Callable[[bytes], bytes] | None = None
        self.hide_dirty: set[int] = set()
        self.before_vmgexit: list[Callable[[Vcpu], None]] = []
        self.recorded_requests: list[bytes] = []
        self.dropped = 0

    # -- raw host powers, named for what they are ------------------------------------------------
    def steal(self, gpa: int, length: int) -> bytes:
        """Read guest memory as the host (ciphertext for private pages)."""
        return self.platform.host.read(gpa, length)

    def scribble(self, gpa: int, data: bytes) -> None:
        """Write guest memory as the host (raises HostPageFault on private pages)."""
        self.platform.host.write(gpa, data)

    def copy_frame(self, src_gfn: int, dst_gfn: int) -> None:
        """Copy DRAM of one frame to another (the host can always write its own pages)."""
        data = self.platform.host.read_spa(src_gfn << PAGE_SHIFT, PAGE_SIZE)
        self.platform.host.write_spa(dst_gfn << PAGE_SHIFT, data)

    # -- overridden steps ---------------------------------------------------------------------------
    def handle_vmgexit(self, vcpu: Vcpu) -> None:
        """Run the hooks, maybe drop the event, otherwise behave honestly."""
        for hook in self.before_vmgexit:
            hook(vcpu)
        vmpl = vcpu.vmpl
        assert vmpl is not None
        value = vcpu.ghcb_msr[vmpl]
        if self.drop_events and not value & 0xFFF:
            code = int.from_bytes(self.platform.host.read(value + 0x390, 8), "little")
            if code in self.drop_events:
                self.dropped += 1
                log.info("adversary: dropping NAE event %#x", code)
                return
        super().handle_vmgexit(vcpu)

    def page_state_change(self, entry: PageStateChangeEntry) -> tuple[int, PageStateChangeEntry]:
        """Lie about page state changes if asked to."""
        if self.fake_psc_success:
            done = 512 if entry.huge else 0
            return 0, PageStateChangeEntry(entry.gfn, entry.operation, entry.huge, done)
        return super().page_state_change(entry)

    def forward_guest_request(self, request: bytes) -> bytes:
        """Replay and/or tamper with guest requests."""
        self.recorded_requests.append(request)
        if self.replay_guest_requests:
            request = self.recorded_requests[0]
        response = super().forward_guest_request(request)
        if self.tamper_response is not None:
            response = self.tamper_response(response)
        return response

    def get_dirty_log(self, *, clear: bool = True) -> set[int]:
        """Report the dirty log minus the pages we want the guest to miss."""
        return super().get_dirty_log(clear=clear) - self.hide_dirty

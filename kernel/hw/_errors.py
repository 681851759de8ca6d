"""Typed faults and errors of the simulated hardware.

Real silicon never raises a generic exception: an access that breaks an RMP rule becomes a #VC in
the guest, a nested page fault (#VMEXIT(NPF)) to the hypervisor, or a #PF in the host.  Each is a
distinct class here carrying the architectural error bits (snp.md 5.4), so callers (the SVSM's
fixups, the hypervisor, tests) can react to exactly the fault that real hardware would deliver.
"""

from __future__ import annotations

from svsm.sdk import SvsmError

from ._constants import NPF_ENC, NPF_SIZEM, NPF_VMPL, PF_RMP, PF_WRITE, VC_PAGE_NOT_VALIDATED


class HardwareFault(SvsmError):
    """Root of the faults the simulated CPU delivers.

    Whoever catches one is playing the role of the exception handler that real hardware would
    invoke; an SVSM fixup typically turns it into an error code for the guest request.
    """


class VmmCommunicationException(HardwareFault):
    """#VC (vector 29) delivered to the guest, e.g. error code 0x404 PAGE_NOT_VALIDATED.

    :param error_code: the #VC error code (an SVM exit code).
    :param address: faulting guest address (CR2 for 0x404).
    """

    def __init__(self, error_code: int, address: int) -> None:
        super().__init__(f"#VC error_code={error_code:#x} address={address:#x}")
        self.error_code = error_code
        self.address = address

    @property
    def page_not_validated(self) -> bool:
        """True for the PAGE_NOT_VALIDATED (0x404) case."""
        return self.error_code == VC_PAGE_NOT_VALIDATED


class NestedPageFault(HardwareFault):
    """#VMEXIT(NPF): an RMP or nested-page-table check failed on a guest access.

    The hypervisor would see this exit; in the simulation it surfaces as an exception on the
    thread running the guest (the caller decides whether to retry, e.g. after PSMASH).

    :param gpa: guest physical address of the access.
    :param exit_info_1: EXITINFO1 error bits (P/W/RMP plus ENC 34, SIZEM 35, VMPL 36).
    """

    def __init__(self, gpa: int, exit_info_1: int) -> None:
        super().__init__(f"NPF gpa={gpa:#x} exit_info_1={exit_info_1:#x}")
        self.gpa = gpa
        self.exit_info_1 = exit_info_1

    @property
    def size_mismatch(self) -> bool:
        """EXITINFO1.SIZEM: a 4 KiB operation hit a 2 MiB RMP entry; PSMASH and retry."""
        return bool(self.exit_info_1 & NPF_SIZEM)

    @property
    def vmpl_violation(self) -> bool:
        """EXITINFO1.VMPL: the VMPL permission mask refused the access."""
        return bool(self.exit_info_1 & NPF_VMPL)

    @property
    def encrypted(self) -> bool:
        """EXITINFO1.ENC: the access had an effective C-bit of 1."""
        return bool(self.exit_info_1 & NPF_ENC)

    @property
    def write(self) -> bool:
        """The faulting access was a write."""
        return bool(self.exit_info_1 & PF_WRITE)


class HostPageFault(HardwareFault):
    """#PF in the host: it wrote (or walked) a page that is not hypervisor-owned.

    :param address: system physical address of the access.
    :param error_code: #PF error code; bit 31 (RMP) is set for RMP violations.
    """

    def __init__(self, address: int, error_code: int) -> None:
        super().__init__(f"host #PF address={address:#x} error_code={error_code:#x}")
        self.address = address
        self.error_code = error_code

    @property
    def rmp(self) -> bool:
        """Error-code bit 31: the RMP check caused the fault."""
        return bool(self.error_code & PF_RMP)


class VmrunError(HardwareFault):
    """VMRUN refused a VMSA (VMEXIT_INVALID, -1): not RMP VMSA-marked, bad SEV_FEATURES, etc."""


class GhcbProtocolError(SvsmError):
    """A GHCB MSR value or GHCB page that cannot be decoded.

    Raised by the sans-IO codecs; the hypervisor answers the guest with the GHCB error for it
    and the guest side treats it as a hypervisor protocol violation.
    """


class GhcbFieldNotValid(GhcbProtocolError):
    """A GHCB field the event needs is not marked in the valid bitmap (-> MISSING_INPUT)."""


class PageStateChangeFormatError(GhcbProtocolError):
    """A page state change buffer with a bad header, reserved bits, or unknown operation."""


class GuestTerminated(SvsmError):
    """The guest asked the hypervisor to terminate it (GHCB termination request); nothing resumes.

    :param reason_set: GHCB reason set (0 general, 1 Linux).
    :param reason_code: reason within the set.
    """

    def __init__(self, reason_set: int, reason_code: int) -> None:
        super().__init__(f"guest terminated: reason set {reason_set}, code {reason_code}")
        self.reason_set = reason_set
        self.reason_code = reason_code

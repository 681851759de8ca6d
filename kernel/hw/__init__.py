"""svsm.kernel.hw -- the simulated SEV-SNP platform: memory, RMP, vCPUs/VMSAs, GHCB, hypervisor.

Start at :class:`Platform`; see ``docs/dev/hw-api.md`` for the seams with the PSP and the SVSM.
The PSP firmware lives in ``svsm.kernel.hw.psp`` and reaches the machine through
:class:`FirmwareAccess` only.

.. versionadded:: 0.1
"""

from ._constants import MSR_GHCB as MSR_GHCB
from ._constants import MSR_SEV_STATUS as MSR_SEV_STATUS
from ._constants import NPF_ENC as NPF_ENC
from ._constants import NPF_SIZEM as NPF_SIZEM
from ._constants import NPF_VMPL as NPF_VMPL
from ._constants import PAGE_SIZE as PAGE_SIZE
from ._constants import PAGE_SIZE_2M as PAGE_SIZE_2M
from ._constants import PF_RMP as PF_RMP
from ._constants import VC_PAGE_NOT_VALIDATED as VC_PAGE_NOT_VALIDATED
from ._constants import VMPL_COUNT as VMPL_COUNT
from ._constants import VMPL_PERMS_ALL as VMPL_PERMS_ALL
from ._constants import PvalidateResult as PvalidateResult
from ._constants import RmpadjustResult as RmpadjustResult
from ._constants import RmpPageSize as RmpPageSize
from ._constants import RmpupdateResult as RmpupdateResult
from ._constants import VmplPermission as VmplPermission
from ._errors import GhcbFieldNotValid as GhcbFieldNotValid
from ._errors import GhcbProtocolError as GhcbProtocolError
from ._errors import GuestTerminated as GuestTerminated
from ._errors import HardwareFault as HardwareFault
from ._errors import HostPageFault as HostPageFault
from ._errors import NestedPageFault as NestedPageFault
from ._errors import PageStateChangeFormatError as PageStateChangeFormatError
from ._errors import VmmCommunicationException as VmmCommunicationException
from ._errors import VmrunError as VmrunError
from ._ghcb import GHCB as GHCB
from ._ghcb import GhcbError as GhcbError
from ._ghcb import GhcbPage as GhcbPage
from ._ghcb import SwExitCode as SwExitCode
from ._hypervisor import GuestRequestFirmware as GuestRequestFirmware
from ._hypervisor import Hypervisor as Hypervisor
from ._hypervisor import HypervisorStatistics as HypervisorStatistics
from ._hypervisor import build_cert_table as build_cert_table
from ._memory import PhysicalMemory as PhysicalMemory
from ._msr_protocol import CpuidRequest as CpuidRequest
from ._msr_protocol import CpuidResponse as CpuidResponse
from ._msr_protocol import HypervisorFeature as HypervisorFeature
from ._msr_protocol import HypervisorFeaturesRequest as HypervisorFeaturesRequest
from ._msr_protocol import HypervisorFeaturesResponse as HypervisorFeaturesResponse
from ._msr_protocol import MsrMessage as MsrMessage
from ._msr_protocol import MsrProtocolCode as MsrProtocolCode
from ._msr_protocol import PageStateChangeRequest as PageStateChangeRequest
from ._msr_protocol import PageStateChangeResponse as PageStateChangeResponse
from ._msr_protocol import RegisterGhcbRequest as RegisterGhcbRequest
from ._msr_protocol import RegisterGhcbResponse as RegisterGhcbResponse
from ._msr_protocol import RunVmplRequest as RunVmplRequest
from ._msr_protocol import RunVmplResponse as RunVmplResponse
from ._msr_protocol import SevInfoRequest as SevInfoRequest
from ._msr_protocol import SevInfoResponse as SevInfoResponse
from ._msr_protocol import TerminationRequest as TerminationRequest
from ._msr_protocol import decode_msr as decode_msr
from ._platform import FirmwareAccess as FirmwareAccess
from ._platform import Platform as Platform
from ._platform import PlatformStatistics as PlatformStatistics
from ._psc import PSC_MAX_ENTRIES as PSC_MAX_ENTRIES
from ._psc import PageStateChangeBuffer as PageStateChangeBuffer
from ._psc import PageStateChangeEntry as PageStateChangeEntry
from ._psc import PageStateChangeOp as PageStateChangeOp
from ._rmp import RMP as RMP
from ._rmp import InstructionResult as InstructionResult
from ._rmp import RmpEntry as RmpEntry
from ._rmp import RmpUpdateState as RmpUpdateState
from ._vcpu import Vcpu as Vcpu
from ._vcpu import VmplEntry as VmplEntry
from ._views import GuestView as GuestView
from ._views import HostView as HostView
from ._vmsa import VMSA as VMSA
from ._vmsa import SegmentRecord as SegmentRecord
from ._vmsa import VmsaView as VmsaView

__all__ = [
    "CpuidRequest", "CpuidResponse", "FirmwareAccess", "GHCB", "GhcbError", "GhcbPage",
    "GhcbFieldNotValid", "GhcbProtocolError", "GuestRequestFirmware", "GuestTerminated", "GuestView", "HardwareFault",
    "HostPageFault", "HostView", "Hypervisor", "HypervisorFeature",
    "HypervisorFeaturesRequest", "HypervisorFeaturesResponse", "HypervisorStatistics",
    "InstructionResult", "MSR_GHCB", "MSR_SEV_STATUS", "MsrMessage", "MsrProtocolCode",
    "NPF_ENC", "NPF_SIZEM", "NPF_VMPL", "NestedPageFault", "PAGE_SIZE", "PAGE_SIZE_2M", "PF_RMP",
    "PSC_MAX_ENTRIES", "PageStateChangeBuffer", "PageStateChangeEntry", "PageStateChangeFormatError",
    "PageStateChangeOp", "PageStateChangeRequest", "PageStateChangeResponse", "PhysicalMemory",
    "Platform", "PlatformStatistics", "PvalidateResult", "RMP", "RegisterGhcbRequest",
    "RegisterGhcbResponse", "RmpEntry", "RmpPageSize", "RmpUpdateState", "RmpadjustResult",
    "RmpupdateResult", "RunVmplRequest", "RunVmplResponse", "SegmentRecord", "SevInfoRequest",
    "SevInfoResponse", "SwExitCode", "TerminationRequest", "VC_PAGE_NOT_VALIDATED", "VMPL_COUNT",
    "VMPL_PERMS_ALL", "VMSA", "Vcpu", "VmmCommunicationException", "VmplEntry", "VmplPermission",
    "VmrunError", "VmsaView", "build_cert_table", "decode_msr",
]

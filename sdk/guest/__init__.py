"""svsm.sdk.guest -- the simulated guest OS's SVSM driver and the guest-visible SVSM ABI.

The structures (calling area, PVALIDATE list, attestation ops, services manifest) are declared
here once; the kernel imports them from here.  The SDK never imports the kernel at import time.
"""

from ._abi import SERVICES_MANIFEST_GUID as SERVICES_MANIFEST_GUID
from ._abi import SVSM_APIC_PROTOCOL as SVSM_APIC_PROTOCOL
from ._abi import SVSM_ATTEST_PROTOCOL as SVSM_ATTEST_PROTOCOL
from ._abi import SVSM_CORE_PROTOCOL as SVSM_CORE_PROTOCOL
from ._abi import SVSM_REQ_ATTEST_SERVICES as SVSM_REQ_ATTEST_SERVICES
from ._abi import SVSM_REQ_ATTEST_SINGLE_SERVICE as SVSM_REQ_ATTEST_SINGLE_SERVICE
from ._abi import SVSM_REQ_CORE_CONFIGURE_VTOM as SVSM_REQ_CORE_CONFIGURE_VTOM
from ._abi import SVSM_REQ_CORE_CREATE_VCPU as SVSM_REQ_CORE_CREATE_VCPU
from ._abi import SVSM_REQ_CORE_DELETE_VCPU as SVSM_REQ_CORE_DELETE_VCPU
from ._abi import SVSM_REQ_CORE_DEPOSIT_MEM as SVSM_REQ_CORE_DEPOSIT_MEM
from ._abi import SVSM_REQ_CORE_PVALIDATE as SVSM_REQ_CORE_PVALIDATE
from ._abi import SVSM_REQ_CORE_QUERY_PROTOCOL as SVSM_REQ_CORE_QUERY_PROTOCOL
from ._abi import SVSM_REQ_CORE_REMAP_CA as SVSM_REQ_CORE_REMAP_CA
from ._abi import SVSM_REQ_CORE_WITHDRAW_MEM as SVSM_REQ_CORE_WITHDRAW_MEM
from ._abi import SVSM_UEFI_MM_PROTOCOL as SVSM_UEFI_MM_PROTOCOL
from ._abi import SVSM_VTPM_PROTOCOL as SVSM_VTPM_PROTOCOL
from ._abi import VTPM_SERVICE_GUID as VTPM_SERVICE_GUID
from ._abi import AttestServicesOp as AttestServicesOp
from ._abi import AttestSingleServiceOp as AttestSingleServiceOp
from ._abi import CallingAreaHeader as CallingAreaHeader
from ._abi import PageList as PageList
from ._abi import PageListEntry as PageListEntry
from ._abi import PvalidateEntry as PvalidateEntry
from ._abi import ServicesManifest as ServicesManifest
from ._abi import request_rax as request_rax
from ._abi import split_rax as split_rax
from ._guest import Attestation as Attestation
from ._guest import CallNotServiced as CallNotServiced
from ._pool import GuestOutOfMemory as GuestOutOfMemory
from ._guest import Guest as Guest
from ._guest import GuestStatistics as GuestStatistics
from ._guest import GuestVcpu as GuestVcpu
from ._pool import PagePool as PagePool
from ._guest import SvsmCallResult as SvsmCallResult

__all__ = [
    "Attestation",
    "CallNotServiced",
    "GuestOutOfMemory",
    "Guest",
    "GuestStatistics",
    "GuestVcpu",
    "PagePool",
    "SvsmCallResult",
    "SERVICES_MANIFEST_GUID",
    "SVSM_APIC_PROTOCOL",
    "SVSM_ATTEST_PROTOCOL",
    "SVSM_CORE_PROTOCOL",
    "SVSM_REQ_ATTEST_SERVICES",
    "SVSM_REQ_ATTEST_SINGLE_SERVICE",
    "SVSM_REQ_CORE_CONFIGURE_VTOM",
    "SVSM_REQ_CORE_CREATE_VCPU",
    "SVSM_REQ_CORE_DELETE_VCPU",
    "SVSM_REQ_CORE_DEPOSIT_MEM",
    "SVSM_REQ_CORE_PVALIDATE",
    "SVSM_REQ_CORE_QUERY_PROTOCOL",
    "SVSM_REQ_CORE_REMAP_CA",
    "SVSM_REQ_CORE_WITHDRAW_MEM",
    "SVSM_UEFI_MM_PROTOCOL",
    "SVSM_VTPM_PROTOCOL",
    "VTPM_SERVICE_GUID",
    "AttestServicesOp",
    "AttestSingleServiceOp",
    "CallingAreaHeader",
    "PageList",
    "PageListEntry",
    "PvalidateEntry",
    "ServicesManifest",
    "request_rax",
    "split_rax",
]

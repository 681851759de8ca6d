"""SVSM protocols served in the kernel (core, attestation) and request dispatch.

Calls reach a protocol as :class:`RequestParams` through :class:`Dispatcher`; protocols not served
in the kernel go to a :class:`ModuleHost` (the ring-3 module runtime).  Guest memory is reached
only through :class:`GuestMemory`.
"""

from ._attest import AttestProtocol as AttestProtocol
from ._attest import CertificateBufferTooSmall as CertificateBufferTooSmall
from ._attest import ReportFetcher as ReportFetcher
from ._core import EFER_SVME as EFER_SVME
from ._core import CoreProtocol as CoreProtocol
from ._core import CoreStatistics as CoreStatistics
from ._core import CpuOps as CpuOps
from ._core import DepositPool as DepositPool
from ._core import VmsaSummary as VmsaSummary
from ._dispatch import KERNEL_PROTOCOL_VERSIONS as KERNEL_PROTOCOL_VERSIONS
from ._dispatch import Dispatcher as Dispatcher
from ._dispatch import DispatchStatistics as DispatchStatistics
from ._dispatch import GuestMemoryWindow as GuestMemoryWindow
from ._dispatch import ModuleHost as ModuleHost
from ._dispatch import RequestParams as RequestParams
from ._guestmem import GuestMemory as GuestMemory
from ._guestmem import GuestMemoryStatistics as GuestMemoryStatistics
from ._guestmem import RequestWindow as RequestWindow
from ._vcpus import RegistryStatistics as RegistryStatistics
from ._vcpus import VcpuRegistry as VcpuRegistry
from ._vcpus import VmsaRecord as VmsaRecord
from .errors import to_result_code as to_result_code

__all__ = [
    "AttestProtocol", "CertificateBufferTooSmall", "ReportFetcher",
    "EFER_SVME", "CoreProtocol", "CoreStatistics", "CpuOps", "DepositPool", "VmsaSummary",
    "KERNEL_PROTOCOL_VERSIONS", "Dispatcher", "DispatchStatistics", "GuestMemoryWindow", "ModuleHost",
    "RequestParams", "GuestMemory", "GuestMemoryStatistics", "RequestWindow", "RegistryStatistics", "VcpuRegistry", "VmsaRecord",
    "to_result_code",
]  # fmt: skip

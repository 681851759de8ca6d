"""svsm.kernel.ipc -- the kernel side of ring-3 modules.

:class:`ModuleHost` implements the ``ModuleHost`` interface request dispatch uses
(``svsm.kernel.protocols``): discovery (pluggy entry points ``svsm.modules``),
sandboxed module processes, the ABI channel, syscalls, grants and supervision.
"""

from ._discovery import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._discovery import ModuleRef as ModuleRef
from ._discovery import ModuleSpec as ModuleSpec
from ._discovery import discover as discover
from ._discovery import measure_object as measure_object
from ._discovery import spec_for as spec_for
from ._disk import BlockDisk as BlockDisk
from ._disk import MemoryDisk as MemoryDisk
from ._grants import GrantTable as GrantTable
from ._host import CallOutcome as CallOutcome
from ._host import HostStatistics as HostStatistics
from ._host import ModuleHost as ModuleHost
from ._lifecycle import TRANSITIONS as TRANSITIONS
from ._lifecycle import IllegalTransition as IllegalTransition
from ._lifecycle import Lifecycle as Lifecycle
from ._lifecycle import ModuleEvent as ModuleEvent
from ._lifecycle import ModuleState as ModuleState
from ._measurements import MODULE_MEASUREMENTS_GUID as MODULE_MEASUREMENTS_GUID
from ._measurements import MeasurementEntry as MeasurementEntry
from ._measurements import decode_measurements as decode_measurements
from ._measurements import encode_measurements as encode_measurements
from ._policy import BLOCK_ENV as BLOCK_ENV
from ._policy import Policy as Policy
from ._policy import load_policy as load_policy
from ._storage import StorageRouter as StorageRouter
from ._storage import VolatileStorage as VolatileStorage
from ._supervisor import Limits as Limits
from ._supervisor import ModuleInfo as ModuleInfo
from ._supervisor import ModuleSupervisor as ModuleSupervisor
from ._syscalls import Providers as Providers
from ._syscalls import SyscallHandler as SyscallHandler

__all__ = [
    "BLOCK_ENV",
    "BlockDisk",
    "CallOutcome",
    "ENTRY_POINT_GROUP",
    "GrantTable",
    "HostStatistics",
    "IllegalTransition",
    "Lifecycle",
    "Limits",
    "MODULE_MEASUREMENTS_GUID",
    "MeasurementEntry",
    "MemoryDisk",
    "ModuleEvent",
    "ModuleHost",
    "ModuleInfo",
    "ModuleRef",
    "ModuleSpec",
    "ModuleState",
    "ModuleSupervisor",
    "Policy",
    "Providers",
    "StorageRouter",
    "SyscallHandler",
    "TRANSITIONS",
    "VolatileStorage",
    "decode_measurements",
    "discover",
    "encode_measurements",
    "load_policy",
    "measure_object",
    "spec_for",
]

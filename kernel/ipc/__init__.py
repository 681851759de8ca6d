"""svsm.kernel.ipc -- the kernel side of ring-3 modules.

:class:`ModuleHost` implements the ``ModuleHost`` interface request dispatch uses
(``svsm.kernel.protocols``): discovery (pluggy entry points ``svsm.modules``),
sandboxed module processes, the ABI channel, syscalls, grants and supervision.

Names load on first use (PEP 562): a module process imports ``svsm.kernel.ipc._child``
and must not pay for the host, the supervisor or the kernel's crypto.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ENTRY_POINT_GROUP": "_discovery",
    "ModuleRef": "_discovery",
    "ModuleSpec": "_discovery",
    "discover": "_discovery",
    "measure_object": "_discovery",
    "spec_for": "_discovery",
    "BlockDisk": "_disk",
    "MemoryDisk": "_disk",
    "GrantTable": "_grants",
    "CallOutcome": "_host",
    "HostStatistics": "_host",
    "ModuleHost": "_host",
    "TRANSITIONS": "_lifecycle",
    "IllegalTransition": "_lifecycle",
    "Lifecycle": "_lifecycle",
    "ModuleEvent": "_lifecycle",
    "ModuleState": "_lifecycle",
    "MODULE_MEASUREMENTS_GUID": "_measurements",
    "MeasurementEntry": "_measurements",
    "decode_measurements": "_measurements",
    "encode_measurements": "_measurements",
    "BLOCK_ENV": "_policy",
    "Policy": "_policy",
    "load_policy": "_policy",
    "StorageRouter": "_storage",
    "VolatileStorage": "_storage",
    "Limits": "_supervisor",
    "ModuleInfo": "_supervisor",
    "ModuleSupervisor": "_supervisor",
    "Providers": "_syscalls",
    "SyscallHandler": "_syscalls",
}

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

def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'svsm.kernel.ipc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

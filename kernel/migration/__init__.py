"""svsm.kernel.migration: the kernel side of live migration (the ``vm`` service).

:class:`MigratableVm` is what the migration engine may do to a booted CVM (read/import pages
with their RMP state, the hypervisor's dirty log, pause/resume/fence, machine state, digests);
:class:`RunGate` is how the host stops and fences the guest's vCPUs; :class:`VmService` offers
the VM and the peer stream to the sandboxed ``migrate`` module as kernel service ``vm``, and
:func:`run_migration` runs one end of a migration there.  The TCP transport and
the drivers used by ``svsm migrate`` / ``svsm run --incoming`` live here too.
"""

from ._gate import GateState as GateState
from ._gate import GateStatistics as GateStatistics
from ._gate import GuestFenced as GuestFenced
from ._gate import RunGate as RunGate
from ._state import MachineState as MachineState
from ._state import decode_state as decode_state
from ._service import MigrationProgress as MigrationProgress
from ._service import VmService as VmService
from ._service import run_migration as run_migration
from ._vm import CHUNK_PAGES as CHUNK_PAGES
from ._vm import MIGRATION_REPORT_LABEL as MIGRATION_REPORT_LABEL
from ._vm import MigratableVm as MigratableVm
from ._vm import VmStatistics as VmStatistics

__all__ = ["GateState", "GateStatistics", "GuestFenced", "RunGate", "MachineState", "decode_state", "CHUNK_PAGES",
           "MigratableVm", "VmStatistics", "MIGRATION_REPORT_LABEL", "MigrationProgress", "VmService", "run_migration"]

"""svsm.modules.migrate: live migration of a running guest between two SVSMs.

As a module (entry point ``svsm.modules``): ``MANIFEST`` and ``svsm_module_command`` ("source" /
"destination"), run in the sandboxed module process and reaching the VM and the peer only through
the kernel's ``vm`` service (:class:`ServicePort`, :class:`ServiceStream`).

The attested channel (:class:`Channel`), the measurement policy, and the engine that runs the
pre-copy rounds, stop-and-copy, final check and two-phase commit against a ``VmPort`` (the
kernel's ``vm`` service) and a ``Stream`` (the host-relayed connection to the peer)::

    from svsm.modules.migrate import MeasurementPolicy, Role, make_channel, make_verifier, migrate_source
    verifier = make_verifier(pinned_ark_pem, MeasurementPolicy.same_as(own_measurement))
    report = migrate_source(vm, sock, make_channel(vm, Role.SOURCE, verifier, os.urandom))
"""

from ._channel import CHANNEL_VERSION as CHANNEL_VERSION
from ._channel import Channel as Channel
from ._channel import ChannelError as ChannelError
from ._channel import ChannelState as ChannelState
from ._channel import ChannelStatistics as ChannelStatistics
from ._channel import Evidence as Evidence
from ._channel import HandshakeComplete as HandshakeComplete
from ._channel import Record as Record
from ._channel import Role as Role
from ._entry import MANIFEST as MANIFEST
from ._entry import MigrateParams as MigrateParams
from ._entry import svsm_module_command as svsm_module_command
from ._engine import MigrationAborted as MigrationAborted
from ._engine import MigrationInDoubt as MigrationInDoubt
from ._engine import MigrationOptions as MigrationOptions
from ._engine import MigrationReport as MigrationReport
from ._engine import Progress as Progress
from ._engine import make_channel as make_channel
from ._engine import migrate_destination as migrate_destination
from ._engine import migrate_source as migrate_source
from ._memvm import MemoryVm as MemoryVm
from ._phases import Phase as Phase
from ._phases import diagram as diagram
from ._policy import MeasurementPolicy as MeasurementPolicy
from ._policy import MIGRATION_REPORT_LABEL as MIGRATION_REPORT_LABEL
from ._policy import make_verifier as make_verifier
from ._policy import migration_report_data as migration_report_data
from ._port import Stream as Stream
from ._service import ServicePort as ServicePort
from ._service import ServiceStream as ServiceStream
from ._port import VmPort as VmPort

__all__ = [
    "CHANNEL_VERSION", "Channel", "ChannelError", "ChannelState", "ChannelStatistics", "Evidence", "HandshakeComplete", "Record", "Role",
    "MigrationAborted", "MigrationInDoubt", "MigrationOptions", "MigrationReport", "Progress", "make_channel",
    "migrate_destination", "migrate_source", "MemoryVm", "Phase", "diagram", "MeasurementPolicy", "make_verifier", "Stream",
    "VmPort", "MANIFEST", "MigrateParams", "svsm_module_command", "ServicePort", "ServiceStream",
    "MIGRATION_REPORT_LABEL", "migration_report_data",
]

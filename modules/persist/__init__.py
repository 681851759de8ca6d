"""svsm.modules.persist -- sealed, crash-safe, tamper-evident state with rollback and clone detection.

The store core (:class:`Store`) runs over any block device (:class:`BlockIO`) with a PSP-derived
sealing key, an injected clock and RNG, and an optional freshness anchor.  See docs/persist.md.
"""

from ._anchor import AnchorClient as AnchorClient
from ._anchor import AnchorClientStatistics as AnchorClientStatistics
from ._anchor import TcpTransport as TcpTransport
from ._anchor_service import AnchorService as AnchorService
from ._anchor_service import AnchorStatistics as AnchorStatistics
from ._anchor_service import chain_verifier as chain_verifier
from ._cli import register as register_commands
from ._entry import MANIFEST as MANIFEST
from ._entry import svsm_module_start as svsm_module_start
from ._entry import svsm_module_stop as svsm_module_stop
from ._entry import svsm_storage_request as svsm_storage_request
from ._errors import AnchorError as AnchorError
from ._errors import AnchorRequired as AnchorRequired
from ._errors import BadKey as BadKey
from ._errors import CloneDetected as CloneDetected
from ._errors import IntegrityError as IntegrityError
from ._errors import PersistError as PersistError
from ._errors import QuotaExceeded as QuotaExceeded
from ._errors import RollbackDetected as RollbackDetected
from ._errors import StoreFull as StoreFull
from ._errors import StoreUnavailable as StoreUnavailable
from ._module import ANCHOR_SERVICE as ANCHOR_SERVICE
from ._module import SEALING_KEY_CONTEXT as SEALING_KEY_CONTEXT
from ._module import kernel_anchor as kernel_anchor
from ._module import PersistModule as PersistModule
from ._module import SyscallBlockIO as SyscallBlockIO
from ._store import DEFAULT_QUOTA as DEFAULT_QUOTA
from ._store import MAX_VALUE as MAX_VALUE
from ._store import BlockIO as BlockIO
from ._store import Delete as Delete
from ._store import FreshnessAnchor as FreshnessAnchor
from ._store import Put as Put
from ._store import Quota as Quota
from ._store import Store as Store
from ._store import StoreStatistics as StoreStatistics

__all__ = [
    "ANCHOR_SERVICE",
    "MANIFEST",
    "kernel_anchor",
    "PersistModule",
    "SEALING_KEY_CONTEXT",
    "SyscallBlockIO",
    "svsm_module_start",
    "svsm_module_stop",
    "svsm_storage_request",
    "AnchorClient",
    "AnchorClientStatistics",
    "AnchorService",
    "AnchorStatistics",
    "TcpTransport",
    "chain_verifier",
    "register_commands",
    "DEFAULT_QUOTA",
    "MAX_VALUE",
    "AnchorError",
    "AnchorRequired",
    "BadKey",
    "BlockIO",
    "CloneDetected",
    "Delete",
    "FreshnessAnchor",
    "IntegrityError",
    "PersistError",
    "Put",
    "Quota",
    "QuotaExceeded",
    "RollbackDetected",
    "Store",
    "StoreFull",
    "StoreStatistics",
    "StoreUnavailable",
]

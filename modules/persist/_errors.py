"""Errors of the persistence module (leaves of the :mod:`svsm.sdk` error tree).

Two kinds, kept apart on purpose:

* the *caller* (another module, through a storage syscall) asked for something bad: a
  :class:`~svsm.sdk.RequestError` leaf with a result code (:class:`QuotaExceeded`,
  :class:`BadKey`, :class:`StoreFull`);
* the *store* cannot be trusted or reached: :class:`StoreUnavailable` and its leaves.  The module
  refuses to serve, says why, and the kernel reports the module as failed.  A store that fails
  authentication is never replaced by an empty one.

Every authentication failure looks the same from outside (house rule 8): one class,
:class:`IntegrityError`, one message; what was checked goes to the local log only.
"""

from __future__ import annotations

from svsm.sdk import InvalidParameter, InvalidRequest, SvsmError

__all__ = [
    "AnchorError",
    "AnchorRequired",
    "BadKey",
    "CloneDetected",
    "IntegrityError",
    "PersistError",
    "QuotaExceeded",
    "RollbackDetected",
    "StoreFull",
    "StoreUnavailable",
]


class PersistError(SvsmError):
    """Root of the persistence module's own errors."""


class StoreUnavailable(PersistError):
    """The store cannot serve: stop serving storage calls and report the module as failed.

    Reopen (after the operator fixed the cause) to try again; never format over it.
    """


class IntegrityError(StoreUnavailable):
    """The image failed authentication (tampered, truncated, swapped, or sealed by another SVSM).

    The message is always the same; the reason is logged locally only.
    """

    def __init__(self, detail: str = "") -> None:
        super().__init__("persistent store failed authentication")
        #: What failed, for the local log and tests' diagnostics (never sent to the host).
        self.detail = detail


class RollbackDetected(StoreUnavailable):
    """The image is older than the generation the freshness anchor holds (or unknown to it)."""


class CloneDetected(StoreUnavailable):
    """Another running instance holds this store's lease at the anchor (or fenced this one)."""


class AnchorRequired(StoreUnavailable):
    """The store was sealed with an anchor but none (or a different one) is configured."""


class AnchorError(StoreUnavailable):
    """The anchor could not be reached or answered something unauthentic."""


class QuotaExceeded(InvalidRequest):
    """The batch would take the caller's namespace over its record or byte quota."""


class BadKey(InvalidParameter):
    """A namespace, key or value is empty, too long or not valid UTF-8."""


class StoreFull(InvalidRequest):
    """The device has no free extent large enough for the batch."""

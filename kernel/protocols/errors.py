"""The single map from exception to SVSM result code (house rule 2).

Anything not mapped here is a broken invariant: :func:`to_result_code` raises
:class:`~svsm.sdk.FatalError`, and the request loop panics the SVSM.
"""

from __future__ import annotations

from svsm.sdk import FatalError, RequestError, ResultCode

__all__ = ["ResultCode", "to_result_code"]


def to_result_code(exc: BaseException) -> int:
    """Return the RAX value the guest sees for ``exc``.

    :param exc: the exception raised while serving a request.
    :returns: the result code (a :class:`ResultCode` or ``0x8000_1000 + n``).
    :raises FatalError: ``exc`` is not a request error; the caller must panic.
    """
    if isinstance(exc, RequestError):
        return int(exc.code)
    # Hardware instruction failures carry their own protocol-specific code.
    code = getattr(exc, "svsm_result_code", None)
    if isinstance(code, int) and not isinstance(exc, FatalError):
        return code
    raise FatalError(f"unmapped exception while serving a request: {exc!r}") from exc

"""svsm.sdk -- everything a ring-3 service module may import.

Quick start for a module author (the full guide is ``docs/modules.md``)::

    # pyproject.toml
    [project.entry-points."svsm.modules"]
    hello = "hello_svsm"

The SDK never imports the kernel at import time.
"""

from ._errors import Busy as Busy
from ._errors import FatalError as FatalError
from ._errors import Incomplete as Incomplete
from ._errors import InvalidAddress as InvalidAddress
from ._errors import InvalidFormat as InvalidFormat
from ._errors import InvalidParameter as InvalidParameter
from ._errors import InvalidRequest as InvalidRequest
from ._errors import ProtocolError as ProtocolError
from ._errors import RequestError as RequestError
from ._errors import ResultCode as ResultCode
from ._errors import SvsmError as SvsmError
from ._errors import UnsupportedCall as UnsupportedCall
from ._errors import UnsupportedProtocol as UnsupportedProtocol

__all__ = [
    "Busy",
    "FatalError",
    "Incomplete",
    "InvalidAddress",
    "InvalidFormat",
    "InvalidParameter",
    "InvalidRequest",
    "ProtocolError",
    "RequestError",
    "ResultCode",
    "SvsmError",
    "UnsupportedCall",
    "UnsupportedProtocol",
]

"""svsm.sdk -- everything a ring-3 service module may import.

Quick start for a module author (the full guide is ``docs/modules.md``)::

    # pyproject.toml
    [project.entry-points."svsm.modules"]
    hello = "hello_svsm"

    # hello_svsm/__init__.py
    from svsm.sdk import CallSpec, Manifest, ProtocolSpec, Reply, hookimpl

    MANIFEST = Manifest(name="hello", version="1.0",
                        protocols=[ProtocolSpec(number=0x4000_0002, calls=[CallSpec(call=0)])])

    @hookimpl
    def svsm_handle_request(request, ctx):
        return Reply(rcx=request.rcx + 1)

``svsm new-module NAME`` writes such a package, with a test.

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
from ._module import BufferSpec as BufferSpec
from ._module import CallSpec as CallSpec
from ._module import Capability as Capability
from ._module import Grant as Grant
from ._module import Manifest as Manifest
from ._module import Module as Module
from ._module import ModuleContext as ModuleContext
from ._module import ProtocolSpec as ProtocolSpec
from ._module import Reply as Reply
from ._module import Request as Request
from ._module import VENDOR_PROTOCOL_BASE as VENDOR_PROTOCOL_BASE
from ._module import hookimpl as hookimpl
from ._module import load_manifest as load_manifest
from ._module import module_report_data as module_report_data
from ._syscalls import CapabilityDenied as CapabilityDenied
from ._syscalls import Syscalls as Syscalls

__all__ = [
    "BufferSpec",
    "CallSpec",
    "Capability",
    "Grant",
    "Manifest",
    "Module",
    "ModuleContext",
    "ProtocolSpec",
    "Reply",
    "Request",
    "VENDOR_PROTOCOL_BASE",
    "hookimpl",
    "load_manifest",
    "module_report_data",
    "CapabilityDenied",
    "Syscalls",
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

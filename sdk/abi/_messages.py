"""The module ABI: every frame that crosses the kernel <-> module channel, declared once.

Hazardous layer (see ``docs/abi.md``): module authors use :class:`svsm.sdk.Syscalls`
and the hooks in :mod:`svsm.sdk.hookspecs`, never these messages directly.

Rules (STYLE.md house rule 4): one frozen tagged union per direction with short,
explicit tags; new fields go last with defaults; a tag is never reused; every
``bytes``/``str``/list is bounded and integers naming addresses or sizes have
bounds, so the decoder rejects oversize input while decoding.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec

__all__ = [
    "ABI_MAJOR",
    "ABI_MINOR",
    "MAX_FRAME",
    "MAX_BUFFER",
    "MAX_BLOB",
    "MAX_KEY",
    "MAX_TEXT",
    "MAX_LIST",
    "MAX_RANDOM",
    "KernelMessage",
    "ModuleMessage",
    "KERNEL_MESSAGES",
    "MODULE_MESSAGES",
    "GrantInfo",
    "Hello",
    "Start",
    "Stop",
    "SaveState",
    "RestoreState",
    "ManifestRequest",
    "StorageRequest",
    "CallRequest",
    "Command",
    "SyscallReply",
    "ErrorFrame",
    "HelloAck",
    "HookResult",
    "SandboxReport",
    "ManifestReport",
    "CallResult",
    "SysLog",
    "SysRandom",
    "SysTime",
    "SysStorageGet",
    "SysStoragePut",
    "SysStorageDelete",
    "SysStorageList",
    "SysReport",
    "SysDerivedKey",
    "SysGrantMap",
    "SysGrantWrite",
    "SysGrantUnmap",
    "SysDiskRead",
    "SysDiskWrite",
    "SysDiskFlush",
    "SysDiskSize",
    "SysService",
    "SYSCALLS",
]

#: ABI version spoken by this SDK.  A different major on the other side ends the handshake.
ABI_MAJOR = 1
ABI_MINOR = 2

#: Largest frame body either side accepts (the 4-byte length prefix is checked first).
MAX_FRAME = 1 << 20
#: Largest guest buffer copied into a request (UEFI-MM's 256 KiB, coconut-svsm.md 2.6).
MAX_BUFFER = 256 * 1024
#: Largest storage value, saved state or attestation blob.
MAX_BLOB = 768 * 1024
#: Longest storage key or name.
MAX_KEY = 255
#: Longest log line or error reason.
MAX_TEXT = 4096
#: Most items in any list.
MAX_LIST = 4096
#: Most random bytes per syscall.
MAX_RANDOM = 4096

U8 = Annotated[int, msgspec.Meta(ge=0, le=0xFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
# msgpack integers cannot exceed 64 bits, so ge=0 bounds U64 fully (msgspec rejects le > int64 max).
U64 = Annotated[int, msgspec.Meta(ge=0)]
Buffer = Annotated[bytes, msgspec.Meta(max_length=MAX_BUFFER)]
Blob = Annotated[bytes, msgspec.Meta(max_length=MAX_BLOB)]
Key = Annotated[str, msgspec.Meta(max_length=MAX_KEY)]
Name = Annotated[str, msgspec.Meta(max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Names = Annotated[list[Key], msgspec.Meta(max_length=MAX_LIST)]
Caps = Annotated[list[Name], msgspec.Meta(max_length=64)]


class GrantInfo(msgspec.Struct, frozen=True):
    """A window onto the guest pages of one request; valid until the request completes."""

    id: U32
    gpa: U64
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_BUFFER)]
    writable: bool = False


# ---------------------------------------------------------------- kernel -> module


class KernelMessage(msgspec.Struct, frozen=True, tag_field="t"):
    """Base of every frame the kernel sends.  ``id`` pairs a request with its answer."""


class Hello(KernelMessage, tag="hello"):
    """First frame: the kernel's ABI version and what the module was granted."""

    abi_major: U32
    abi_minor: U32
    module: Name
    capabilities: Caps = []
    max_frame: U32 = MAX_FRAME
    #: the module's code measurement (SHA-384) as the kernel computed it; since 1.2.
    measurement: Annotated[bytes, msgspec.Meta(max_length=64)] = b""


class Start(KernelMessage, tag="start"):
    """Run ``svsm_module_start``; answered by :class:`HookResult`."""

    id: U32


class Stop(KernelMessage, tag="stop"):
    """Run ``svsm_module_stop``, answer, then exit."""

    id: U32


class SaveState(KernelMessage, tag="save"):
    """Run ``svsm_save_state``; the state comes back in :attr:`HookResult.data`."""

    id: U32


class RestoreState(KernelMessage, tag="restore"):
    """Run ``svsm_restore_state`` with a state an earlier ``SaveState`` returned."""

    id: U32
    state: Blob


class ManifestRequest(KernelMessage, tag="manifest"):
    """Run ``svsm_service_manifest``; the bytes come back in :attr:`HookResult.data`."""

    id: U32


class StorageRequest(KernelMessage, tag="storage"):
    """Storage served by this module (capability ``serve_storage``) for ``namespace``."""

    id: U32
    op: Literal["get", "put", "delete", "list"]
    namespace: Name
    key: Key = ""
    value: Blob = b""


class CallRequest(KernelMessage, tag="call"):
    """A guest SVSM call routed to the module; answered by :class:`CallResult`."""

    id: U32
    protocol: U32
    call: U32
    rcx: U64 = 0
    rdx: U64 = 0
    r8: U64 = 0
    r9: U64 = 0
    buffer: Buffer | None = None
    grant: GrantInfo | None = None


class Command(KernelMessage, tag="cmd"):
    """Run ``svsm_module_command`` (a kernel-invoked named operation); answered by :class:`HookResult`.

    .. versionadded:: ABI 1.1
    """

    id: U32
    name: Name
    payload: Blob = b""


class SyscallReply(KernelMessage, tag="sysret"):
    """The answer to one syscall.  ``code`` 0 is success, otherwise an SVSM result code."""

    id: U32
    code: U64 = 0
    data: Blob = b""
    number: U64 = 0
    names: Names = []
    denied: bool = False


class ErrorFrame(KernelMessage, tag="err"):
    """The kernel rejected a frame it could not accept (malformed, oversized, out of order)."""

    code: U64
    reason: Text = ""
    strikes: U32 = 0


# ---------------------------------------------------------------- module -> kernel


class ModuleMessage(msgspec.Struct, frozen=True, tag_field="t"):
    """Base of every frame a module sends."""


class HelloAck(ModuleMessage, tag="hello"):
    """The module's answer to :class:`Hello`."""

    abi_major: U32
    abi_minor: U32
    name: Name
    version: Name = ""


class SandboxReport(ModuleMessage, tag="sbx"):
    """Sent once by the trusted bootstrap of a sandboxed process, before module code is imported."""

    pid: U32
    protections: Annotated[list[Name], msgspec.Meta(max_length=64)] = []
    error: Text = ""


class ManifestReport(ModuleMessage, tag="mfst"):
    """Sent once by the trusted bootstrap after importing the module inside the sandbox, before ``hello``.

    ``manifest`` is the module's :class:`~svsm.sdk.Manifest` as msgpack (decoded by the kernel with
    the manifest's own bounds); ``error`` says why the module could not be loaded or validated
    (bad manifest, unknown hook name), after which the process exits.  The kernel never imports
    module code to learn this.

    .. versionadded:: ABI 1.1
    """

    manifest: Blob = b""
    error: Text = ""


class HookResult(ModuleMessage, tag="done"):
    """Completion of a lifecycle request (start, stop, save, restore, manifest, storage)."""

    id: U32
    code: U64 = 0
    data: Blob = b""
    names: Names = []
    found: bool = True
    reason: Text = ""


class CallResult(ModuleMessage, tag="ret"):
    """Completion of a :class:`CallRequest`.  ``None`` registers are left unchanged."""

    id: U32
    code: U64 = 0
    rcx: U64 | None = None
    rdx: U64 | None = None
    r8: U64 | None = None
    r9: U64 | None = None
    buffer: Buffer | None = None
    reason: Text = ""


class SysLog(ModuleMessage, tag="s.log"):
    id: U32
    level: Annotated[int, msgspec.Meta(ge=0, le=50)]
    message: Text


class SysRandom(ModuleMessage, tag="s.rand"):
    id: U32
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_RANDOM)]


class SysTime(ModuleMessage, tag="s.time"):
    id: U32


class SysStorageGet(ModuleMessage, tag="s.get"):
    id: U32
    key: Key


class SysStoragePut(ModuleMessage, tag="s.put"):
    id: U32
    key: Key
    value: Blob


class SysStorageDelete(ModuleMessage, tag="s.del"):
    id: U32
    key: Key


class SysStorageList(ModuleMessage, tag="s.list"):
    id: U32
    prefix: Key = ""


class SysReport(ModuleMessage, tag="s.report"):
    id: U32
    report_data: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class SysDerivedKey(ModuleMessage, tag="s.key"):
    id: U32
    context: Annotated[bytes, msgspec.Meta(max_length=256)] = b""
    size: Annotated[int, msgspec.Meta(ge=16, le=64)] = 32


class SysGrantMap(ModuleMessage, tag="s.gmap"):
    id: U32
    grant: U32


class SysGrantWrite(ModuleMessage, tag="s.gwrite"):
    id: U32
    grant: U32
    offset: U32
    data: Buffer


class SysGrantUnmap(ModuleMessage, tag="s.gunmap"):
    id: U32
    grant: U32


class SysDiskRead(ModuleMessage, tag="s.dread"):
    id: U32
    offset: U64
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_BLOB)]


class SysDiskWrite(ModuleMessage, tag="s.dwrite"):
    id: U32
    offset: U64
    data: Blob


class SysDiskFlush(ModuleMessage, tag="s.dflush"):
    id: U32


class SysDiskSize(ModuleMessage, tag="s.dsize"):
    id: U32


class SysService(ModuleMessage, tag="s.svc"):
    """A request to a kernel service registered by name (capability ``svc:<service>``).

    The reply's ``data`` carries the service's answer.

    .. versionadded:: ABI 1.1
    """

    id: U32
    service: Annotated[str, msgspec.Meta(max_length=32)]
    op: Annotated[str, msgspec.Meta(max_length=32)]
    payload: Blob = b""


KERNEL_MESSAGES = (
    Hello,
    Start,
    Stop,
    SaveState,
    RestoreState,
    ManifestRequest,
    StorageRequest,
    CallRequest,
    SyscallReply,
    ErrorFrame,
    Command,
)

SYSCALLS = (
    SysLog,
    SysRandom,
    SysTime,
    SysStorageGet,
    SysStoragePut,
    SysStorageDelete,
    SysStorageList,
    SysReport,
    SysDerivedKey,
    SysGrantMap,
    SysGrantWrite,
    SysGrantUnmap,
    SysDiskRead,
    SysDiskWrite,
    SysDiskFlush,
    SysDiskSize,
    SysService,
)

MODULE_MESSAGES = (HelloAck, HookResult, CallResult, SandboxReport, *SYSCALLS, ManifestReport)

#: Everything the kernel may send (the decoder type on the module side).
KernelUnion = Union[KERNEL_MESSAGES]  # type: ignore[valid-type]
#: Everything a module may send (the decoder type on the kernel side).
ModuleUnion = Union[MODULE_MESSAGES]  # type: ignore[valid-type]

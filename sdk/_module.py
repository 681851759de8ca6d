"""What a module is: its manifest, the request/reply values its hooks see, and ``hookimpl``.

An installed module is an entry point in group ``svsm.modules`` resolving to a
*module object*: any object (a Python module, a class, or an instance) that has
a ``MANIFEST`` attribute (:class:`Manifest`) and functions or methods marked
with :data:`hookimpl` implementing hooks from :mod:`svsm.sdk.hookspecs`.
A class is instantiated once per module process with no arguments.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import pluggy

from ._errors import InvalidAddress, InvalidParameter
from .abi._messages import MAX_BUFFER

if TYPE_CHECKING:
    from ._syscalls import Syscalls

__all__ = [
    "BufferSpec",
    "Capability",
    "CallSpec",
    "Grant",
    "Manifest",
    "Module",
    "ModuleContext",
    "PROJECT_NAME",
    "ProtocolSpec",
    "Reply",
    "Request",
    "VENDOR_PROTOCOL_BASE",
    "hookimpl",
    "load_manifest",
    "MODULE_REPORT_PREFIX",
    "module_report_data",
]

#: pluggy project name: hook markers, entry-point group ``svsm.modules``.
PROJECT_NAME = "svsm"
#: Marks a module's hook implementations (``@hookimpl`` above ``def svsm_handle_request``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: First protocol number pysvsm leaves to vendors (the SVSM spec assigns 0..4; see docs/modules.md).
VENDOR_PROTOCOL_BASE = 0x4000_0000


class Capability(str, enum.Enum):
    """What a module may ask of the kernel.  Policy grants a subset of what the manifest requests."""

    #: :meth:`Syscalls.log` -- write to the kernel log.
    LOG = "log"
    #: :meth:`Syscalls.random`.
    RANDOM = "random"
    #: :meth:`Syscalls.time_ns`.
    TIME = "time"
    #: storage get/put/delete/list in the module's own namespace.
    STORAGE = "storage"
    #: :meth:`Syscalls.attestation_report` with caller report_data.
    ATTEST = "attest"
    #: :meth:`Syscalls.derived_key`.
    DERIVE_KEY = "derive_key"
    #: grant map/write/unmap for requests whose buffers are passed as grants.
    GRANT = "grant"
    #: the host's untrusted block device (the persistence module).
    DISK = "disk"
    #: serve other modules' storage syscalls (hook ``svsm_storage_request``).
    SERVE_STORAGE = "serve_storage"


_NAME = r"^[a-z][a-z0-9_]{0,31}$"
_GUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
Register = Literal["rcx", "rdx", "r8", "r9"]


class BufferSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a call's guest buffer is and how it reaches the module.

    :param gpa_register: register holding the buffer's guest physical address.
    :param size: fixed size in bytes; or ``None`` to read it from ``size_register``.
    :param size_register: register holding the size when ``size`` is ``None``.
    :param max_size: upper bound of a register-given size (the kernel answers INVALID_PARAMETER above it).
    :param writable: the module may change the buffer (copied back / writable grant).
    :param mode: ``"copy"`` -- bytes travel in the request and reply; ``"grant"`` -- a
        window onto exactly those pages, revoked when the request completes.
    """

    gpa_register: Register = "rcx"
    size: Annotated[int, msgspec.Meta(ge=1, le=MAX_BUFFER)] | None = None
    size_register: Register | None = None
    max_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_BUFFER)] = 4096
    writable: bool = False
    mode: Literal["copy", "grant"] = "copy"

    def __post_init__(self) -> None:
        if (self.size is None) == (self.size_register is None):
            raise ValueError("give exactly one of size and size_register")


class CallSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One call number of a protocol, with its guest buffer if it has one."""

    call: U32
    buffer: BufferSpec | None = None


class ProtocolSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A protocol a module serves: number, version range (QUERY_PROTOCOL) and calls."""

    number: U32
    calls: Annotated[list[CallSpec], msgspec.Meta(max_length=256)]
    min_version: U32 = 1
    max_version: U32 = 1

    def __post_init__(self) -> None:
        if self.number < 2:
            raise ValueError("protocols 0 (core) and 1 (attestation) are served by the kernel")
        if not 1 <= self.min_version <= self.max_version:
            raise ValueError("need 1 <= min_version <= max_version")
        numbers = [c.call for c in self.calls]
        if len(set(numbers)) != len(numbers):
            raise ValueError("duplicate call numbers")

    def call_spec(self, call: int) -> CallSpec | None:
        """The declaration of ``call``, or ``None`` if this protocol lacks it."""
        for c in self.calls:
            if c.call == call:
                return c
        return None


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A module's declaration to the kernel; read before its process starts.

    :param name: short identifier (``[a-z][a-z0-9_]*``, <= 32); also its storage namespace.
    :param version: the module's version string.
    :param protocols: SVSM protocols served.
    :param capabilities: capabilities requested (policy may deny some).
    :param service_guid: GUID of its entry in the attestation services manifest
        (bytes from hook ``svsm_service_manifest``), if it has one.
    :param request_timeout: seconds a call may take before the module is declared hung.
    :param checkpoint_every: take ``svsm_save_state`` after every N successful calls,
        restored after a crash (0: never).
    :param services: names of kernel services it calls (:meth:`Syscalls.service`); each is
        requested as capability ``"svc:" + name`` (policy may deny it).  ``versionadded`` 0.2.

    .. versionadded:: 0.1
    """

    name: Annotated[str, msgspec.Meta(pattern=_NAME)]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    protocols: Annotated[list[ProtocolSpec], msgspec.Meta(max_length=16)] = []
    capabilities: Annotated[list[Capability], msgspec.Meta(max_length=16)] = []
    service_guid: Annotated[str, msgspec.Meta(pattern=_GUID)] | None = None
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 5.0
    checkpoint_every: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    description: Annotated[str, msgspec.Meta(max_length=256)] = ""
    #: kernel services the module calls through :meth:`Syscalls.service` (capability ``svc:<name>`` each).
    services: Annotated[list[Annotated[str, msgspec.Meta(pattern=_NAME)]], msgspec.Meta(max_length=16)] = []

    def protocol(self, number: int) -> ProtocolSpec | None:
        """The declaration of protocol ``number``, or ``None``."""
        for p in self.protocols:
            if p.number == number:
                return p
        return None


def load_manifest(obj: Any) -> Manifest:
    """Return the validated :class:`Manifest` of module object ``obj``.

    Accepts a :class:`Manifest` or a mapping with the same fields (decoded strictly).

    :raises InvalidFormat: missing or invalid manifest.
    """
    from ._errors import InvalidFormat

    raw = getattr(obj, "MANIFEST", None)
    if isinstance(raw, Manifest):
        # Re-validate: a Struct built in Python skips constraint checks.
        raw = msgspec.to_builtins(raw)
    if not isinstance(raw, dict):
        raise InvalidFormat(f"{obj!r} has no MANIFEST")
    try:
        return msgspec.convert(raw, Manifest, strict=True)
    except (msgspec.ValidationError, ValueError) as exc:
        raise InvalidFormat(f"invalid manifest: {exc}") from None


#: Domain-separation prefix of module attestation reports (:func:`module_report_data`).
MODULE_REPORT_PREFIX = b"pysvsm module report v1\0"


def module_report_data(module: str, measurement: bytes, report_data: bytes) -> bytes:
    """The REPORT_DATA of a VMPL0 report made for module ``module`` with ``report_data``.

    SHA-512(``MODULE_REPORT_PREFIX`` || name || NUL || code measurement || the module's 64 bytes):
    what a verifier of a module's report (e.g. the persistence anchor) recomputes, and what can never
    equal a binding the SVSM itself signs (ATTEST_SERVICES uses SHA-512(nonce || manifest)).

    .. versionadded:: 0.2
    """
    return hashlib.sha512(MODULE_REPORT_PREFIX + module.encode() + b"\0" + bytes(measurement) + bytes(report_data)).digest()


# ------------------------------------------------------------------ request values


class Grant:
    """A window onto the guest pages of the current request (hazardous: raw guest bytes).

    Revoked by the kernel when the request completes: keep no reference.
    """

    __slots__ = ("id", "gpa", "size", "writable", "_sys")

    def __init__(self, id: int, gpa: int, size: int, writable: bool, syscalls: Syscalls) -> None:
        self.id, self.gpa, self.size, self.writable, self._sys = id, gpa, size, writable, syscalls

    def read(self) -> bytes:
        """The window's current contents (``grant_map``)."""
        return self._sys.grant_map(self.id)

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` into the window.

        :raises InvalidAddress: outside the window (the kernel checks too).
        :raises InvalidParameter: the grant is read-only.
        """
        if not self.writable:
            raise InvalidParameter("read-only grant")
        if offset < 0 or offset + len(data) > self.size:
            raise InvalidAddress("write outside the grant window")
        self._sys.grant_write(self.id, offset, data)

    def unmap(self) -> None:
        """Give the grant back early."""
        self._sys.grant_unmap(self.id)

    def __repr__(self) -> str:
        return f"Grant(id={self.id}, gpa={self.gpa:#x}, size={self.size}, writable={self.writable})"


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One guest call as a module's ``svsm_handle_request`` sees it (checked by the kernel).

    :param protocol: protocol number (RAX[63:32]).
    :param call: call number (RAX[31:0]).
    :param rcx,rdx,r8,r9: input registers.
    :param buffer: the call's guest buffer copied in (``mode="copy"``), else ``None``.
    :param grant: the call's grant (``mode="grant"``), else ``None``.
    """

    protocol: int
    call: int
    rcx: int = 0
    rdx: int = 0
    r8: int = 0
    r9: int = 0
    buffer: bytes | None = None
    grant: Grant | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """Output of a successful call: registers to set (``None`` = unchanged) and the buffer to copy back."""

    rcx: int | None = None
    rdx: int | None = None
    r8: int | None = None
    r9: int | None = None
    buffer: bytes | None = None


@dataclasses.dataclass(frozen=True)
class ModuleContext:
    """Passed to every hook: the syscall client, the module's manifest and a logger that goes to the kernel log."""

    syscalls: Syscalls
    manifest: Manifest
    capabilities: frozenset[str]
    log: logging.Logger
    #: SHA-384 of the module's code as the kernel measured it (``b""`` from a kernel before ABI 1.2).
    #: ``versionadded`` 0.2.
    measurement: bytes = b""


class Module:
    """Optional base class for a module object: subclass it, set ``MANIFEST``, mark hooks with :data:`hookimpl`.

    ``self.ctx`` is set before ``svsm_module_start`` runs.
    """

    MANIFEST: Manifest
    ctx: ModuleContext

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        manifest = getattr(cls, "MANIFEST", None)
        if manifest is not None and not re.match(_NAME, getattr(manifest, "name", "") or ""):
            raise ValueError(f"{cls.__name__}.MANIFEST.name is not a valid module name")

"""Hook specifications for ring-3 service modules (project name ``svsm``).

Every hook here runs **in the module's process**, called by the SDK's module
runtime when the kernel asks over the ABI channel; arguments are passed by
keyword, so an implementation may accept any subset of them (pluggy's opt-in
arguments).  Hooks change only by gaining arguments; an incompatible change is a
new hook and the old one gets ``warn_on_impl`` for one release.

Use in third-party modules::

    from svsm.sdk import hookimpl, Reply

    @hookimpl
    def svsm_handle_request(request, ctx):
        return Reply(rcx=request.rcx + 1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._module import ModuleContext, Reply, Request

__all__ = ["hookspec"]

#: The spec marker; module authors use :data:`svsm.sdk.hookimpl`.
hookspec = pluggy.HookspecMarker("svsm")


# -------------------------------------------------------------------------------------------------
# Lifecycle hooks
# -------------------------------------------------------------------------------------------------


@hookspec
def svsm_module_start(ctx: ModuleContext) -> None:
    """Called once in the module process after the handshake, before any request.

    The sandbox is already in force.  Open state, read storage, create keys here.
    If a checkpoint exists after a restart, ``svsm_restore_state`` runs right after.

    :param ctx: the module's context (``ctx.syscalls``, ``ctx.manifest``, ``ctx.log``).
    :returns: nothing.  Raising (any exception) fails the start: the supervisor
        counts it as a crash and restarts with backoff.

    .. versionadded:: 0.1

    Use in third-party modules: initialise state; keep it short (start time is measured).
    """


@hookspec
def svsm_module_stop(ctx: ModuleContext) -> None:
    """Called once, in the module process, when the kernel stops the module (shutdown, migration end).

    No request runs during or after it; the process exits after the reply.

    :param ctx: the module's context.
    :returns: nothing; exceptions are logged by the kernel and the process still exits.

    .. versionadded:: 0.1

    Use in third-party modules: flush what must survive to storage.
    """


# -------------------------------------------------------------------------------------------------
# Request hooks
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def svsm_handle_request(request: Request, ctx: ModuleContext) -> Reply | None:
    """Serve one guest SVSM call routed to this module; runs in the module process.

    Called only for a protocol and call the manifest declares (the kernel answers
    UNSUPPORTED_CALL for others), one at a time, under a deadline
    (``Manifest.request_timeout``): a module that misses it is killed and restarted.

    :param request: the frozen :class:`~svsm.sdk.Request` (registers, copied buffer or grant).
    :param ctx: the module's context.
    :returns: a :class:`~svsm.sdk.Reply` with the output registers (``None`` fields
        unchanged) and, for writable copy buffers, the bytes to copy back; or ``None``
        for success without output.  Raise a :class:`~svsm.sdk.RequestError` leaf
        to answer with its result code.  Stops at the first non-None result.

    .. versionadded:: 0.1

    Use in third-party modules: the one hook every serving module implements.
    """


# -------------------------------------------------------------------------------------------------
# State hooks (restart and migration)
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def svsm_save_state(ctx: ModuleContext) -> bytes | None:
    """Return the module's state as bytes (<= 768 KiB), for migration or a crash checkpoint (module process).

    Called between requests: by migration, and every ``Manifest.checkpoint_every``
    successful calls.  Stops at the first non-None result.

    :param ctx: the module's context.
    :returns: opaque state bytes, or ``None`` if the module keeps no state.

    .. versionadded:: 0.1

    Use in third-party modules: version your format; it may be restored by a newer release.
    """


@hookspec
def svsm_restore_state(state: bytes, ctx: ModuleContext) -> None:
    """Replace the module's state with ``state`` from an earlier ``svsm_save_state`` (module process).

    Called after ``svsm_module_start`` of a restarted module (last checkpoint) or
    on the migration destination.

    :param state: bytes that ``svsm_save_state`` returned (possibly from another machine).
    :param ctx: the module's context.
    :returns: nothing; raise :class:`~svsm.sdk.InvalidFormat` if the state is unusable.

    .. versionadded:: 0.1

    Use in third-party modules: validate before replacing live state.
    """


# -------------------------------------------------------------------------------------------------
# Attestation hooks
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def svsm_service_manifest(ctx: ModuleContext) -> bytes | None:
    """Return this module's service manifest for the attestation services manifest (module process).

    Called when the guest asks for an attestation that covers the module's
    ``Manifest.service_guid`` (e.g. the vTPM returns its EK TPMT_PUBLIC).

    :param ctx: the module's context.
    :returns: the manifest bytes, or ``None`` for none.  Stops at the first non-None result.

    .. versionadded:: 0.1

    Use in third-party modules: return stable bytes a verifier can check.
    """


# -------------------------------------------------------------------------------------------------
# Kernel-invoked commands
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def svsm_module_command(name: str, payload: bytes, ctx: ModuleContext) -> bytes | None:
    """Run a named operation the kernel asks for outside guest calls, in the module process.

    Kernel code calls ``ModuleHost.command(module, name, payload, timeout=None)`` (e.g. the
    migration engine: ``command("migrate", "source", params)``).  Runs between guest calls to
    this module (which answer BUSY meanwhile), with no deadline unless the kernel gave one;
    syscalls (e.g. :meth:`~svsm.sdk.Syscalls.service`) are served while it runs.

    :param name: the operation (<= 64 characters).
    :param payload: its argument bytes (<= 768 KiB), format chosen by the module.
    :param ctx: the module's context.
    :returns: the reply bytes (<= 768 KiB), or ``None`` if this module has no such command
        (the kernel raises ``UnsupportedCall``).  Raise a :class:`~svsm.sdk.RequestError`
        leaf to fail with its code.  Stops at the first non-None result.

    .. versionadded:: 0.2

    Use in third-party modules: long-running jobs driven by the kernel (migration).
    """


# -------------------------------------------------------------------------------------------------
# Storage provider hooks (capability ``serve_storage``)
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def svsm_storage_request(
    op: str, namespace: str, key: str, value: bytes, ctx: ModuleContext
) -> bytes | list[str] | bool | None:
    """Serve another module's storage syscall, in the process of a module granted ``serve_storage``.

    The kernel routes every other module's storage syscalls here once this module
    is serving; namespaces keep modules apart and are chosen by the kernel.

    :param op: ``"get"``, ``"put"``, ``"delete"`` or ``"list"``.
    :param namespace: the calling module's name.
    :param key: the key (for ``list``: the prefix).
    :param value: the value for ``put``, else ``b""``.
    :param ctx: the module's context.
    :returns: ``get``: the value or ``None`` if absent; ``put``: ``None``;
        ``delete``: whether it existed; ``list``: sorted keys.  Stops at the first non-None result.

    .. versionadded:: 0.1

    Use in third-party modules: only the persistence module implements it.
    """

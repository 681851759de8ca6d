"""The package as a module object: the ``svsm.modules`` entry point names ``svsm.modules.persist``.

Discovery reads ``MANIFEST`` and the hook functions from the package itself; they delegate to one
:class:`PersistModule` per module process (no anchor: the sandbox has no anchor relay yet).
"""

from __future__ import annotations

from svsm.sdk import ModuleContext, hookimpl

from ._module import PersistModule

__all__ = ["MANIFEST", "svsm_module_start", "svsm_module_stop", "svsm_storage_request"]

MANIFEST = PersistModule.MANIFEST
_MODULE = PersistModule()


@hookimpl
def svsm_module_start(ctx: ModuleContext) -> None:
    """See :meth:`PersistModule.svsm_module_start`."""
    _MODULE.svsm_module_start(ctx)


@hookimpl
def svsm_module_stop(ctx: ModuleContext) -> None:
    """See :meth:`PersistModule.svsm_module_stop`."""
    _MODULE.svsm_module_stop(ctx)


@hookimpl
def svsm_storage_request(op: str, namespace: str, key: str, value: bytes, ctx: ModuleContext):
    """See :meth:`PersistModule.svsm_storage_request`."""
    return _MODULE.svsm_storage_request(op=op, namespace=namespace, key=key, value=value, ctx=ctx)

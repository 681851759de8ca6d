"""Finding, checking and measuring modules (pluggy entry points, project ``svsm``).

Discovery reads the ``svsm.modules`` entry-point group through
``PluginManager.load_setuptools_entrypoints``, skips blocked names, validates every
hookimpl against :mod:`svsm.sdk.hookspecs` and calls ``check_pending()``, so a
misspelt hook fails at boot.  Each module's code is measured (SHA-384 over its files)
so the attestation services manifest names exactly what runs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import pathlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import pluggy

from svsm.sdk import InvalidFormat, Manifest, load_manifest
from svsm.sdk._runtime import make_plugin_manager

from ._policy import Policy, blocked_from_env

__all__ = ["ENTRY_POINT_GROUP", "ModuleRef", "ModuleSpec", "discover", "measure_files", "measure_object", "spec_for"]

log = logging.getLogger("svsm.kernel.ipc.discovery")

#: Entry-point group a module package registers under.
ENTRY_POINT_GROUP = "svsm.modules"


class ModuleRef(msgspec.Struct, frozen=True):
    """How a module process finds its module object without the kernel's memory.

    ``kind="import"``: ``target`` is ``"package.module"`` and ``attr`` a dotted attribute
    path inside it (empty: the module itself).  ``kind="file"``: ``target`` is a source
    file path (a module defined in a test file).
    """

    kind: Literal["import", "file"]
    target: str
    attr: str = ""

    def resolve(self) -> Any:
        """Import and return the module object (runs module code: call inside the sandbox)."""
        if self.kind == "import":
            obj: Any = importlib.import_module(self.target)
        else:
            name = "svsm_module_" + hashlib.sha256(self.target.encode()).hexdigest()[:16]
            spec = importlib.util.spec_from_file_location(name, self.target)
            if spec is None or spec.loader is None:
                raise InvalidFormat(f"cannot load {self.target}")
            obj = importlib.util.module_from_spec(spec)
            sys.modules[name] = obj
            spec.loader.exec_module(obj)
        for part in filter(None, self.attr.split(".")):
            obj = getattr(obj, part)
        return obj


@dataclass(frozen=True)
class ModuleSpec:
    """A discovered, validated module: what the supervisor needs to start it.

    :param obj: the module object loaded in the kernel (read for the manifest and hook check).
    :param ref: how the sandboxed process loads it again.
    :param measurement: SHA-384 over its code files.
    :param source: where it came from (entry point or file).
    """

    manifest: Manifest
    obj: Any
    ref: ModuleRef
    measurement: bytes
    source: str
    #: files and directories the module process must be able to read (its code and parent packages).
    code_paths: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The module's name."""
        return self.manifest.name


def _code_files(obj: Any) -> list[pathlib.Path]:
    mod = obj if inspect.ismodule(obj) else sys.modules.get(getattr(obj, "__module__", "") or "")
    if mod is None:
        mod = inspect.getmodule(obj)
    path = getattr(mod, "__file__", None)
    if path is None:
        raise InvalidFormat(f"cannot locate the code of {obj!r}")
    p = pathlib.Path(path).resolve()
    if p.name == "__init__.py":
        root = p.parent
        return sorted(f for f in root.rglob("*") if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc")
    return [p]


def measure_files(files: Iterable[pathlib.Path], root: pathlib.Path | None = None) -> bytes:
    """SHA-384 over (relative path, SHA-384 of content) of each file, in sorted order."""
    files = sorted(files)
    base = root if root is not None else (files[0].parent if files else pathlib.Path("."))
    h = hashlib.sha384(b"pysvsm module measurement v1\0")
    for f in files:
        rel = f.relative_to(base).as_posix() if f.is_relative_to(base) else f.name
        h.update(rel.encode() + b"\0" + hashlib.sha384(f.read_bytes()).digest())
    return h.digest()


def measure_object(obj: Any) -> bytes:
    """The measurement of a module object's code (its package directory, or its one file)."""
    files = _code_files(obj)
    return measure_files(files, files[0].parent if len(files) == 1 else _code_files(obj)[0].parent)


def _importable_by_name(modname: str) -> bool:
    """True if a fresh interpreter (cwd elsewhere) would import ``modname`` from the same file."""
    top = modname.split(".")[0]
    top_mod = sys.modules.get(top)
    if top_mod is None or modname == "__main__":
        return False
    cwd = os.getcwd()
    paths = [p for p in sys.path if p and os.path.isabs(p) and p != cwd]
    try:
        found = importlib.machinery.PathFinder.find_spec(top, paths)
    except (ImportError, ValueError):
        return False
    if found is None:
        # editable installs resolve through meta-path finders (e.g. setuptools' mapping)
        for finder in sys.meta_path:
            if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
                continue
            try:
                found = finder.find_spec(top, None)
            except (ImportError, ValueError, TypeError):
                continue
            if found is not None:
                break
    if found is None:
        return False
    if found.origin is not None and found.origin == getattr(top_mod, "__file__", None):
        return True
    return list(found.submodule_search_locations or []) == list(getattr(top_mod, "__path__", []) or [None])


def _ref_for(obj: Any) -> ModuleRef:
    if inspect.ismodule(obj):
        return ModuleRef("import", obj.__name__)
    modname = getattr(obj, "__module__", None) or type(obj).__module__
    qual = getattr(obj, "__qualname__", None)
    if qual is None:
        raise InvalidFormat(f"{obj!r}: instances must be reachable by name; register the class")
    mod = sys.modules.get(modname)
    if mod is not None and _importable_by_name(modname):
        return ModuleRef("import", modname, qual)
    src = getattr(mod, "__file__", None) if mod is not None else None
    if src is None:
        raise InvalidFormat(f"cannot find the source file of {obj!r}")
    return ModuleRef("file", str(pathlib.Path(src).resolve()), qual)


def spec_for(obj: Any, *, source: str = "") -> ModuleSpec:
    """Validate a module object (manifest, hook names) and measure it.

    :raises InvalidFormat: bad manifest, unknown hook, or code that cannot be located.
    """
    manifest = load_manifest(obj)
    pm = make_plugin_manager()
    try:
        pm.register(obj, name=manifest.name)
        pm.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise InvalidFormat(f"module {manifest.name}: {exc}") from None
    ref = _ref_for(obj)
    return ModuleSpec(manifest, obj, ref, measure_object(obj), source or f"{ref.kind}:{ref.target}", _code_paths(obj, ref))


def _code_paths(obj: Any, ref: ModuleRef) -> tuple[str, ...]:
    files = _code_files(obj)
    paths = {str(files[0].parent) if len(files) > 1 or files[0].name == "__init__.py" else str(files[0])}
    if ref.kind == "file":
        paths.add(str(pathlib.Path(ref.target).parent))
    else:
        parts = ref.target.split(".")
        for i in range(1, len(parts)):
            parent = sys.modules.get(".".join(parts[:i]))
            f = getattr(parent, "__file__", None)
            if f:
                paths.add(f)
    return tuple(sorted(paths))


def discover(
    *,
    policy: Policy | None = None,
    blocked: Iterable[str] = (),
    group: str = ENTRY_POINT_GROUP,
) -> tuple[list[ModuleSpec], dict[str, str]]:
    """Load every installed module.

    :param policy: denied modules are skipped.
    :param blocked: names to skip, in addition to ``$SVSM_BLOCK_MODULES``.
    :returns: (valid modules sorted by name, {name: reason} of those skipped or rejected).
    """
    policy = policy or Policy()
    block = set(blocked) | set(blocked_from_env())
    pm = make_plugin_manager()
    for name in block:
        pm.set_blocked(name)
    skipped: dict[str, str] = {name: "blocked" for name in block}
    try:
        pm.load_setuptools_entrypoints(group)
    except Exception as exc:  # one broken package must not stop the boot
        log.error("loading %s entry points failed: %s", group, exc)
        skipped["<entry points>"] = f"load failed: {type(exc).__name__}: {exc}"
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        skipped[getattr(exc, "plugin_name", None) or "<unknown>"] = f"unknown hook: {exc}"
    found: list[ModuleSpec] = []
    for ep_name, obj in pm.list_name_plugin():
        if obj is None:
            continue
        try:
            spec = spec_for(obj, source=f"entry point {ep_name}")
        except InvalidFormat as exc:
            skipped[ep_name] = str(exc)
            continue
        if not policy.allows(spec.name):
            skipped[spec.name] = "denied by policy"
            continue
        found.append(spec)
    return sorted(found, key=lambda s: s.name), skipped

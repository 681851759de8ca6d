"""Finding, checking and measuring modules (entry points ``svsm.modules``, project ``svsm``).

Discovery reads the ``svsm.modules`` entry-point metadata, skips blocked names, locates
and measures each module's files (SHA-384, so the attestation services manifest names
exactly what runs) **without importing them**: a module's import-time code runs only in
its sandboxed process, which validates the manifest and every hookimpl against
:mod:`svsm.sdk.hookspecs` (``check_pending()``, so a misspelt hook fails at boot) and
reports the manifest to the kernel.  Only in-process mode (tests) imports modules here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from svsm.sdk import InvalidFormat, Manifest
from svsm.sdk._runtime import validate_module

from ._policy import Policy, blocked_from_env
from ._ref import ModuleRef

__all__ = [
    "ENTRY_POINT_GROUP",
    "EntryPointModule",
    "ModuleRef",
    "ModuleSpec",
    "discover",
    "inspect_entry_point",
    "locate",
    "measure_files",
    "measure_object",
    "spec_for",
]

log = logging.getLogger("svsm.kernel.ipc.discovery")

#: Entry-point group a module package registers under.
ENTRY_POINT_GROUP = "svsm.modules"


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
    manifest = validate_module(obj)
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


def _find_spec(fullname: str, path: list[str] | None) -> Any:
    """Locate ``fullname`` through the import system's finders without importing anything."""
    if path is None:  # a top-level name: the interpreter's path, minus the cwd (a module process has another cwd)
        cwd = os.getcwd()
        # keep absolute directories and path-hook entries (editable installs), drop relative directories
        paths = [p for p in sys.path if p and (p != cwd if os.path.isabs(p) else not os.path.exists(p))]
        found = importlib.machinery.PathFinder.find_spec(fullname, paths)
        if found is not None:
            return found
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
            continue
        try:
            found = finder.find_spec(fullname, path)
        except (ImportError, ValueError, TypeError):
            continue
        if found is not None:
            return found
    return importlib.machinery.PathFinder.find_spec(fullname, path) if path is not None else None


def locate(modname: str) -> tuple[pathlib.Path, bool, list[str]]:
    """Where module ``modname`` lives, found without running any of its code (or its parents').

    :returns: (its file, whether it is a package, the ``__init__.py`` files of its parent packages).
    :raises InvalidFormat: it cannot be found, or it is a namespace package (no code file).
    """
    parts = modname.split(".")
    if not all(p.isidentifier() for p in parts):
        raise InvalidFormat(f"bad module name {modname!r}")
    spec = _find_spec(parts[0], None)
    parents: list[str] = []
    for i in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            break
        if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
            parents.append(str(pathlib.Path(spec.origin).resolve()))
        spec = _find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        raise InvalidFormat(f"cannot locate the code of module {modname!r}")
    return pathlib.Path(spec.origin).resolve(), spec.submodule_search_locations is not None, parents


class EntryPointModule(msgspec.Struct, frozen=True):
    """An installed module as the kernel knows it before its code runs: where it is and what it measures."""

    ep_name: str
    ref: ModuleRef
    measurement: bytes
    code_paths: tuple[str, ...]
    source: str


def inspect_entry_point(ep_name: str, value: str) -> EntryPointModule:
    """Measure and locate entry point ``ep_name = value`` (``"pkg.mod"`` or ``"pkg.mod:attr"``) without importing it.

    :raises InvalidFormat: a malformed value or code that cannot be located.
    """
    modname, _, attr = value.partition(":")
    modname, attr = modname.strip(), attr.strip()
    if attr and not all(a.isidentifier() for a in attr.split(".")):
        raise InvalidFormat(f"bad entry point {ep_name} = {value!r}")
    origin, is_pkg, parents = locate(modname)
    if is_pkg:
        files = sorted(f for f in origin.parent.rglob("*") if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc")
        paths = {str(origin.parent)}
    else:
        files, paths = [origin], {str(origin)}
    paths.update(parents)
    return EntryPointModule(
        ep_name,
        ModuleRef("import", modname, attr),
        measure_files(files, files[0].parent),
        tuple(sorted(paths)),
        f"entry point {ep_name}",
    )


def _probe_in_kernel(epm: EntryPointModule) -> tuple[Manifest, Any]:
    """In-process mode only: import the module here (its code runs unsandboxed, like its hooks will)."""
    obj = epm.ref.resolve()
    return validate_module(obj), obj


def _claims_builtin_namespace(ep: Any) -> bool:
    target = str(ep.value).partition(":")[0].strip()
    return target == "svsm.modules" or target.startswith("svsm.modules.")


def _from_pysvsm(ep: Any) -> bool:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) or ""
    return name.lower().replace("_", "-") == "pysvsm"


def discover(
    *,
    policy: Policy | None = None,
    blocked: Iterable[str] = (),
    group: str = ENTRY_POINT_GROUP,
    probe: Callable[[list[EntryPointModule]], list[Manifest | InvalidFormat]] | None = None,
) -> tuple[list[ModuleSpec], dict[str, str]]:
    """Find every installed module (entry-point group ``svsm.modules``) and learn its manifest.

    The kernel reads only the entry points' metadata and measures their files; the module's
    code runs inside ``probe`` (the host spawns a sandboxed process per module, which validates
    the manifest and the hook names).  Without ``probe`` (in-process mode) modules are imported
    in this process.

    :param policy: denied modules are skipped.
    :param blocked: entry-point names to skip, in addition to ``$SVSM_BLOCK_MODULES``.
    :param probe: maps entry-point modules to their manifest or the :class:`InvalidFormat` that rejects them.
    :returns: (valid modules sorted by name, {name: reason} of those skipped or rejected).
    """
    policy = policy or Policy()
    block = set(blocked) | set(blocked_from_env())
    skipped: dict[str, str] = {name: "blocked" for name in block}
    candidates: list[EntryPointModule] = []
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name in block or ep.name in seen:
            continue
        seen.add(ep.name)
        if _claims_builtin_namespace(ep) and not _from_pysvsm(ep):
            # svsm.modules.* is what the kernel trusts with privileged capabilities (_host._builtin):
            # only pysvsm's own distribution may provide modules there.
            skipped[ep.name] = "its code claims the built-in svsm.modules namespace but does not come from pysvsm"
            continue
        try:
            candidates.append(inspect_entry_point(ep.name, ep.value))
        except InvalidFormat as exc:
            skipped[ep.name] = str(exc)
    objs: list[Any] = [None] * len(candidates)
    if probe is not None:
        results = probe(candidates)
    else:
        results = []
        for i, epm in enumerate(candidates):
            try:
                manifest, objs[i] = _probe_in_kernel(epm)
                results.append(manifest)
            except InvalidFormat as exc:
                results.append(exc)
            except Exception as exc:  # one broken package must not stop the boot
                log.error("loading module %s failed: %s", epm.ep_name, exc)
                results.append(InvalidFormat(f"load failed: {type(exc).__name__}: {exc}"))
    found: list[ModuleSpec] = []
    for epm, obj, res in zip(candidates, objs, results):
        if isinstance(res, InvalidFormat):
            skipped[epm.ep_name] = str(res)
            continue
        if not policy.allows(res.name):
            skipped[res.name] = "denied by policy"
            continue
        found.append(ModuleSpec(res, obj, epm.ref, epm.measurement, epm.source, epm.code_paths))
    return sorted(found, key=lambda s: s.name), skipped

"""How a module process finds its module object (small: imported by every module process)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from typing import Any, Literal

import msgspec

from svsm.sdk import InvalidFormat

__all__ = ["ModuleRef"]


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

"""Skip-or-fail helpers for tests that need an external tool."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

__all__ = ["strict", "require_tool", "require_module", "require_root"]


def strict() -> bool:
    """True under ``SVSM_STRICT=1``: a missing tool is a failure, never a skip (CI sets it)."""
    return os.environ.get("SVSM_STRICT") == "1"


def _missing(reason: str) -> None:
    if strict():
        pytest.fail(f"SVSM_STRICT=1 and {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, hint: str = "") -> str:
    """Return the path of executable ``name``, or skip (fail under SVSM_STRICT) if absent.

    :param name: program name looked up on ``PATH`` (``/usr/sbin`` and ``/sbin`` are searched too).
    :param hint: how to get it, shown in the skip reason (e.g. ``apt-get install tpm2-tools``).
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        _missing(f"external tool {name!r} is not installed{': ' + hint if hint else ''}")
    return path  # type: ignore[return-value]


def require_module(name: str, hint: str = "") -> ModuleType:
    """Import Python module ``name`` or skip (fail under SVSM_STRICT)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing(f"Python module {name!r} unavailable ({exc}){': ' + hint if hint else ''}")
        raise  # unreachable: _missing raised


def require_root(reason: str = "") -> None:
    """Skip (fail under SVSM_STRICT) unless running as root."""
    if os.geteuid() != 0:
        _missing(f"needs root{': ' + reason if reason else ''}")

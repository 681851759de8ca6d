"""Landlock filesystem confinement through raw syscalls (hazardous: process-wide, irreversible).

A module process may read the Python installation and its own code, read and write
its private directory, and nothing else.  Landlock needs no privilege (only
no-new-privs); if the running kernel lacks it, :func:`restrict` raises and the
protection is reported as not in force.  (PyPI's ``landlock`` is a 1.0 dev
pre-release; four syscalls do not justify the dependency.)
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

__all__ = ["LandlockUnavailable", "abi_version", "restrict"]

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # x86_64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# LANDLOCK_ACCESS_FS_* bits (include/uapi/linux/landlock.h)
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE = 1 << 13, 1 << 14

_ABI1 = (1 << 13) - 1
_READ = EXECUTE | READ_FILE | READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


assert ctypes.sizeof(_PathBeneath) == 12


class LandlockUnavailable(OSError):
    """The kernel has no Landlock (or refused the ruleset)."""


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi_version() -> int:
    """Landlock ABI version of the running kernel, 0 if absent."""
    r = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, int(r))


def restrict(read_only: Iterable[str], read_write: Iterable[str], list_only: Iterable[str] = ()) -> int:
    """Confine the calling process (and future threads) to the given trees.

    ``list_only`` directories may be listed (import machinery) but their files not read.

    :returns: the Landlock ABI version used.
    :raises LandlockUnavailable: no Landlock, or a syscall failed.
    """
    abi = abi_version()
    if abi < 1:
        raise LandlockUnavailable("landlock not supported by this kernel")
    handled = _ABI1 | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(handled)
    fd = _libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if fd < 0:
        raise LandlockUnavailable(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for paths, access in ((read_only, _READ), (read_write, handled), (list_only, READ_DIR)):
            for path in paths:
                try:
                    pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    is_dir = os.path.isdir(path)
                    rule = _PathBeneath(access if is_dir else access & (EXECUTE | READ_FILE | WRITE_FILE | TRUNCATE), pfd)
                    r = _libc.syscall(_SYS_ADD_RULE, fd, ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0))
                    if r < 0:
                        raise LandlockUnavailable(f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
                finally:
                    os.close(pfd)
        if _libc.syscall(_SYS_RESTRICT_SELF, fd, ctypes.c_uint32(0)) < 0:
            raise LandlockUnavailable(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
    return abi

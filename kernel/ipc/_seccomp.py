"""A thin ctypes layer over Debian's libseccomp.so.2 (hazardous: process-wide and irreversible).

Why our own ctypes layer: libseccomp's official Python binding is not published on
PyPI, and the PyPI ctypes wrapper ``pyseccomp`` (0.1.2) has had no release since
2021; libseccomp2 is already a Debian package and we need six functions.  The filter returns errors instead of killing, so a
hostile module sees ``EPERM`` and the kernel reports a contained attempt.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os

__all__ = ["DENIED_SYSCALLS", "SeccompUnavailable", "available", "install_filter"]

log = logging.getLogger("svsm.kernel.ipc.seccomp")

SCMP_ACT_ALLOW = 0x7FFF0000


def SCMP_ACT_ERRNO(e: int) -> int:
    """Action: fail the syscall with errno ``e``."""
    return 0x00050000 | (e & 0xFFFF)


SCMP_CMP_NE = 1
SCMP_CMP_MASKED_EQ = 7
CLONE_THREAD = 0x00010000

#: Denied outright with EPERM: tracing and cross-process memory, new sockets, exec, fork.
DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "socket",
    "socketpair",
    "execve",
    "execveat",
    "fork",
    "vfork",
    "kexec_load",
    "init_module",
    "finit_module",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "mount",
    "setns",
    "unshare",
    "tkill",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
)

#: Signals may only be sent to the module's own process (arg 0 must be its pid).
SELF_ONLY_SIGNALS = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class SeccompUnavailable(OSError):
    """libseccomp is missing or refused the filter."""


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp not loadable: {exc}") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def available() -> bool:
    """True if libseccomp can be loaded."""
    try:
        _lib()
    except SeccompUnavailable:
        return False
    return True


SCMP_FLTATR_CTL_SSB = 7


def install_filter(*, speculation_mitigations: bool = True) -> list[str]:
    """Install the module filter on the calling process (all its threads: TSYNC not needed, call before threads).

    Denies :data:`DENIED_SYSCALLS` with EPERM, signals to any other process, ``clone`` without ``CLONE_THREAD`` (a new
    process) with EPERM, and ``clone3`` with ENOSYS so libc falls back to ``clone``.

    :param speculation_mitigations: keep the kernel's default of turning on speculative-execution
        mitigations (SSBD, conditional IBPB) for a filtered task.  ``False`` sets
        ``SECCOMP_FILTER_FLAG_SPEC_ALLOW``: measured ~2x faster calls (context switches stop
        paying IBPB), at the price of cross-process Spectre hardening for the module.
    :returns: the denied syscall names.
    :raises SeccompUnavailable: libseccomp missing or the kernel refused.
    """
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        if not speculation_mitigations and lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_SSB, 1) < 0:
            raise SeccompUnavailable("SCMP_FLTATR_CTL_SSB not supported")
        denied = []
        for name in DENIED_SYSCALLS:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not on this architecture
            rc = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.EPERM), nr, 0, None)
            if rc < 0:
                raise SeccompUnavailable(f"rule for {name}: {rc}")
            denied.append(name)
        me = os.getpid()
        for name in SELF_ONLY_SIGNALS:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue
            ne = (_ArgCmp * 1)(_ArgCmp(0, SCMP_CMP_NE, me, 0))
            if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.EPERM), nr, 1, ne) < 0:
                raise SeccompUnavailable(f"rule for {name}")
            denied.append(f"{name}(other process)")
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        cmp = (_ArgCmp * 1)(_ArgCmp(0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0))
        rc = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.EPERM), clone, 1, cmp)
        if rc < 0:
            raise SeccompUnavailable(f"rule for clone: {rc}")
        denied.append("clone(!CLONE_THREAD)")
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            rc = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.ENOSYS), clone3, 0, None)
            if rc < 0:
                raise SeccompUnavailable(f"rule for clone3: {rc}")
            denied.append("clone3")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise SeccompUnavailable(f"seccomp_load: {rc}")
        return denied
    finally:
        lib.seccomp_release(ctx)

"""The confinement applied inside a module process before any module code runs.

Order matters: close fds and clear the environment, enter the private directory,
set resource limits, set no-new-privs, confine the filesystem (Landlock), drop to
the module's unprivileged uid (when root), and install the seccomp filter last.
:func:`apply` returns the protections actually in force; each step that cannot be
applied is left out of that list, never silently claimed.
"""

from __future__ import annotations

import ctypes
import io
import logging
import os
import resource
import signal
import sys
from typing import Annotated

import msgspec

from . import _landlock, _seccomp

__all__ = ["SandboxConfig", "apply", "drop_capabilities", "make_kernel_undumpable", "others_can_read", "prctl"]

log = logging.getLogger("svsm.kernel.ipc.sandbox")

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxConfig(msgspec.Struct, frozen=True):
    """What the kernel asks the module process to apply (plain data: crosses the spawn).

    :param private_dir: the module's working directory (read-write).
    :param uid: unprivileged uid/gid to switch to when started as root (``None``: no switch).
    :param read_only: trees the module may read (Python installation, its code).
    """

    private_dir: str
    uid: int | None = None
    address_space: Annotated[int, msgspec.Meta(ge=64 << 20)] = 1 << 30
    cpu_seconds: int = 600
    open_files: int = 64
    processes: int = 32
    file_size: int = 64 << 20
    read_only: list[str] = []
    list_only: list[str] = []
    landlock: bool = True
    seccomp: bool = True
    #: keep the kernel's speculation mitigations for the filtered module (see _seccomp.install_filter).
    speculation_mitigations: bool = True


def prctl(option: int, arg: int = 0) -> int:
    """Call prctl(2).  :raises OSError: it failed."""
    r = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def make_kernel_undumpable() -> bool:
    """PR_SET_DUMPABLE 0 on the kernel process: no core dumps, /proc/<pid>/mem closed to other uids."""
    try:
        prctl(PR_SET_DUMPABLE, 0)
        return prctl(PR_GET_DUMPABLE) == 0
    except OSError:
        return False


PR_CAPBSET_DROP = 24
_SYS_CAPSET = 126  # x86_64
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Empty the bounding, effective, permitted and inheritable capability sets.

    :raises OSError: capset failed.
    """
    for cap in range(64):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            break  # past the last capability this kernel knows
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _libc.syscall.restype = ctypes.c_long
    if _libc.syscall(_SYS_CAPSET, ctypes.byref(hdr), ctypes.byref(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def others_can_read(paths: list[str]) -> bool:
    """True if an unprivileged uid can reach every path (o+x on each directory above it, o+r on it)."""
    import stat

    for path in paths:
        p = os.path.abspath(path)
        parts = p.split(os.sep)
        for i in range(2, len(parts) + 1):
            d = os.sep.join(parts[:i]) or os.sep
            try:
                mode = os.stat(d).st_mode
            except OSError:
                return False
            need = stat.S_IROTH if d == p else stat.S_IXOTH
            if not mode & need:
                return False
    return True


class _Discard(io.TextIOBase):
    """stdout/stderr of a module process: fds 0-2 are closed, output goes nowhere."""

    def write(self, s: str) -> int:
        return len(s)


def apply(cfg: SandboxConfig, keep_fd: int) -> list[str]:
    """Confine the calling process.  Only the channel ``keep_fd`` survives.

    :returns: names of the protections in force, in the order applied.
    :raises OSError: a mandatory step failed (fds, env, directory, limits, no-new-privs, uid);
        the caller must exit without running module code.
    """
    done: list[str] = []
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the kernel
    except OSError:
        log.debug("PDEATHSIG unavailable")
    # 1. file descriptors: only the channel stays open.
    sys.stdin = sys.stdout = sys.stderr = _Discard()
    os.closerange(0, keep_fd)
    os.closerange(keep_fd + 1, 1 << 16)
    done.append("fds")
    # 2. environment.
    os.environ.clear()
    done.append("env")
    # 3. private working directory.
    os.chdir(cfg.private_dir)
    os.umask(0o077)
    done.append("private-dir")
    # 4. resource limits.
    limits = (
        (resource.RLIMIT_AS, cfg.address_space, "rlimit-as"),
        (resource.RLIMIT_CPU, cfg.cpu_seconds, "rlimit-cpu"),
        (resource.RLIMIT_NOFILE, cfg.open_files, "rlimit-nofile"),
        (resource.RLIMIT_NPROC, cfg.processes, "rlimit-nproc"),
        (resource.RLIMIT_FSIZE, cfg.file_size, "rlimit-fsize"),
        (resource.RLIMIT_CORE, 0, "no-core"),
    )
    for which, value, name in limits:
        resource.setrlimit(which, (value, value))
        done.append(name)
    # 5. no new privileges (also required by Landlock and seccomp as non-root).
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    done.append("no-new-privs")
    # 6. filesystem confinement.
    if cfg.landlock:
        try:
            ro = [*cfg.read_only, "/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/dev/urandom"]
            _landlock.restrict(ro, [cfg.private_dir, "/dev/null"], cfg.list_only)
            done.append("landlock")
        except _landlock.LandlockUnavailable as exc:
            log.warning("landlock not in force: %s", exc)
    # 7. unprivileged uid.
    if cfg.uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(cfg.uid, cfg.uid, cfg.uid)
        os.setresuid(cfg.uid, cfg.uid, cfg.uid)
        done.append("uid")
    # 7b. root that cannot switch uid (e.g. Python under a 0700 home): drop every capability.
    if os.geteuid() == 0:
        drop_capabilities()
        done.append("no-caps")
    # 8. seccomp, last: it also forbids what the steps above used.
    if cfg.seccomp:
        try:
            _seccomp.install_filter(speculation_mitigations=cfg.speculation_mitigations)
            done.append("seccomp" if cfg.speculation_mitigations else "seccomp(spec-allow)")
        except _seccomp.SeccompUnavailable as exc:
            log.warning("seccomp not in force: %s", exc)
    return done

"""Starting a module: a sandboxed process (multiprocess, spawn) or, for tests, a thread.

Spawn, never fork: a forked child would inherit a copy of the kernel's memory (PSP
keys, guest plaintext).  The spawn launcher is multiprocess's, with two changes:
the child gets an empty environment and only the channel and bootstrap pipe fds,
and no resource-tracker process is started.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
from typing import Any, Protocol

import msgspec
import multiprocess
from multiprocess import popen_spawn_posix, spawn, util
from multiprocess.context import reduction, set_spawning_popen

from svsm.sdk._runtime import ModuleRuntime
from svsm.sdk.abi import Recorder

from ._child import module_main
from ._discovery import ModuleRef
from ._sandbox import SandboxConfig

__all__ = ["Link", "ProcessLink", "ThreadLink", "spawn_process", "spawn_thread"]

log = logging.getLogger("svsm.kernel.ipc.process")


class Link(Protocol):
    """The kernel's handle on a running module: its channel socket and its life."""

    sock: socket.socket
    pid: int | None
    sandboxed: bool

    def is_alive(self) -> bool: ...

    def kill(self) -> None: ...

    def join(self, timeout: float) -> None: ...

    @property
    def exitcode(self) -> int | None: ...


class _SandboxPopen(popen_spawn_posix.Popen):
    """multiprocess's spawn launcher with an empty environment and no resource tracker."""

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        # The child needs only module_main (imported by name), never the parent's __main__:
        # re-running a script in the child would be kernel-chosen code with the kernel's view.
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        fp = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            set_spawning_popen(None)
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        try:
            cmd = spawn.get_command_line(tracker_fd=None, pipe_handle=child_r)
            fds = tuple(sorted({*self._fds, *process_obj._svsm_fds, child_r, child_w}))
            self.pid = _spawn_clean(spawn.get_executable(), cmd, fds)
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as f:
                f.write(fp.getbuffer())
        finally:
            self.finalizer = util.Finalize(self, util.close_fds, (parent_r, parent_w))
            os.close(child_r)
            os.close(child_w)


def _spawn_clean(path: str, args: list[str], passfds: tuple[int, ...]) -> int:
    import _posixsubprocess
    import subprocess

    errpipe_read, errpipe_write = os.pipe()
    try:
        return _posixsubprocess.fork_exec(  # type: ignore[attr-defined]
            args, [os.fsencode(path)], True, passfds, None, [],  # close other fds; empty environment
            -1, -1, -1, -1, -1, -1, errpipe_read, errpipe_write,
            False, False, -1, None, None, None, -1, None,
            subprocess._USE_VFORK,  # type: ignore[attr-defined]
        )
    finally:
        os.close(errpipe_read)
        os.close(errpipe_write)


class _SandboxProcess(multiprocess.context.SpawnProcess):  # type: ignore[name-defined,misc]
    _start_method = "spawn"
    _svsm_fds: tuple[int, ...] = ()

    @staticmethod
    def _Popen(process_obj: Any) -> _SandboxPopen:
        return _SandboxPopen(process_obj)


class ProcessLink:
    """A module in its own sandboxed process."""

    sandboxed = True

    def __init__(self, proc: Any, sock: socket.socket) -> None:
        self._proc = proc
        self.sock = sock
        self.pid: int | None = proc.pid

    def is_alive(self) -> bool:
        return bool(self._proc.is_alive())

    def kill(self) -> None:
        """SIGKILL the process and close the channel."""
        try:
            self._proc.kill()
        except (OSError, ValueError):
            log.debug("kill of %s: already gone", self.pid)
        self.sock.close()

    def join(self, timeout: float) -> None:
        self._proc.join(timeout)

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    @property
    def sentinel(self) -> int:
        """An fd readable when the process ends (``multiprocess.connection.wait``)."""
        return int(self._proc.sentinel)


def spawn_process(ref: ModuleRef, config: SandboxConfig, *, name: str) -> ProcessLink:
    """Start a sandboxed module process; the sandbox is applied before module code is imported.

    :returns: the link; the first frame from the process is a ``SandboxReport``.
    """
    kernel_end, module_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = _SandboxProcess(
            target=module_main,
            args=(module_end.fileno(), msgspec.to_builtins(ref), msgspec.to_builtins(config)),
            name=f"svsm-module-{name}",
            daemon=True,
        )
        proc._svsm_fds = (module_end.fileno(),)
        proc.start()
    except BaseException:
        kernel_end.close()
        raise
    finally:
        module_end.close()
    return ProcessLink(proc, kernel_end)


class ThreadLink:
    """A module served by a thread of the kernel process: fast, **no sandbox** (tests only).

    A hung handler cannot be killed; :meth:`kill` only closes the channel.
    """

    sandboxed = False
    pid = None

    def __init__(self, obj: Any, *, name: str, recorder: Recorder | None = None) -> None:
        self.sock, module_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._module_end = module_end
        self._exit: int | None = None

        def run() -> None:
            try:
                ModuleRuntime(obj, module_end).serve()
                self._exit = 0
            except BaseException:  # noqa: BLE001 -- the module "process" crashed; the kernel sees EOF
                log.exception("in-process module %s crashed", name)
                self._exit = 1
            finally:
                module_end.close()

        self._thread = threading.Thread(target=run, name=f"svsm-module-{name}", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        self.sock.close()
        try:
            self._module_end.shutdown(socket.SHUT_RDWR)
        except OSError:
            log.debug("module end already closed")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def exitcode(self) -> int | None:
        return self._exit


def spawn_thread(obj: Any, *, name: str, recorder: Recorder | None = None) -> ThreadLink:
    """Serve module object ``obj`` on a thread (in-process mode)."""
    return ThreadLink(obj, name=name, recorder=recorder)

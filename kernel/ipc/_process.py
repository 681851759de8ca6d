"""Starting a module: a sandboxed process (fork+exec of a fresh interpreter) or, for tests, a thread.

Exec, never a bare fork: a forked child would inherit a copy of the kernel's memory (PSP
keys, guest plaintext).  The child gets an empty environment and only the channel fd; its
bootstrap (import path, module ref, sandbox config) is the first frame on that channel.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Protocol

import msgspec

from svsm.sdk._runtime import ModuleRuntime
from svsm.sdk.abi import FRAME_HEADER, Recorder

from ._child import Bootstrap
from ._ref import ModuleRef
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


def _spawn_clean(path: str, args: list[str], passfds: tuple[int, ...]) -> subprocess.Popen[bytes]:
    """fork+exec ``args`` with an empty environment, every fd closed but ``passfds``, stdio on /dev/null.

    ``subprocess.Popen`` is the public, version-stable face of the same ``fork_exec``; the
    returned object is kept by the link so that nothing else ever reaps the child.
    """
    return subprocess.Popen(
        args, executable=path, env={}, close_fds=True, pass_fds=passfds,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None, cwd="/",
    )  # fmt: skip


class ProcessLink:
    """A module in its own sandboxed process (a child of the kernel, watched through a pidfd)."""

    sandboxed = True

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._proc = proc  # held so that only this link ever reaps the child
        self.pid: int | None = proc.pid
        self.sock = sock
        self._pidfd = os.pidfd_open(proc.pid)
        self._status: int | None = None
        self._lock = threading.Lock()

    def _reap(self, block: bool) -> None:
        with self._lock:
            if self._status is not None:
                return
            code = self._proc.wait() if block else self._proc.poll()
            if code is not None:
                self._status = code
                os.close(self._pidfd)

    def is_alive(self) -> bool:
        self._reap(False)
        return self._status is None

    def kill(self) -> None:
        """SIGKILL the process and close the channel."""
        with self._lock:
            if self._status is None:
                try:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                except OSError:
                    log.debug("kill of %s: already gone", self.pid)
        self.sock.close()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the process to end, and reap it."""
        with self._lock:
            if self._status is not None:
                return
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
        if poller.poll(max(0.0, timeout) * 1000):
            self._reap(True)

    @property
    def exitcode(self) -> int | None:
        self._reap(False)
        return self._status


def spawn_process(ref: ModuleRef, config: SandboxConfig, *, name: str) -> ProcessLink:
    """Start a sandboxed module process; the sandbox is applied before module code is imported.

    A fresh interpreter (``python -I``: no environment, no cwd on the import path) with only
    the channel fd, which reads its :class:`Bootstrap` as the first frame on the channel.

    :returns: the link; the first frame from the process is a ``SandboxReport``.
    """
    kernel_end, module_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        fd = module_end.fileno()
        boot = msgspec.msgpack.encode(
            # the kernel's import path minus cwd-relative entries (path-hook entries such as editable installs stay)
            Bootstrap(path=[p for p in sys.path if p and (os.path.isabs(p) or not os.path.exists(p))], ref=ref, config=config)
        )
        argv = [sys.executable, "-I", "-c", f"from svsm.kernel.ipc._child import bootstrap; bootstrap({fd})"]
        proc = _spawn_clean(sys.executable, argv, (fd,))
    except BaseException:
        kernel_end.close()
        raise
    finally:
        module_end.close()
    link = ProcessLink(proc, kernel_end)
    try:
        kernel_end.sendall(FRAME_HEADER.pack(len(boot)) + boot)
    except OSError:
        log.debug("module process %s exited before reading its bootstrap", proc.pid)
    return link


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

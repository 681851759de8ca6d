"""``svsm tpm serve``: expose a vTPM on loopback over the mssim or swtpm protocol.

By default a CVM boots and the *guest's* TPM is served: TCP -> guest vTPM driver ->
SVSM_VTPM_CMD -> kernel -> vTPM module process.  ``--direct`` serves the engine without a VM
(for comparison); the kernel never imports modules, so the engine is found through the tpm
module's ``svsm.modules`` entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import inspect
import logging
import os
import pathlib
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from svsm.sdk import RequestError
from svsm.sdk.tpm import MssimServer, SwtpmServer, TpmDevice, TpmServer

from ._main import ExitCode, UsageError

__all__ = ["register", "open_device", "load_engine_class", "StateFileDevice", "BackendUnavailable"]

log = logging.getLogger("svsm.cli.tpm")

#: File inside ``--state DIR`` holding the engine's non-volatile state (``Tpm.save_state()``).
STATE_FILE = "tpm-state.bin"


class BackendUnavailable(UsageError):
    """The requested TPM backend cannot be built in this installation (printed as one line)."""


def load_engine_class() -> Any:
    """The vTPM engine class, through the ``tpm`` entry point of the ``svsm.modules`` group.

    :raises BackendUnavailable: no such entry point, or the module exports no ``Tpm``.
    """
    eps = [ep for ep in entry_points(group="svsm.modules") if ep.name == "tpm"]
    if not eps:
        raise BackendUnavailable("no 'tpm' entry point in group svsm.modules: is pysvsm installed?")
    module = importlib.import_module(eps[0].value.split(":")[0])
    engine = getattr(module, "Tpm", None)
    if engine is None:
        raise BackendUnavailable(f"{module.__name__} exports no Tpm engine")
    return engine


class StateFileDevice:
    """The engine plus a state file: loads it at start, rewrites it after state-changing commands.

    The file is replaced atomically (write to a temp file, fsync, rename), so a crash leaves
    either the old or the new state.  Platform signals pass through to the engine.

    :param engine_cls: the engine class (``Tpm(state=bytes | None)``).
    :param state_dir: directory for :data:`STATE_FILE`; ``None`` keeps state in memory only.
    """

    def __init__(self, engine_cls: Callable[..., Any], state_dir: pathlib.Path | None) -> None:
        self.path = state_dir / STATE_FILE if state_dir is not None else None
        blob = self.path.read_bytes() if self.path is not None and self.path.exists() else None
        kwargs: dict[str, Any] = {"state": blob}
        if "provision_ek_at" in inspect.signature(engine_cls).parameters:
            # Like a TPM leaving the factory: EK certificates at the TCG NV indices (tpm2_getekcertificate).
            kwargs["provision_ek_at"] = datetime.datetime.now(datetime.timezone.utc)
        try:
            self.engine = engine_cls(**kwargs)
        except RequestError as exc:  # the engine refuses a corrupt or foreign state file
            raise UsageError(f"cannot load TPM state {self.path}: {exc}; refusing to overwrite it") from None
        self.saves = 0
        if self.path is not None and blob is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._save()

    def _save(self) -> None:
        assert self.path is not None
        data = self.engine.save_state()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tpm-state-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self.engine.dirty = False
        self.saves += 1

    def _maybe_save(self) -> None:
        if self.path is not None and getattr(self.engine, "dirty", True):
            self._save()

    def execute(self, command: bytes, locality: int = 0) -> bytes:
        """Run the command on the engine; persist state if it changed."""
        response = self.engine.execute(command, locality)
        self._maybe_save()
        return bytes(response)

    def __getattr__(self, name: str) -> Any:
        # Platform signals (power_on, reset, ...) exist exactly when the engine has them.
        if name in ("power_on", "power_off", "nv_on", "nv_off", "reset", "hash_start", "hash_data", "hash_end", "cancel_on", "cancel_off"):
            fn = getattr(self.engine, name)

            def signal(*args: Any) -> None:
                fn(*args)
                self._maybe_save()

            return signal
        raise AttributeError(name)

    def close(self) -> None:
        """Write the final state."""
        self._maybe_save()


class _FullPath:
    """A booted CVM with a module host; :meth:`close` shuts both down."""

    def __init__(self, stack: contextlib.ExitStack, cvm: Any, driver: Any) -> None:
        self.stack, self.cvm, self.driver = stack, cvm, driver

    def close(self) -> None:
        self.driver.close()
        self.stack.close()


def open_device(*, direct: bool, state: pathlib.Path | None, module_mode: str = "process") -> tuple[TpmDevice, Any]:
    """Build the TPM to serve.

    :param direct: the engine in this process; otherwise a booted CVM's guest vTPM.
    :param state: state directory (``None``: in memory).  Direct: ``DIR/tpm-state.bin``.  Full
        path: the chip's keys in ``DIR/psp`` and the persist module's disk ``DIR/persist.img``
        (the vTPM module stores its NV state through persist, sealed to the measurement).
    :param module_mode: ``"process"`` (sandboxed module processes) or ``"inprocess"`` (threads).
    :returns: ``(device, owner)``; call ``owner.close()`` (if present) when done.
    :raises BackendUnavailable: the backend cannot be built here.
    """
    if direct:
        dev = StateFileDevice(load_engine_class(), state)
        return dev, dev
    try:
        from svsm.kernel import boot
    except ImportError as exc:
        raise BackendUnavailable(f"the full SVSM path is not available ({exc}); use --direct") from None
    from svsm.sdk.tpm import VtpmDriver

    stack = contextlib.ExitStack()
    try:
        psp_dir = None
        if state is not None:
            state.mkdir(parents=True, exist_ok=True)
            psp_dir = str(state / "psp")  # the same chip keys, so the same sealing keys, next time
        cvm = stack.enter_context(boot(psp_state_dir=psp_dir))
        # With a state dir the persist module gets DIR/persist.img and the vTPM's NV survives.
        stack.enter_context(cvm.run_modules(module_mode, state_dir=state))
        driver = _probe_until_ready(lambda: VtpmDriver(cvm.guest), RequestError)
    except BaseException:
        stack.close()
        raise
    return driver, _FullPath(stack, cvm, driver)


def _probe_until_ready(make: Callable[[], Any], error: type[Exception], timeout: float = 60.0) -> Any:
    """The vTPM module may still be starting (BUSY): retry the probe for up to ``timeout`` s.

    :raises BackendUnavailable: the module never answered the probe.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return make()
        except error as exc:
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"the vTPM module did not come up: {exc}") from None
            time.sleep(0.1)


def _serve(args: argparse.Namespace) -> int:
    device, owner = open_device(direct=args.direct, state=args.state, module_mode=args.module_mode)
    cls: type[TpmServer] = MssimServer if args.transport == "mssim" else SwtpmServer
    server = cls(device, args.host, args.port, path=str(args.unix) if args.unix else None)
    where = f"{args.unix} (+.ctrl)" if args.unix else f"{args.host}:{args.port}/{args.port + 1}"
    try:
        server.start()
    except OSError as exc:
        close = getattr(owner, "close", None)
        if close is not None:
            close()
        raise UsageError(f"cannot listen on {where}: {exc}") from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if threading.current_thread() is threading.main_thread() else None
    path = "engine (--direct)" if args.direct else "guest vTPM via SVSM_VTPM_CMD"
    if args.unix:
        where, conf = f"{args.unix} (control {args.unix}.ctrl)", f"path={args.unix}"
    else:
        where, conf = f"{args.host}:{server.port} (control {server.port + 1})", f"host={args.host},port={server.port}"
    print(f"svsm tpm serve: {args.transport} on {where}, {path}; TPM2TOOLS_TCTI={args.transport}:{conf}", flush=True)
    try:
        while not stop.is_set() and not server.wait_stopped(0.2):
            pass
    except KeyboardInterrupt:
        pass  # Ctrl-C is the normal way to stop a server: shut down cleanly below
    finally:
        server.stop()
        close = getattr(owner, "close", None)
        if close is not None:
            close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return ExitCode.OK


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``svsm tpm`` and its ``serve`` subcommand."""
    tpm = subparsers.add_parser("tpm", help="vTPM tools", description=__doc__)
    sub = tpm.add_subparsers(dest="tpm_command", metavar="SUBCOMMAND")
    sub.required = True
    serve = sub.add_parser(
        "serve",
        help="serve the vTPM on loopback for tpm2-tools / tpm2-pytss",
        description="Serve the vTPM over the TPM simulator (mssim) or swtpm socket protocol.",
    )
    serve.add_argument("--port", type=int, default=2321, help="command/data port P; P+1 is the platform/control port (0: pick)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--unix", type=pathlib.Path, metavar="PATH",
                       help="listen on AF_UNIX sockets PATH and PATH.ctrl instead of TCP (TCTI option path=PATH)")
    serve.add_argument("--state", type=pathlib.Path, help="directory keeping the TPM's non-volatile state")
    serve.add_argument("--transport", choices=("mssim", "swtpm"), default="mssim", help="wire protocol (default mssim)")
    serve.add_argument("--direct", action="store_true", help="serve the engine without booting a VM")
    serve.add_argument("--module-mode", choices=("process", "inprocess"), default="process",
                       help="run the vTPM module as a sandboxed process (default) or in a thread")
    serve.set_defaults(func=_serve)


if __name__ == "__main__":  # pragma: no cover - convenience for `python -m`
    from ._main import main

    sys.exit(main(["tpm", *sys.argv[1:]]))

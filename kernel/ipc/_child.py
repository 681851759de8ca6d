"""Entry point of a sandboxed module process (``python -I -c "...bootstrap(fd)"``, see ``_process``).

Runs in a fresh interpreter: confine the process, report the protections over the
channel, and only then import the module's code, report its validated manifest
(:class:`~svsm.sdk.abi.ManifestReport`) and serve it.  The kernel learns a module's
manifest only this way: discovery never imports module code in the kernel process.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import sys
import traceback
from typing import Any

import msgspec

from svsm.sdk import InvalidFormat
from svsm.sdk.abi import Channel, ManifestReport, SandboxReport

from ._ref import ModuleRef
from ._sandbox import SandboxConfig, apply

__all__ = ["Bootstrap", "bootstrap", "module_main", "CRASH_FILE", "EXIT_SANDBOX_FAILED", "EXIT_LOAD_FAILED"]

#: Written in the private directory when the module process dies of an exception.
CRASH_FILE = "crash.txt"

#: Exit status when the sandbox could not be applied (module code never ran).
EXIT_SANDBOX_FAILED = 70
#: Exit status when the module's code could not be loaded or served.
EXIT_LOAD_FAILED = 71


class Bootstrap(msgspec.Struct, frozen=True):
    """What the kernel tells a fresh module process, as the first frame on its channel (kernel-internal)."""

    path: list[str]
    ref: ModuleRef
    config: SandboxConfig


def bootstrap(channel_fd: int) -> None:
    """Entry point of ``python -I -c``: read the :class:`Bootstrap` frame, then :func:`module_main`."""
    sock = socket.socket(fileno=channel_fd)
    sock.setblocking(True)
    data = bytearray()
    need = 4
    while len(data) < need:
        chunk = sock.recv(max(need - len(data), 4096) if need > 4 else 4 - len(data))
        if not chunk:
            os._exit(EXIT_SANDBOX_FAILED)
        data += chunk
        if need == 4 and len(data) >= 4:
            need = 4 + struct.unpack_from("<I", data)[0]
            if need > (1 << 20):
                os._exit(EXIT_SANDBOX_FAILED)
    boot = msgspec.msgpack.decode(bytes(data[4:need]), type=Bootstrap)
    sys.path[:] = [*boot.path, *(p for p in sys.path if p not in boot.path)]
    sock.detach()
    module_main(channel_fd, msgspec.to_builtins(boot.ref), msgspec.to_builtins(boot.config))


def module_main(channel_fd: int, ref: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Confine, report, load, serve; never returns (``os._exit``)."""
    sock = socket.socket(fileno=channel_fd)
    chan = Channel("module")
    try:
        config = msgspec.convert(cfg, SandboxConfig)
        module_ref = msgspec.convert(ref, ModuleRef)
        # Import everything the runtime needs while imports are still unrestricted.
        from svsm.sdk._runtime import ModuleRuntime, validate_module

        # Fill every import-path directory's listing cache while directories are still readable
        # (Landlock makes most of them unlistable; the module's own files stay readable).
        importlib.util.find_spec("_svsm_warm_import_caches")
        protections = apply(config, channel_fd)
    except Exception as exc:  # report and die: no module code has run
        try:
            sock.sendall(chan.send(SandboxReport(pid=os.getpid(), error=f"{type(exc).__name__}: {exc}"[:4000])))
        finally:
            os._exit(EXIT_SANDBOX_FAILED)
    sock.sendall(chan.send(SandboxReport(pid=os.getpid(), protections=protections)))
    try:
        # Module code runs from here on, confined.  Read and validate what the kernel needs
        # to know (manifest, hook names) here, never in the kernel process.
        try:
            obj = module_ref.resolve()
            manifest = validate_module(obj)
        except InvalidFormat as exc:
            sock.sendall(chan.send(ManifestReport(error=str(exc)[:4000])))
            os._exit(EXIT_LOAD_FAILED)
        except Exception as exc:  # the module's import failed (untrusted text, for the kernel's log)
            sock.sendall(chan.send(ManifestReport(error=f"import failed: {type(exc).__name__}: {exc}"[:4000])))
            os._exit(EXIT_LOAD_FAILED)
        sock.sendall(chan.send(ManifestReport(manifest=msgspec.msgpack.encode(msgspec.to_builtins(manifest)))))
        ModuleRuntime(obj, sock, forward_root_log=True).serve()
    except BaseException:  # noqa: BLE001 -- any failure ends the process; the kernel sees the exit
        try:  # the kernel shows the tail of this (untrusted) file in the module's last failure
            with open(CRASH_FILE, "w") as f:
                f.write(traceback.format_exc()[-4000:])
        except OSError:
            pass
        os._exit(EXIT_LOAD_FAILED)
    os._exit(0)

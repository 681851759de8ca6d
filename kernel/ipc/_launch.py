"""Starting a sandboxed module process up to the handshake: spawn, sandbox report, manifest report.

Discovery uses it to learn an installed module's manifest without importing the module in
the kernel (the process is then adopted by the module's supervisor); restarts use it too.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from svsm.sdk import Manifest
from svsm.sdk.abi import _messages as m
from svsm.sdk.abi._channel import CLOSED, NEED_DATA, AbiError, Channel

from ._process import Link, spawn_process
from ._sandbox import SandboxConfig, others_can_read

__all__ = ["Launched", "ModuleFailure", "launch_process", "module_uid"]


class ModuleFailure(Exception):
    """Internal: the module must be killed (crash, hang, too many strikes)."""


class Launched(NamedTuple):
    """A sandboxed module process that reported its protections and manifest, before the handshake."""

    link: Link
    chan: Channel
    protections: tuple[str, ...]
    manifest: Manifest
    uid: int | None


def module_uid(code_paths: Sequence[str], ctx: Any) -> int | None:
    """An unprivileged uid for a module process, if it can read the interpreter and the module's code.

    Otherwise the process keeps uid 0 with every capability dropped ("no-caps").
    """
    switch = os.geteuid() == 0 and ctx.uid_switch and others_can_read(list(code_paths))
    return ctx.uid_base + next(ctx._uids) if switch else None


def launch_process(spec: Any, dirname: str, uid: int | None, ctx: Any, deadline: float) -> Launched:
    """Spawn a sandboxed module process and read its two reports (sandbox, then manifest).

    The module's code runs only in that process: it imports the module, validates the manifest
    and the hook names, and reports the manifest, which the kernel decodes with its bounds.

    :param spec: anything with ``ref`` and ``code_paths`` (a ModuleSpec or an EntryPointModule).
    :param dirname: the name of its private directory under the runtime directory.
    :raises ModuleFailure: the sandbox failed, the module did not load or validate, or the deadline passed.
    """
    private = os.path.join(ctx.runtime_dir, dirname)
    os.makedirs(private, mode=0o700, exist_ok=True)
    if uid is not None:
        os.chown(private, uid, uid)
    cfg = SandboxConfig(
        private_dir=private,
        uid=uid,
        address_space=ctx.address_space,
        cpu_seconds=ctx.cpu_seconds,
        open_files=ctx.open_files,
        speculation_mitigations=ctx.speculation_mitigations,
        read_only=[*ctx.read_only, *spec.code_paths],
        list_only=[os.path.dirname(p) for p in spec.code_paths if p.endswith("__init__.py")],
    )
    # Spawned from the host's long-lived spawner thread: the child's PDEATHSIG fires when the
    # *thread* that forked it exits, so a short-lived caller thread must not be its parent.
    try:
        if ctx.spawner is None:
            link: Link = spawn_process(spec.ref, cfg, name=dirname)
        else:
            link = ctx.spawner.submit(spawn_process, spec.ref, cfg, name=dirname).result()
    except OSError as exc:
        raise ModuleFailure(f"spawn failed: {exc}") from None
    chan = Channel("kernel", recorder=ctx.recorder)
    try:
        report = _read_report(link, chan, deadline, ctx.clock)
        if not isinstance(report, m.SandboxReport) or report.error:
            raise ModuleFailure(f"sandbox failed: {getattr(report, 'error', type(report).__name__)}")
        protections = tuple(_verified(link.pid, report.protections))
        mreport = _read_report(link, chan, deadline, ctx.clock)
        if not isinstance(mreport, m.ManifestReport):
            raise ModuleFailure(f"expected a manifest report, got {type(mreport).__name__}")
        if mreport.error:
            raise ModuleFailure(f"module rejected: {mreport.error}")
        try:
            manifest = msgspec.msgpack.decode(mreport.manifest, type=Manifest)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise ModuleFailure(f"invalid manifest: {str(exc)[:200]}") from None
    except BaseException:
        link.kill()
        link.join(1.0)
        raise
    return Launched(link, chan, protections, manifest, uid)


def _read_report(link: Link, chan: Channel, deadline: float, clock: Callable[[], float]) -> Any:
    """The next frame before the handshake (blocking socket); any ABI violation is a failure."""
    buf = bytearray(64 * 1024)
    while True:
        try:
            ev = chan.next_event()
        except AbiError as exc:
            raise ModuleFailure(f"bad frame before the handshake: {exc}") from None
        if ev is CLOSED:
            raise ModuleFailure("channel closed (process exited)")
        if ev is not NEED_DATA:
            return ev
        left = deadline - clock()
        if left <= 0 or not _poll_in(link, left):
            raise ModuleFailure("deadline missed (start)")
        try:
            n = link.sock.recv_into(buf)
        except OSError as exc:
            raise ModuleFailure(f"channel read failed: {exc}") from None
        chan.receive_data(memoryview(buf)[:n] if n else b"")


def _verified(pid: int | None, claimed: list[str]) -> list[str]:
    """Keep only claims the kernel can confirm from /proc when it can check them."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return list(claimed)
    checks = {
        "seccomp": status.get("Seccomp", "").strip() == "2",
        "no-new-privs": status.get("NoNewPrivs", "").strip() == "1",
        "uid": status.get("Uid", "0").split()[0] != "0",
    }
    return [p for p in claimed if checks.get(p, True)]


def _poll_in(link: Link, timeout: float) -> bool:
    poller = select.poll()
    poller.register(link.sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))

"""Two booted CVMs, a busy guest, a man in the middle, and a runner for both migration ends."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from svsm.kernel import boot
from svsm.kernel.hw.adversary import AdversarialHypervisor
from svsm.kernel.migration import GuestFenced, MigratableVm, RunGate
from svsm.kernel.migration._transport import accept_one, connect, listen
from svsm.kernel.migration._workload import GuestWorkload
from svsm.modules.migrate import (
    MeasurementPolicy,
    MigrationOptions,
    Role,
    make_channel,
    make_verifier,
    migrate_destination,
    migrate_source,
)


class Scene:
    """Source CVM with a running workload, a paused destination CVM."""

    def __init__(self, src: Any, dst: Any) -> None:
        self.src, self.dst = src, dst
        self.svm = MigratableVm(src)
        self.dvm = MigratableVm(dst, gate=RunGate(paused=True))
        g = src.guest
        g.accept_memory(0, src.layout.svsm_base)
        self.workload = GuestWorkload.create(g, None, pages=48, pages_per_step=2)
        self.stop = threading.Event()
        self.guest_error: list[BaseException] = []
        self.thread = threading.Thread(target=self._guest, daemon=True)
        self.thread.start()

    def _guest(self) -> None:
        try:
            self.workload.run(self.stop, self.svm.gate, steps_per_second=400)
        except GuestFenced:
            pass
        except BaseException as exc:  # noqa: BLE001 -- the test looks at it
            self.guest_error.append(exc)

    def verifier(self, cvm: Any) -> Any:
        ark = cvm.psp.chip.chain_pem()[0]
        return make_verifier(ark, MeasurementPolicy.same_as(cvm.measurement))

    def migrate(self, *, through: Callable[[int], int] | None = None, options: MigrationOptions | None = None,
                src_kwargs: dict | None = None) -> tuple[Any, Any]:  # fmt: skip
        """Run both ends over loopback TCP (optionally through a proxy): (source, destination) results."""
        srv = listen("127.0.0.1", 0)
        port = srv.getsockname()[1]
        res: dict[str, Any] = {}

        def dst() -> None:
            try:
                with accept_one(srv, timeout=30, io_timeout=30) as sock:
                    ch = make_channel(self.dvm, Role.DESTINATION, self.verifier(self.dst), os.urandom)
                    res["d"] = migrate_destination(self.dvm, sock, ch)
            except Exception as exc:  # noqa: BLE001
                res["d"] = exc
            finally:
                srv.close()

        th = threading.Thread(target=dst)
        th.start()
        target = through(port) if through is not None else port
        try:
            with connect("127.0.0.1", target, io_timeout=30) as sock:
                ch = make_channel(self.svm, Role.SOURCE, self.verifier(self.src), os.urandom)
                res["s"] = migrate_source(self.svm, sock, ch, options, **(src_kwargs or {}))
        except Exception as exc:  # noqa: BLE001
            res["s"] = exc
        th.join(60)
        assert not th.is_alive()
        return res["s"], res["d"]

    def guest_still_runs_on_source(self) -> bool:
        before = self.workload.step
        deadline = 200
        while self.workload.step == before and deadline:
            threading.Event().wait(0.01)
            deadline -= 1
        return self.workload.step > before and not self.guest_error


class Proxy:
    """A man in the middle for the source->destination direction, frame by frame.

    :param action: ``action(index, frame) -> list of frames to forward`` (frame = length prefix + body).
    """

    def __init__(self, target_port: int, action: Callable[[int, bytes], list[bytes]],
                 back: Callable[[int, bytes], list[bytes]] | None = None) -> None:  # fmt: skip
        self.srv = listen("127.0.0.1", 0)
        self.port = self.srv.getsockname()[1]
        self.target, self.action, self.back = target_port, action, back or (lambda i, f: [f])
        self.frames = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            a = accept_one(self.srv, timeout=30, io_timeout=30)
            b = connect("127.0.0.1", self.target, io_timeout=30)
            threading.Thread(target=self._relay, args=(b, a, self.back, None), daemon=True).start()
            self._relay(a, b, self.action, self)

    @staticmethod
    def _relay(src: socket.socket, dst: socket.socket, action: Callable[[int, bytes], list[bytes]], count: Any) -> None:
        buf, i = b"", 0
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                buf += data
                while len(buf) >= 4:
                    (n,) = struct.unpack(">I", buf[:4])
                    if len(buf) < 4 + n:
                        break
                    frame, buf = buf[: 4 + n], buf[4 + n :]
                    for out in action(i, frame):
                        dst.sendall(out)
                    i += 1
                    if count is not None:
                        count.frames = i
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def scene(request: pytest.FixtureRequest) -> Iterator[Scene]:
    hv = AdversarialHypervisor()
    with boot(vcpus=1, memory="16M", hypervisor=hv) as src, boot(vcpus=1, memory="16M", seed=1) as dst:
        sc = Scene(src, dst)
        try:
            yield sc
        finally:
            sc.stop.set()
            with contextlib.suppress(GuestFenced):
                sc.svm.gate.resume()
            sc.thread.join(10)


@pytest.fixture
def proxy() -> type[Proxy]:
    return Proxy

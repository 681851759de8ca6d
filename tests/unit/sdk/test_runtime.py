"""ModuleRuntime: the log handler belongs to one runtime (in-process hosts share the logging module)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from svsm.kernel.ipc import ModuleHost
from svsm.sdk import Manifest, Module, hookimpl
from svsm.sdk._syscalls import SyscallLogHandler


class Logs(Module):
    MANIFEST = Manifest(name="logs", version="1", capabilities=["log"])

    @hookimpl
    def svsm_module_start(self, ctx: Any) -> None:
        ctx.log.warning("started")


def test_second_inprocess_host_logs_through_its_own_channel(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("svsm.module.logs")
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="svsm.kernel.modules.logs"):
            caplog.clear()
            with ModuleHost([Logs], mode="inprocess") as h:
                assert h.module("logs").state.value == "serving"
                assert [r.getMessage() for r in caplog.records if r.name == "svsm.kernel.modules.logs"] == ["started"]
        assert not [x for x in logger.handlers if isinstance(x, SyscallLogHandler)]


class Measured(Module):
    MANIFEST = Manifest(name="measured", version="1")
    seen: list[bytes] = []

    @hookimpl
    def svsm_module_start(self, ctx: Any) -> None:
        Measured.seen.append(ctx.measurement)


def test_context_carries_the_kernel_measurement_and_report_data_is_domain_separated() -> None:
    import hashlib

    from svsm.sdk import module_report_data

    Measured.seen = []
    with ModuleHost([Measured], mode="inprocess") as h:
        assert Measured.seen == [h.module("measured").spec.measurement] and len(Measured.seen[0]) == 48
    rd = module_report_data("measured", Measured.seen[0], b"\1" * 64)
    assert len(rd) == 64 and rd != hashlib.sha512(b"\1" * 64).digest()
    assert rd != module_report_data("other", Measured.seen[0], b"\1" * 64)

"""pytest plugin registered through ``pytest11`` (``svsm``).

Fixtures that boot a VM import the kernel lazily, inside the fixture, so that
merely having pysvsm installed never imports the kernel into a test session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._clock import FakeClock
from ._frames import FrameRecorder


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("svsm")
    group.addoption(
        "--svsm-strict",
        action="store_true",
        default=os.environ.get("SVSM_STRICT") == "1",
        help="a test that needs a missing external tool fails instead of skipping (env SVSM_STRICT=1)",
    )


@pytest.fixture
def svsm_strict(request: pytest.FixtureRequest) -> bool:
    """True when missing external tools must fail tests instead of skipping them."""
    return bool(request.config.getoption("--svsm-strict"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "svsm_modules(modules=[...], mode=...): modules the svsm_vm fixture boots with")


@pytest.fixture
def fake_clock() -> FakeClock:
    """A :class:`~svsm.sdk.testing.FakeClock` that moves only when the test advances it."""
    return FakeClock()


@pytest.fixture
def abi_frames() -> FrameRecorder:
    """Records every ABI frame the kernel sends or receives (pass to hosts made by the fixtures)."""
    return FrameRecorder()


@pytest.fixture
def svsm_module_host(abi_frames: FrameRecorder, fake_clock: FakeClock) -> Iterator[Callable[..., Any]]:
    """Factory: ``svsm_module_host(*modules, mode="inprocess", **kwargs)`` -> a started ``ModuleHost``.

    ``modules`` are module objects (a class defined in the test file works in both modes);
    ``mode="process"`` runs them sandboxed.  Frames go to ``abi_frames``; the module time
    syscall reads ``fake_clock``.  Every host is closed at teardown.
    """
    from svsm.kernel.ipc import ModuleHost, Providers  # lazily: the SDK never imports the kernel at import time

    hosts: list[Any] = []

    def make(*modules: Any, mode: str = "inprocess", **kwargs: Any) -> Any:
        kwargs.setdefault("recorder", abi_frames)
        kwargs.setdefault("providers", Providers(clock=fake_clock.time_ns))
        host = ModuleHost(modules, mode=mode, **kwargs)
        hosts.append(host)
        return host.start()

    yield make
    for host in hosts:
        host.close()


@pytest.fixture
def svsm_vm(request: pytest.FixtureRequest, abi_frames: FrameRecorder) -> Iterator[Callable[..., Any]]:
    """Factory: ``svsm_vm(*modules, mode="inprocess", host_kwargs=None, **boot_kwargs)`` -> a booted CVM.

    ``host_kwargs`` go to the ``ModuleHost`` (``limits=``, ``policy=``, ``providers=`` ...).

    Without arguments, the modules (and ``mode=``) come from the test's
    ``@pytest.mark.svsm_modules(modules=[ModuleClass], mode="process")`` marker (a lone class
    as positional argument would be taken by pytest as the decorated object).

    The modules are served by a ``ModuleHost`` passed to ``svsm.kernel.boot()``; the
    CVM's guest driver is ``cvm.guest``.  Module attestation-report syscalls reach the
    booted PSP.  Everything is shut down at teardown.
    """
    import contextlib

    from svsm.kernel import boot  # lazily
    from svsm.kernel.ipc import ModuleHost

    stack = contextlib.ExitStack()

    def make(*modules: Any, mode: str | None = None, host_kwargs: dict[str, Any] | None = None, **boot_kwargs: Any) -> Any:
        marker = request.node.get_closest_marker("svsm_modules")
        if not modules and marker is not None:
            modules = tuple(marker.kwargs.get("modules", ())) or marker.args
        mode = mode or (marker.kwargs.get("mode") if marker is not None else None) or "inprocess"
        host = ModuleHost(modules, mode=mode, **{"recorder": abi_frames, **(host_kwargs or {})})
        stack.callback(host.close)
        host.start()
        cvm = stack.enter_context(boot(module_host=host, **boot_kwargs))
        report = getattr(cvm.svsm, "module_report", None)
        if report is not None:
            host.providers.report = report
        cvm.module_host = host
        return cvm

    with stack:
        yield make

"""pytest plugin registered through ``pytest11`` (``svsm``).

Fixtures that boot a VM import the kernel lazily, inside the fixture, so that
merely having pysvsm installed never imports the kernel into a test session.
"""

from __future__ import annotations

import os

import pytest


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

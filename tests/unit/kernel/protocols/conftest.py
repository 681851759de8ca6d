"""A small booted CVM per test, with some guest memory accepted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

#: Guest RAM accepted before each test: [1 MiB, 4 MiB) -- 4 KiB pages up to 2 MiB, then one 2 MiB page.
ACCEPTED = (0x10_0000, 0x30_0000)


@pytest.fixture
def cvm() -> Iterator[Any]:
    from svsm.kernel import boot

    with boot(vcpus=2, memory="12M") as c:
        yield c


@pytest.fixture
def guest(cvm: Any) -> Any:
    g = cvm.guest
    g.accept_memory(*ACCEPTED)
    return g

"""mm tests run with the lock-order checker on, so allocator lock nesting is checked too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from svsm.kernel.sync import lock_order_checker


@pytest.fixture(autouse=True)
def _lockdep() -> Iterator[None]:
    checker = lock_order_checker()
    was = checker.enabled
    checker.reset()
    checker.enable(raise_on_violation=True)
    yield
    violations = list(checker.violations)
    checker.enabled = was
    checker.reset()
    assert not violations, violations

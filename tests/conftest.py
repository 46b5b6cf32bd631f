"""Suite-wide pytest setup."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Registered here (not in pyproject) so --strict-markers accepts it; load tests run by default.
    config.addinivalue_line(
        "markers", "load: the 60 s load test (300 streams through the proxy and the fake vLLM)"
    )

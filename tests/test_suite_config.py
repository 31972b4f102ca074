"""The suite's own configuration (pyproject.toml): a hung test fails CI instead of hanging it."""

from __future__ import annotations

import pytest

# The longest one test may run before CI should call it hung (the whole suite takes a few
# minutes on a 2-core CPU).
CI_BUDGET_S = 600


def test_every_test_has_a_time_limit_that_dumps_all_threads(request: pytest.FixtureRequest) -> None:
    config = request.config
    assert config.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed"
    timeout = float(config.getini("timeout") or 0)  # 0 or unset: no limit
    assert 0 < timeout <= CI_BUDGET_S
    assert config.getini("timeout_method") == "thread"  # also when the main thread is in C code
    # The GIL-free backstop fires after pytest-timeout, never before it.
    assert float(config.getini("faulthandler_timeout")) > timeout
    assert config.getini("faulthandler_exit_on_timeout") is True

"""tests/requires.py: a missing tool skips on a developer's box and fails in CI."""

from __future__ import annotations

import pytest

from tests.requires import in_ci, missing, need_module


def test_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match=r"CI is set.*no-such-tool"):
        missing("no-such-tool is not installed")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_31"):
        need_module("no_such_module_31", "pip install it")
    monkeypatch.setenv("CI", "")
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="no-such-tool"):
        missing("no-such-tool is not installed")
    assert need_module("json", "stdlib").dumps([1]) == "[1]"

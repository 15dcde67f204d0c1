"""RateLimitedLog: one line per interval, with the count of what it held back."""

from __future__ import annotations

import logging

import pytest

from ray_mm.logs import RateLimitedLog


def test_rate_limited_log_holds_back_repeats_and_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = RateLimitedLog(logging.getLogger("ray_mm.test"), logging.WARNING, every_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="ray_mm.test"):
        assert log.log("refused %s", "r1")
        assert not log.log("refused %s", "r2")
        now[0] += 5
        assert not log.log("refused %s", "r3")
        now[0] += 6
        assert log.log("refused %s", "r4")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["refused r1", "refused r4 (2 similar messages suppressed in the last 10 s)"]

"""The short chaos run (CI): real processes, seeded faults, duplicates = 0 and lost = 0.

Starts its own `redis-server` on a free port (never the machine's Redis), the
simulator process, 2 schedulers and 3 workers; see `tests/chaos/harness.py`.
The long run with more firings and a Redis that loses its data is
`python -m bench.chaos` (results in bench/RESULTS.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosConfig, run_chaos

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(290),
    pytest.mark.skipif(
        shutil.which("redis-server") is None,
        reason="the chaos run starts its own redis-server (crashed and restarted on purpose); "
        "it is not installed here",
    ),
]


def test_exactly_once_under_chaos(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "0"))
    report = run_chaos(ChaosConfig(workdir=tmp_path, seed=seed))
    print(f"\nchaos seed={seed}\n{report.summary()}")  # shown with -s, and on failure
    assert report.duplicates == 0, report.details
    assert report.lost == 0, report.details
    assert report.unexpected == 0, report.details
    assert report.stale_sends == 0, report.details  # never sent once the customer wrote again
    assert report.staleness_ms, "no action reported how old its re-check was"
    assert report.token_leaks == [], report.token_leaks[:3]
    # The run really was chaotic: every kind of fault happened.
    for kind in (
        "sigkill_worker",
        "sigkill_leader",
        "leader_takeover",
        "api_error",
        "rate_limit_burst",
        "api_rate_limited",
        "api_slow_past_timeout",
        "redis_restart_kept_data",
    ):
        assert report.faults[kind] > 0, f"no {kind} injected: {report.summary()}"
    assert report.faults["api_commit_then_fail_503"] + report.faults["api_commit_then_fail_drop"] > 0


@pytest.mark.timeout(480)
def test_tag_reply_with_a_pdf_and_close_exactly_once_under_chaos(tmp_path: Path) -> None:
    """Issue 16: the tag, the upload, the file record, the send and the close, each once per
    situation, under the same faults (commit-then-fail on the upload and the send included)."""
    import tests.chaos.breadth  # noqa: F401 (registers the scenario)

    seed = int(os.environ.get("CHAOS_SEED", "0"))
    # No racing second messages: that judgement (an answer never after a newer message) is the
    # default scenario's; here every customer message asks for prices and is answered.
    # Three actions per firing run one after another (issue 12), each retried under the
    # faults: on a loaded 2-core machine the last ones land after the default 100 s window.
    config = ChaosConfig(workdir=tmp_path, seed=seed, scenario="breadth", racing=0, converge_timeout_s=240)
    report = run_chaos(config)
    print(f"\nchaos breadth seed={seed}\n{report.summary()}")
    assert report.duplicates == 0, report.details
    assert report.lost == 0, report.details
    assert report.unexpected == 0, report.details
    assert report.token_leaks == [], report.token_leaks[:3]
    assert report.faults["sigkill_worker"] > 0 and report.faults["api_error"] > 0
    for kind in ("upload", "file", "send", "tag"):  # each kind of write lost its answer at least once
        assert report.faults[f"lost_answer_{kind}"] > 0, report.summary()

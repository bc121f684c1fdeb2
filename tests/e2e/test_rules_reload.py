"""Worker processes keep their rules current (they re-check firings against them)."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.e2e._app_helpers import ASSIGN_NEW, app_on, wait_for
from worker.simulator.testing import SimulatorHandle


def test_a_worker_process_reloads_edited_rules_and_keeps_the_last_good(
    simulator: SimulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    with app_on(simulator, tmp_path) as built:
        stop = threading.Event()
        thread = built.reload_rules_every(0.01, stop)
        try:
            rulebook = built.runtime.rulebook
            (tmp_path / "rules.yaml").write_text(ASSIGN_NEW.replace("assign: 201", "assign: 202"))
            wait_for(lambda: "202" in repr(rulebook.ruleset.get("assign-new").then))  # type: ignore[union-attr]
            good = rulebook.ruleset
            (tmp_path / "rules.yaml").write_text("rules: [{id: broken, when: {nope: 1}}]")
            wait_for(lambda: bool(rulebook.errors))
            assert rulebook.ruleset is good
        finally:
            stop.set()
            thread.join(timeout=5)
        assert not thread.is_alive()

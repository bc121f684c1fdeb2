"""Worker processes keep their rules current (they re-check firings against them)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from tests.e2e._app_helpers import ASSIGN_NEW, app_on, wait_for
from worker.simulator.testing import SimulatorHandle


def replace_file(path: Path, text: str) -> None:
    """Swap the file in one rename, as a deploy does: a reload every 10 ms would otherwise
    catch `write_text` between its truncate and its write and load an empty file."""
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    os.replace(staged, path)


def test_a_worker_process_reloads_edited_rules_and_keeps_the_last_good(
    simulator: SimulatorHandle, redis_url: str, tmp_path: Path
) -> None:
    with app_on(simulator, tmp_path) as built:
        stop = threading.Event()
        thread = built.reload_rules_every(0.01, stop)
        try:
            rulebook = built.runtime.rulebook
            replace_file(tmp_path / "rules.yaml", ASSIGN_NEW.replace("assign: 201", "assign: 202"))
            wait_for(lambda: "202" in repr(rulebook.ruleset.get("assign-new").then))  # type: ignore[union-attr]
            good = rulebook.ruleset
            replace_file(tmp_path / "rules.yaml", "rules: [{id: broken, when: {nope: 1}}]")
            wait_for(lambda: bool(rulebook.errors))
            assert rulebook.ruleset is good
        finally:
            stop.set()
            thread.join(timeout=5)
        assert not thread.is_alive()

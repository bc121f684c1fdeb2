"""The active rule set, reloaded from disk while the worker runs.

A reload that finds any error keeps the last good rules and reports the error
(log + `inboxpilot_rules_load_errors`) until the files are fixed: a typo in a
rule file must never stop the routing bot or fire half a rule set.
"""

from __future__ import annotations

import threading
from pathlib import Path

from worker.logs import get_logger
from worker.metrics import RULES_LOAD_ERRORS, RULES_LOADED
from worker.rules.errors import RuleError, RulesInvalid
from worker.rules.loader import load_rules
from worker.rules.model import RuleSet

log = get_logger(__name__)
RELOAD_INTERVAL_S = 5.0  # how often every process re-reads its rule files


class Rulebook:
    """Holds the last good `RuleSet` for `path`; `reload()` swaps it only when valid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        result = load_rules([path])
        if result.errors:
            raise RulesInvalid(result.errors)
        self._ruleset = result.ruleset
        self.errors: tuple[RuleError, ...] = ()
        self._publish()

    @classmethod
    def of(cls, ruleset: RuleSet, path: Path = Path("<memory>")) -> Rulebook:
        """A rulebook around an already-loaded rule set (tests, `explain`)."""
        book = cls.__new__(cls)
        book.path = path
        book._lock = threading.Lock()
        book._ruleset = ruleset
        book.errors = ()
        return book

    @property
    def ruleset(self) -> RuleSet:
        with self._lock:
            return self._ruleset

    def reload(self) -> bool:
        """Re-read the files; True when a new valid rule set became active."""
        result = load_rules([self.path])
        if result.errors:
            if result.errors != self.errors:
                for error in result.errors:
                    log.error("rules_invalid_kept_last_good", error=str(error))
            self.errors = result.errors
            RULES_LOAD_ERRORS.set(len(result.errors))
            return False
        self.errors = ()
        RULES_LOAD_ERRORS.set(0)
        if result.ruleset.fingerprint == self.ruleset.fingerprint:
            return False
        with self._lock:
            self._ruleset = result.ruleset
        self._publish()
        log.info("rules_reloaded", rules=len(result.ruleset.rules), fingerprint=result.ruleset.fingerprint)
        return True

    def _publish(self) -> None:
        RULES_LOADED.set(len(self._ruleset.rules))
        RULES_LOAD_ERRORS.set(0)

"""The active rule set, reloaded from disk while the worker runs.

A reload that finds any error keeps the last good rules and reports the error
(log + `inboxpilot_rules_load_errors`) until the files are fixed: a typo in a
rule file must never stop the routing bot or fire half a rule set.

Every `RELOAD_INTERVAL_S` the files are read (cheap: each at most
`MAX_RULE_FILE_BYTES`) and hashed; they are parsed again only when that hash
changes (contents, names, read errors), so a large or broken folder costs its
parse once per edit, not every few seconds.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

from worker.logs import get_logger
from worker.metrics import RULES_LOAD_ERRORS, RULES_LOADED
from worker.rules.errors import RuleError, RulesInvalid
from worker.rules.loader import LoadResult, Sources, load_sources, read_sources
from worker.rules.model import RuleSet

log = get_logger(__name__)
RELOAD_INTERVAL_S = 5.0  # how often every process re-reads its rule files


class Rulebook:
    """Holds the last good `RuleSet` for `path`; `reload()` swaps it only when valid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.parses = 0  # how often the files were parsed (each time they changed)
        self._digest = ""
        result = self._load()
        assert result is not None  # nothing was parsed before: the first read always parses
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
        book.parses, book._digest = 0, ""
        book._ruleset = ruleset
        book.errors = ()
        return book

    @property
    def ruleset(self) -> RuleSet:
        with self._lock:
            return self._ruleset

    def reload(self) -> bool:
        """Re-read the files; True when a new valid rule set became active."""
        result = self._load()
        if result is None:  # unchanged since the last parse: same rules, same errors
            return False
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

    def _load(self) -> LoadResult | None:
        """The files parsed, or None when they are as they were at the last parse."""
        sources, read_errors = read_sources([self.path])
        digest = _digest(sources, read_errors)
        if digest == self._digest:
            return None
        self._digest = digest
        self.parses += 1
        return load_sources(sources, read_errors)

    def _publish(self) -> None:
        RULES_LOADED.set(len(self._ruleset.rules))
        RULES_LOAD_ERRORS.set(0)


def _digest(sources: Sources, read_errors: Sequence[RuleError]) -> str:
    sha = hashlib.sha256()
    for name, text in sources:
        sha.update(f"{len(name)}:{name}:{len(text)}:".encode())
        sha.update(text.encode("utf-8", "surrogatepass"))
    for error in read_errors:
        sha.update(error.format().encode())
    return sha.hexdigest()

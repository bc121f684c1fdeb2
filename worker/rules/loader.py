"""Load rule files with positions: every problem becomes a located `RuleError`.

Stages, in order, across all files: YAML syntax, document shape, calendars,
agents, pools, SLA policies (compiled into rules, `worker/rules/loading/sla.py`), then
rules one at a time. A broken rule is reported and the
others still load; `strict=True` raises `RulesInvalid` instead.

A folder loads its own `*.yaml`/`*.yml` files only (sorted by name); pass
`recursive=True` to include sub-folders (e.g. `rules/examples/`).

The pieces live in `worker/rules/loading/`: positions, report (located errors),
documents (files and sections), parser (one rule), sections, sla.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from worker.rules.errors import RuleError, RulesInvalid
from worker.rules.loading.documents import Doc, State, sections
from worker.rules.loading.positions import to_plain
from worker.rules.loading.report import Report
from worker.rules.loading.sections import load_agents, load_calendars, load_pools, load_rule_list
from worker.rules.loading.sla import load_sla_policies
from worker.rules.model import Rule as Rule
from worker.rules.model import RuleSet
from worker.rules.routing import Roster


@dataclass(frozen=True)
class LoadResult:
    ruleset: RuleSet
    errors: tuple[RuleError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_yaml(file: str, text: str, errors: list[RuleError]) -> Doc | None:
    try:
        data = YAML(typ="rt", pure=True).load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        errors.append(RuleError(file, line, col, None, "", f"YAML syntax error: {problem or exc}"))
        return None
    except Exception as exc:  # ruamel raises a few unmarked errors on odd input
        errors.append(RuleError(file, 1, 1, None, "", f"YAML error: {type(exc).__name__}: {exc}"))
        return None
    return Doc(file, data)


def _fingerprint(docs: Sequence[Doc]) -> str:
    # Key order is the file's (mixed-type keys cannot be sorted); comments do not count.
    canon = json.dumps([to_plain(d.data) for d in docs], default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def load_texts(sources: Sequence[tuple[str, str]], *, strict: bool = False) -> LoadResult:
    """Load (file name, YAML text) pairs as one rule set."""
    state = State()
    docs = [d for d in (parse_yaml(name, text, state.errors) for name, text in sources) if d]
    split = [(d, sections(d, Report(state.errors, d.file))) for d in docs]
    load_calendars(split, state)
    load_agents(split, state)
    load_pools(split, state)
    load_sla_policies(split, state)
    load_rule_list(split, state)
    errors = tuple(state.errors)
    if strict and errors:
        raise RulesInvalid(errors)
    enabled = sorted((r for r in state.rules if r.enabled), key=lambda r: (-r.priority, r.id))
    ruleset = RuleSet(
        rules=tuple(enabled),
        all_rules=tuple(state.rules),
        calendars=MappingProxyType(dict(state.calendars)),
        roster=Roster(
            agents=MappingProxyType(dict(state.agents)),
            pools=MappingProxyType(dict(state.pools)),
            calendars=MappingProxyType(dict(state.calendars)),
        ),
        sla_policies=tuple(state.sla.values()),
        fingerprint=_fingerprint(docs),
        files=tuple(name for name, _ in sources),
    )
    return LoadResult(ruleset, errors)


def discover(paths: Iterable[str | Path], *, recursive: bool = False) -> tuple[list[Path], list[RuleError]]:
    """Rule files under `paths`: files as given, folders' *.yaml/*.yml sorted by name."""
    files: list[Path] = []
    errors: list[RuleError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for ext in ("yaml", "yml") for p in path.glob(f"{pattern}.{ext}") if p.is_file())
            # predefined/ holds canned replies, not rules (worker/rules/predefined.py)
            found = [p for p in found if "predefined" not in p.relative_to(path).parts[:-1]]
            files.extend(p for p in found if p not in files)
        elif path.is_file():
            if path not in files:
                files.append(path)
        else:
            errors.append(RuleError(str(path), 1, 1, None, "", "no such file or folder"))
    return files, errors


def load_rules(paths: Iterable[str | Path], *, strict: bool = False, recursive: bool = False) -> LoadResult:
    """Load rule files and folders (folders non-recursively unless asked)."""
    files, errors = discover(paths, recursive=recursive)
    sources: list[tuple[str, str]] = []
    for path in files:
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(RuleError(str(path), 1, 1, None, "", f"cannot read: {exc}"))
    result = load_texts(sources)
    all_errors = tuple(errors) + result.errors
    if strict and all_errors:
        raise RulesInvalid(all_errors)
    return LoadResult(result.ruleset, all_errors)

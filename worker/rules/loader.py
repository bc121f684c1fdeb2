"""Load rule files with positions: every problem becomes a located `RuleError`.

Stages, in order, across all files: YAML syntax, document shape, calendars,
agents, pools, SLA policies (compiled into rules, `worker/rules/loading/sla.py`), then
rules one at a time. A broken rule is reported and the
others still load; `strict=True` raises `RulesInvalid` instead.

A folder loads its own `*.yaml`/`*.yml` files only (sorted by name); pass
`recursive=True` to include sub-folders (e.g. `rules/examples/`).

The pieces live in `worker/rules/loading/`: positions, report (located errors),
documents (files and sections), parser (one rule), sections, sla, aliases.

Hostile files are refused with a located error before they can cost much: a
file over `MAX_RULE_FILE_BYTES` is not read, YAML aliases may stand for at most
`MAX_ALIAS_NODES` nodes and nest at most `MAX_YAML_DEPTH` deep
(`loading/aliases.py`), and a symbolic link that leads nowhere is reported
rather than skipped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from worker.rules.errors import RuleError, RulesInvalid
from worker.rules.loading.aliases import MAX_ALIAS_NODES as MAX_ALIAS_NODES
from worker.rules.loading.aliases import MAX_YAML_DEPTH as MAX_YAML_DEPTH
from worker.rules.loading.aliases import BudgetComposer, YamlLimitError
from worker.rules.loading.documents import Doc, State, sections
from worker.rules.loading.parser import check_pairs
from worker.rules.loading.positions import to_plain
from worker.rules.loading.report import Report
from worker.rules.loading.sections import load_agents, load_calendars, load_pools, load_rule_list
from worker.rules.loading.sla import load_sla_policies
from worker.rules.model import Rule as Rule
from worker.rules.model import RuleSet
from worker.rules.routing import Roster

MAX_RULE_FILE_BYTES = 1_048_576  # 1 MiB: the shipped files are a few kB each
Sources = list[tuple[str, str]]  # (file name, YAML text)


@dataclass(frozen=True)
class LoadResult:
    ruleset: RuleSet
    errors: tuple[RuleError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_yaml(file: str, text: str, errors: list[RuleError]) -> Doc | None:
    if len(text) > MAX_RULE_FILE_BYTES:  # characters: never more than the bytes
        errors.append(RuleError(file, 1, 1, None, "", _too_large(len(text.encode()))))
        return None
    yaml = YAML(typ="rt", pure=True)
    yaml.Composer = BudgetComposer
    try:
        data = yaml.load(text)
    except YamlLimitError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        errors.append(RuleError(file, line, col, None, "", f"YAML refused: {exc.problem}"))
        return None
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
    check_pairs(state)
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


def _too_large(size: int) -> str:
    return (
        f"file is larger than {MAX_RULE_FILE_BYTES:,} bytes ({size:,} bytes): not read; "
        "split it into several files"
    )


def discover(paths: Iterable[str | Path], *, recursive: bool = False) -> tuple[list[Path], list[RuleError]]:
    """Rule files under `paths`: files as given, folders' *.yaml/*.yml sorted by name."""
    files: list[Path] = []
    errors: list[RuleError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for ext in ("yaml", "yml") for p in path.glob(f"{pattern}.{ext}"))
            # predefined/ holds canned replies, not rules (worker/rules/predefined.py)
            found = [p for p in found if "predefined" not in p.relative_to(path).parts[:-1]]
            errors.extend(e for e in map(_unreachable, found) if e is not None)
            files.extend(p for p in found if p.is_file() and p not in files)
        elif path.is_file():
            if path not in files:
                files.append(path)
        else:
            errors.append(
                _unreachable(path) or RuleError(str(path), 1, 1, None, "", "no such file or folder")
            )
    return files, errors


def _unreachable(path: Path) -> RuleError | None:
    """The error for a symbolic link that leads nowhere (Path.is_file() says only False)."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return RuleError(str(path), 1, 1, None, "", "symbolic link loop: not read")
        target = os.readlink(path)
        return RuleError(str(path), 1, 1, None, "", f"broken symbolic link to {target!r}: not read")
    return None


def read_sources(paths: Iterable[str | Path], *, recursive: bool = False) -> tuple[Sources, list[RuleError]]:
    """The texts of the rule files under `paths`, and what could not be read (nothing parsed)."""
    files, errors = discover(paths, recursive=recursive)
    sources: Sources = []
    for path in files:
        try:
            size = path.stat().st_size
            if size > MAX_RULE_FILE_BYTES:
                errors.append(RuleError(str(path), 1, 1, None, "", _too_large(size)))
                continue
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(RuleError(str(path), 1, 1, None, "", f"cannot read: {exc}"))
    return sources, errors


def load_sources(sources: Sources, read_errors: Sequence[RuleError], *, strict: bool = False) -> LoadResult:
    """Parse what `read_sources` read; its errors come first."""
    result = load_texts(sources)
    all_errors = tuple(read_errors) + result.errors
    if strict and all_errors:
        raise RulesInvalid(all_errors)
    return LoadResult(result.ruleset, all_errors)


def load_rules(paths: Iterable[str | Path], *, strict: bool = False, recursive: bool = False) -> LoadResult:
    """Load rule files and folders (folders non-recursively unless asked)."""
    sources, errors = read_sources(paths, recursive=recursive)
    return load_sources(sources, errors, strict=strict)

"""Where a YAML node is: 1-based (line, column) positions, and plain data from ruamel nodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from worker.rules.model import Rule as Rule

Pos = tuple[int, int]  # 1-based line, column


def node_pos(node: Any, fallback: Pos = (1, 1)) -> Pos:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return fallback
    return lc.line + 1, lc.col + 1


def child_pos(parent: Any, key: Any, fallback: Pos, *, at_key: bool = False) -> Pos:
    """Where a mapping value (or key) or a sequence item starts."""
    try:
        if isinstance(parent, CommentedMap):
            line, col = parent.lc.key(key) if at_key else parent.lc.value(key)
        elif isinstance(parent, CommentedSeq):
            line, col = parent.lc.item(key)
        else:
            return fallback
    except (KeyError, IndexError, TypeError, AttributeError):
        return fallback
    return line + 1, col + 1


def locate(node: Any, loc: Sequence[int | str], pos: Pos, *, at_key: bool = False) -> Pos:
    """Walk a pydantic error location down the YAML nodes as far as they go."""
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, CommentedMap) and part in node:
            pos = child_pos(node, part, pos, at_key=at_key and last)
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            pos = child_pos(node, part, pos)
            node = node[part]
        else:
            break
    return pos


def join(path: str, part: int | str) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


def _plain_key(key: Any) -> Any:
    # YAML allows complex keys (`? [a, b]`); plain dicts need hashable ones.
    plain = to_plain(key)
    return plain if isinstance(plain, str | int | float | bool) or plain is None else str(plain)


def to_plain(node: Any) -> Any:
    """ruamel's round-trip types to plain Python for validation."""
    if isinstance(node, Mapping):
        return {_plain_key(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [to_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, datetime | date):
        return node
    return str(node)

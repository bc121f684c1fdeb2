"""The README's configuration reference, generated from the `Settings` model.

``python -m worker.docs`` prints the table; ``python -m worker.docs --write``
replaces the table between the markers in README.md. A test fails when the
README's copy differs from what this module generates.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from worker.config import ENV_PREFIX, Settings

START_MARKER = "<!-- settings-table:start -->"
END_MARKER = "<!-- settings-table:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"
FIX_COMMAND = "python -m worker.docs --write"


def settings_table() -> str:
    """A Markdown table: one row per setting (variable, type, default, meaning)."""
    rows = [
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        rows.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {_type(info)} | {_default(name, info)} "
            f"| {_cell(info.description or '')}{_bounds(info)} |"
        )
    return "\n".join(rows)


def _type(info: FieldInfo) -> str:
    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    names = {"AnyHttpUrl": "URL", "SecretStr": "secret", "Path": "path", "str": "string"}
    raw = getattr(annotation, "__name__", str(annotation))
    return names.get(raw, raw)


def _default(name: str, info: FieldInfo) -> str:
    value: Any = info.default
    if value is PydanticUndefined:
        return "required"
    if name == "api_token":
        return "(none)"
    text = str(value)
    return f"`{text}`" if text else "(empty)"


def _bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
    return f" ({', '.join(parts)})" if parts else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def with_table(readme: str, table: str) -> str:
    """`readme` with the text between the markers replaced by `table`."""
    if START_MARKER not in readme or END_MARKER not in readme:
        raise ValueError(f"README has no {START_MARKER} ... {END_MARKER} block")
    head, rest = readme.split(START_MARKER, 1)
    _, tail = rest.split(END_MARKER, 1)
    return f"{head}{START_MARKER}\n{table}\n{END_MARKER}{tail}"


def main(argv: list[str]) -> int:
    table = settings_table()
    if "--write" in argv:
        README.write_text(with_table(README.read_text(), table))
        print(f"updated the settings table in {README}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The README's configuration reference and exit codes, generated from the code.

``python -m worker.docs`` prints the tables; ``python -m worker.docs --write``
replaces the tables between the markers in README.md. A test fails when the
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
EXIT_START = "<!-- exit-codes:start -->"
EXIT_END = "<!-- exit-codes:end -->"
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


def exit_codes_table() -> str:
    """A Markdown table of the CLI's exit codes (`worker.cli.failures.EXIT_CODES`)."""
    from worker.cli.failures import EXIT_CODES

    rows = ["| exit code | meaning |", "|---|---|"]
    rows += [f"| {code} | {_cell(meaning)} |" for code, meaning in EXIT_CODES.items()]
    return "\n".join(rows)


def with_table(readme: str, table: str, start: str = START_MARKER, end: str = END_MARKER) -> str:
    """`readme` with the text between the markers replaced by `table`."""
    if start not in readme or end not in readme:
        raise ValueError(f"README has no {start} ... {end} block")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def current_readme(readme: str) -> str:
    """`readme` with every generated block brought up to date."""
    readme = with_table(readme, settings_table())
    return with_table(readme, exit_codes_table(), EXIT_START, EXIT_END)


def main(argv: list[str]) -> int:
    if "--write" in argv:
        README.write_text(current_readme(README.read_text()))
        print(f"updated the settings and exit-code tables in {README}")
    else:
        print(settings_table())
        print()
        print(exit_codes_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

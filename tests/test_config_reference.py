"""The README's configuration reference is generated from the Settings model."""

from __future__ import annotations

from worker.cli.failures import EXIT_CODES
from worker.config import ENV_PREFIX, Settings
from worker.docs import (
    END_MARKER,
    FIX_COMMAND,
    README,
    START_MARKER,
    current_readme,
    exit_codes_table,
    settings_table,
    with_table,
)


def test_readme_settings_table_is_current() -> None:
    readme = README.read_text()
    assert with_table(readme, settings_table()) == readme, (
        f"README.md's settings table is out of date with worker/config.py; run: {FIX_COMMAND}"
    )


def test_table_has_one_row_per_setting_and_never_the_token() -> None:
    table = settings_table()
    for name in Settings.model_fields:
        assert f"`{ENV_PREFIX}{name.upper()}`" in table
    assert len(table.splitlines()) == 2 + len(Settings.model_fields)
    assert "**********" not in table


def test_with_table_replaces_only_between_markers() -> None:
    text = f"before\n{START_MARKER}\nold\n{END_MARKER}\nafter\n"
    assert with_table(text, "new") == f"before\n{START_MARKER}\nnew\n{END_MARKER}\nafter\n"


def test_readme_exit_codes_are_current() -> None:
    readme = README.read_text()
    assert current_readme(readme) == readme, f"README.md's exit codes are out of date; run: {FIX_COMMAND}"
    for code in EXIT_CODES:
        assert f"| {code} |" in exit_codes_table()

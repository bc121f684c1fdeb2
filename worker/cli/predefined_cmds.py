"""`inboxpilot predefined sync`: canned replies kept in `rules/predefined/`, pushed to the API."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import typer

from worker.cli import app
from worker.cli.common import settings_or_exit
from worker.cli.words import clip
from worker.rules.predefined import Change

predefined_app = typer.Typer(
    help="Canned replies kept as code (rules/predefined/*.yaml).", no_args_is_help=True
)
app.add_typer(predefined_app, name="predefined")

SIGNS = {"create": "+", "patch": "~", "remove": "-", "keep": "!"}


@predefined_app.command("sync")
def sync_command(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the diff; change nothing"),
    prune: bool = typer.Option(False, "--prune", help="Also remove canned replies the folder does not have"),
    folder: Path | None = typer.Option(
        None, "--folder", help="The predefined folder (default: predefined/ next to the rules)"
    ),
) -> None:
    """Create and patch /conversation-predefined-messages to match the folder, printing the diff."""
    from worker.api.client import ApiClient
    from worker.api.services import Services
    from worker.execution.predefined_sync import apply, plan_sync
    from worker.rules.predefined import find_folder, load_folder

    settings = settings_or_exit(needs_token=True)
    where = folder or find_folder([settings.rules_path])
    if where is None or not where.is_dir():
        typer.echo(
            f"inboxpilot: no predefined/ folder next to {settings.rules_path} (use --folder)", err=True
        )
        raise typer.Exit(1)
    desired, errors = load_folder(where)
    for error in errors:
        typer.echo(error.format(), err=True)
    if errors:
        raise typer.Exit(1)
    api = Services(ApiClient.from_settings(settings))
    try:  # an API failure ends the command through worker.cli.failures (one line, exit 3)
        changes = plan_sync(api, desired, prune=prune)
        for line in diff_lines(changes, len(desired)):
            typer.echo(line)
        if not dry_run:
            apply(api, changes)
    finally:
        api.client.close()
    acting = [c for c in changes if c.kind != "keep"]
    if dry_run and acting:
        typer.echo(f"dry run: {len(acting)} change(s) not applied")


def diff_lines(changes: Sequence[Change], total: int) -> Iterator[str]:
    """The diff as an operator reads it: one line per canned reply, old and new text under a patch."""
    for change in changes:
        ident = f" (id {change.record_id})" if change.record_id is not None else ""
        head = f"{SIGNS[change.kind]} {change.kind:<6} {change.title!r}{ident}"
        if change.kind == "keep":
            yield f"{head}: not in the folder, kept (--prune removes it)"
            continue
        yield head + (f": {', '.join(change.fields)}" if change.kind == "patch" else "")
        if "message_text" in change.fields:
            if change.kind == "patch":
                yield f"    - {clip(str(change.old.get('message_text') or ''), 100)}"
            yield f"    + {clip(str(change.fields['message_text']), 100)}"
        if "attachment" in change.fields or (change.kind == "create" and change.attachment is not None):
            new = change.attachment.ref if change.attachment is not None else "(none)"
            yield f"    attachment: {change.old.get('file_name') or '(none)'} -> {new}"
    unchanged = total - sum(1 for c in changes if c.kind in ("create", "patch"))
    yield f"{unchanged} unchanged, {len([c for c in changes if c.kind != 'keep'])} to change"

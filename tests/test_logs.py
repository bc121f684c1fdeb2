from __future__ import annotations

import io
import json
import logging

import structlog

from worker.logs import configure_logging, get_logger

TOKEN = "tok-abcdef-123456"


def _configure() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", secrets=[TOKEN], stream=stream)
    return stream


def test_structlog_events_are_json_and_redacted() -> None:
    stream = _configure()
    get_logger("t").info(
        "request_sent",
        headers={"Authorization": f"Bearer {TOKEN}"},
        url=f"http://x/?token={TOKEN}",
        note="header was Bearer abc.def",
    )
    line = stream.getvalue().strip()
    record = json.loads(line)
    assert record["event"] == "request_sent"
    assert TOKEN not in line
    assert record["headers"]["Authorization"] == "[REDACTED]"
    assert "abc.def" not in line


def test_stdlib_logs_and_tracebacks_are_redacted() -> None:
    stream = _configure()
    try:
        raise RuntimeError(f"failed with {TOKEN}")
    except RuntimeError:
        logging.getLogger("dramatiq").exception("boom %s", TOKEN)
    output = stream.getvalue()
    assert "boom" in output
    assert "RuntimeError" in output
    assert TOKEN not in output


def test_context_vars_are_merged() -> None:
    stream = _configure()
    structlog.contextvars.bind_contextvars(rule="r1")
    try:
        logging.getLogger("apscheduler").warning("tick")
    finally:
        structlog.contextvars.clear_contextvars()
    assert json.loads(stream.getvalue())["rule"] == "r1"


class Watched(Exception):
    """A value whose redaction is seen: scrubbing an exception renders it (`repr`)."""

    rendered = 0

    def __repr__(self) -> str:
        Watched.rendered += 1
        return "Watched()"


def test_lines_below_the_level_are_dropped_before_redaction() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", "json", secrets=[TOKEN], stream=stream)
    Watched.rendered = 0
    log = get_logger("t")
    log.debug("api_request", detail=Watched())
    assert Watched.rendered == 0 and stream.getvalue() == ""  # no redaction, no rendering

    log.warning("api_request_failed", detail=Watched(), token=TOKEN)
    assert Watched.rendered >= 1  # a line that is kept is still redacted
    assert TOKEN not in stream.getvalue()

"""The module `dramatiq` imports in each worker process (`inboxpilot run --role worker
--processes N`): it builds the app from the environment, which declares the actors
on the global broker."""

from __future__ import annotations

import threading

from worker.app import App
from worker.config import load_settings
from worker.logs import configure_logging
from worker.rules.book import RELOAD_INTERVAL_S

_settings = load_settings()
configure_logging(_settings.log_level, _settings.log_format, secrets=[_settings.api_token.get_secret_value()])
app = App.build(_settings)
broker = app.broker
# Each worker process keeps its rules current: firings are re-checked against them.
app.reload_rules_every(RELOAD_INTERVAL_S, threading.Event())

"""inboxpilot: the automation worker for the Conversations API."""

from __future__ import annotations

__version__ = "0.1.0"

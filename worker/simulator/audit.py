"""The audit log: every mutating API call, in order, with what became of it."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

Outcome = Literal["applied", "replay", "rejected", "fault"]


@dataclass(frozen=True)
class AuditEntry:
    """One POST/PATCH/DELETE as the simulator handled it."""

    seq: int
    time: datetime
    method: str
    path: str
    body: Any
    status: int
    idempotency_key: str | None
    outcome: Outcome
    fault: str | None = None

    @property
    def applied(self) -> bool:
        """True when the call changed state (including commit-then-fail)."""
        return self.outcome == "applied"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "applied": self.applied}


class AuditLog:
    """Append-only, thread-safe."""

    def __init__(self) -> None:
        self._entries: list[AuditEntry] = []
        self._lock = threading.Lock()

    def record(
        self,
        *,
        time: datetime,
        method: str,
        path: str,
        body: Any,
        status: int,
        idempotency_key: str | None,
        outcome: Outcome,
        fault: str | None = None,
    ) -> AuditEntry:
        with self._lock:
            entry = AuditEntry(
                len(self._entries) + 1, time, method, path, body, status, idempotency_key, outcome, fault
            )
            self._entries.append(entry)
            return entry

    def entries(self, since: int = 0) -> list[AuditEntry]:
        """Entries with `seq > since`."""
        with self._lock:
            return self._entries[since:]

    def applied(self, method: str | None = None, path_prefix: str = "") -> list[AuditEntry]:
        """Applied calls, optionally narrowed by method and path prefix (handy in tests)."""
        return [
            entry
            for entry in self.entries()
            if entry.applied and entry.path.startswith(path_prefix) and method in (None, entry.method)
        ]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: Any


class IdempotencyCache:
    """`Idempotency-Key` -> the first applied response, scoped by request path."""

    def __init__(self) -> None:
        self._responses: dict[tuple[str, str], StoredResponse] = {}
        self._lock = threading.Lock()

    def get(self, path: str, key: str) -> StoredResponse | None:
        with self._lock:
            return self._responses.get((path, key))

    def put(self, path: str, key: str, response: StoredResponse) -> None:
        with self._lock:
            self._responses.setdefault((path, key), response)

    def clear(self) -> None:
        with self._lock:
            self._responses.clear()

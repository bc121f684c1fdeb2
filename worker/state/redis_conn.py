"""The one place Redis clients are made: a real server, or the embedded in-process one.

An empty URL means the embedded default: a fakeredis server living in this
process (with Lua, which dramatiq's Redis broker and redis-py's Lock need).
Every client built for the empty URL in one process shares that one server, so
the scheduler, the broker and the ledger see the same data. It does not survive
a restart; `inboxpilot run` warns about that.
"""

from __future__ import annotations

import threading

import fakeredis
import redis

_embedded_server: fakeredis.FakeServer | None = None
_embedded_lock = threading.Lock()


def embedded_server() -> fakeredis.FakeServer:
    """The process-wide in-memory Redis server (created on first use)."""
    global _embedded_server
    with _embedded_lock:
        if _embedded_server is None:
            _embedded_server = fakeredis.FakeServer()
        return _embedded_server


def is_embedded(url: str) -> bool:
    return not url


def connect(url: str, *, decode_responses: bool = False) -> redis.Redis:
    """A Redis client for `url` (empty = embedded).

    dramatiq's broker needs `decode_responses=False` (its decoder expects bytes).
    """
    if is_embedded(url):
        return fakeredis.FakeRedis(server=embedded_server(), decode_responses=decode_responses)
    client: redis.Redis = redis.Redis.from_url(url, decode_responses=decode_responses)
    return client

"""The leader lease: one scheduler replica polls; a standby takes over within the TTL.

A small Lua lease rather than redis-py's `Lock`, because we need a *fencing
token*: every acquisition takes a new number from a counter (INCR), stores it
as the lease value with a TTL, and writes that must come from the current
leader (the watermark) compare it inside their own Lua script. A paused old
leader whose lease expired therefore cannot move the watermark; the ledger, not
the lease, is what makes duplicate actions impossible (Kleppmann 2016).

Redis keys:

==================================  ======  ===========================================
key                                 type    content / TTL
==================================  ======  ===========================================
``inboxpilot:leader:<name>``        STRING  the current fencing token; PX = lease TTL
``inboxpilot:leader:<name>:fence``  STRING  token counter (INCR); no TTL, never reused
==================================  ======  ===========================================

Locally the lease also counts as lost once the injected clock passes the last
successful acquire/renew + TTL, so a leader that could not renew stops
scheduling before anyone else can take over.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import redis

from worker.clock import Clock
from worker.logs import get_logger
from worker.metrics import IS_LEADER

LEADER_PREFIX = "inboxpilot:leader:"

_ACQUIRE = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
local token = redis.call('incr', KEYS[2])
redis.call('set', KEYS[1], token, 'PX', ARGV[1])
return token
"""

_RENEW = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('del', KEYS[1])
"""

log = get_logger(__name__)


def lease_key(name: str) -> str:
    """The Redis key holding the current fencing token of lease `name`."""
    return LEADER_PREFIX + name


class LeaderLease:
    """A renewable, fenced leader lease (see the module docstring)."""

    def __init__(self, client: redis.Redis, name: str, ttl_s: float, clock: Clock) -> None:
        if ttl_s <= 0:
            raise ValueError("LeaderLease ttl_s must be > 0 (a lease that never expires keeps a dead leader)")
        if not name:
            raise ValueError("LeaderLease needs a name")
        self._redis = client
        self.name = name
        self.key = lease_key(name)
        self._fence_key = self.key + ":fence"
        self.ttl_s = ttl_s
        self._clock = clock
        self._token: int | None = None
        self._valid_until: datetime | None = None
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def token(self) -> int | None:
        """The fencing token while this instance believes it leads."""
        return self._token if self.is_leader else None

    @property
    def is_leader(self) -> bool:
        """True while acquired/renewed within the TTL, by the injected clock."""
        if self._token is None or self._valid_until is None:
            return False
        return self._clock.now() < self._valid_until

    def try_acquire(self) -> bool:
        """Become leader if nobody is; a current leader renews instead. Never blocks."""
        if self._token is not None:
            return self.renew()
        start = self._clock.now()
        token = int(self._acquire(keys=[self.key, self._fence_key], args=[self._ttl_ms()]))
        if not token:
            return False
        self._set(token, start)
        log.info("leader_acquired", lease=self.name, fence=token)
        return True

    def renew(self) -> bool:
        """Reset the TTL; on failure this instance is no longer leader (stop scheduling first)."""
        if self._token is None:
            return False
        start = self._clock.now()
        if self._renew(keys=[self.key], args=[str(self._token), self._ttl_ms()]):
            self._set(self._token, start)
            return True
        self._lose("renew_refused")
        return False

    def still_leader(self) -> bool:
        """Ask Redis whether our token is still the stored one (a round trip)."""
        if not self.is_leader:
            return False
        return self._redis.get(self.key) == str(self._token).encode()

    def release(self) -> None:
        """Give the lease up (on shutdown) so a standby takes over at once."""
        if self._token is None:
            return
        self._release(keys=[self.key], args=[str(self._token)])
        log.info("leader_released", lease=self.name, fence=self._token)
        self._token = None
        self._valid_until = None
        IS_LEADER.set(0)

    def _set(self, token: int, start: datetime) -> None:
        self._token = token
        self._valid_until = start + timedelta(seconds=self.ttl_s)
        IS_LEADER.set(1)

    def _lose(self, why: str) -> None:
        log.warning("leader_lost", lease=self.name, fence=self._token, reason=why)
        self._token = None
        self._valid_until = None
        IS_LEADER.set(0)

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

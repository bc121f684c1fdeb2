"""Prometheus metrics, defined once. Labels are low-cardinality only: never a
conversation id, never anything that could carry the token."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

POLLS = Counter("inboxpilot_polls_total", "Poll ticks run", ["kind"], registry=REGISTRY)
PAGES_FETCHED = Counter(
    "inboxpilot_pages_fetched_total", "Pages of conversations fetched", ["kind"], registry=REGISTRY
)
POLL_LAG_S = Gauge("inboxpilot_poll_lag_seconds", "now - watermark after the last poll", registry=REGISTRY)
CONVERSATIONS_EVALUATED = Counter(
    "inboxpilot_conversations_evaluated_total", "Conversation snapshots evaluated", registry=REGISTRY
)
RULE_MATCHES = Counter("inboxpilot_rule_matches_total", "Rule matches", ["rule"], registry=REGISTRY)
FIRINGS = Counter(
    "inboxpilot_firings_total", "Firings by rule and final outcome", ["rule", "outcome"], registry=REGISTRY
)
ACTIONS = Counter(
    "inboxpilot_actions_total",
    "Actions executed by type and outcome",
    ["action", "outcome"],
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "inboxpilot_api_requests_total", "API requests", ["service", "method", "status"], registry=REGISTRY
)
API_LATENCY_S = Histogram(
    "inboxpilot_api_request_seconds",
    "API request latency",
    ["service", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RATE_LIMITED = Counter("inboxpilot_api_rate_limited_total", "429 answers received", registry=REGISTRY)
BACKOFF_S = Counter("inboxpilot_api_backoff_seconds_total", "Time spent backing off", registry=REGISTRY)
LEDGER_DEDUPES = Counter(
    "inboxpilot_ledger_dedupes_total", "Firings skipped because already claimed", ["rule"], registry=REGISTRY
)
RECONCILIATIONS = Counter(
    "inboxpilot_reconciliations_total",
    "Read-backs after an ambiguous failure, by result",
    ["result"],
    registry=REGISTRY,
)
ACTION_STALENESS_S = Histogram(
    "inboxpilot_action_staleness_seconds",
    "Time from the read an action was re-checked on to its API call",
    ["action"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
UNREAD_OLDEST_S = Gauge(
    "inboxpilot_unread_oldest_seconds",
    "How long the longest-waiting conversation whose snapshot read failed has stayed unread",
    registry=REGISTRY,
)
UNREAD_S = Histogram(
    "inboxpilot_unread_seconds",
    "How long a conversation stayed unread after a failed snapshot read, observed when read",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
TIMER_BACKLOG = Gauge("inboxpilot_timer_backlog", "Due-timers past their due time", registry=REGISTRY)
TIMER_LATENESS_S = Histogram(
    "inboxpilot_timer_lateness_seconds",
    "How late a due-timer was acted on",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "inboxpilot_dead_letters_total", "Messages dead-lettered", ["actor"], registry=REGISTRY
)
RULES_LOADED = Gauge("inboxpilot_rules_loaded", "Enabled rules in the active rule set", registry=REGISTRY)
RULES_LOAD_ERRORS = Gauge(
    "inboxpilot_rules_load_errors", "Errors in the last rules load (0 = clean)", registry=REGISTRY
)
IS_LEADER = Gauge("inboxpilot_is_leader", "1 when this scheduler holds the leader lease", registry=REGISTRY)
BREAKER_TRIPS = Counter(
    "inboxpilot_loop_breaker_trips_total",
    "Conversations taken out of automation because rules changed them too often (a loop)",
    registry=REGISTRY,
)
QUARANTINED = Gauge(
    "inboxpilot_quarantined_conversations",
    "Conversations set aside after their data broke a tick (retried later)",
    registry=REGISTRY,
)


def observe_api_response(service: str, method: str, status: int, seconds: float) -> None:
    """`ApiClient` on_response hook: request count, latency and 429s (status 0 = no answer)."""
    API_REQUESTS.labels(service=service, method=method, status=str(status)).inc()
    API_LATENCY_S.labels(service=service, method=method).observe(seconds)
    if status == 429:
        RATE_LIMITED.inc()


def observe_api_backoff(seconds: float) -> None:
    """`ApiClient` on_backoff hook: time a client thread is about to wait before a retry."""
    BACKOFF_S.inc(seconds)


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def metric_names() -> set[str]:
    """Every series name a scrape can show (`_total`, `_bucket`, ... included); for dashboards."""
    return {
        family.name + suffix for family in REGISTRY.collect() for suffix in _SUFFIXES.get(family.type, ("",))
    }

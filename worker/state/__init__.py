"""Every Redis keyspace the worker owns, one module each.

ledger (firings and their outcomes), timers (due evaluations), watermark (the
poll position), lease (the scheduler leader), quarantine (poisoned
conversations), sla_pauses (SLA clock pauses), api_pause (the shared API
back-off), routing (round-robin pointers and waiting lines), redis_conn (the
one way to connect). Nothing here speaks HTTP.
"""

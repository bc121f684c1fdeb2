"""Scheduling, in flow order: poller -> snapshots -> router -> planning (pure) -> tick -> scheduler.

Where the API's conversations become planned steps: the poll tick reads what
changed, builds snapshots, asks the rules what fires, plans it and claims it.
The Redis state these modules use lives in `worker.state`.
"""

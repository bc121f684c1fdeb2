"""The Conversations API simulator: contract parts A and B over an in-memory store."""

from __future__ import annotations

from worker.simulator.audit import AuditEntry
from worker.simulator.faults import FaultConfig
from worker.simulator.server import RunningServer, serve
from worker.simulator.simulator import DEFAULT_TOKEN, Simulator

__all__ = ["DEFAULT_TOKEN", "AuditEntry", "FaultConfig", "RunningServer", "Simulator", "serve"]

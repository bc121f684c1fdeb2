"""Execution: a queued step becomes API calls, exactly once per ledger item."""

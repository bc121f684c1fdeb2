"""`python -m worker` runs the same CLI as the `inboxpilot` console script."""

from __future__ import annotations

from worker.cli import main

if __name__ == "__main__":
    main()

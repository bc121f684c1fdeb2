"""The job queue: the broker and its middleware, the thin actors, dead letters."""

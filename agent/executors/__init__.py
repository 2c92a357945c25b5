"""Executors: the worker's backends (runc here; the hollow one is in `runtime.hollow`)."""

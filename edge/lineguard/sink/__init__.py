"""Collection sink: receives uncertain/audit frames from edge publishers and stores them crash-safely.

``config`` (pure pydantic), ``store`` (files + SQLite index), ``server`` (ZeroMQ loop + metrics).
Runs as its own process (``lineguard sink``), usually on a server beside the line, not on the edge box.
"""

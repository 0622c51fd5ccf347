"""Prometheus metrics shared by every long-running process (SPEC §7).

Each process calls :func:`serve_metrics` once at start; metric objects are module-level so that
every subsystem registers its own names in one registry.
"""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

__all__ = ["serve_metrics"]

log = logging.getLogger(__name__)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` on ``addr:port`` (port 0: skip). Returns the port served."""
    if port == 0:
        return 0
    start_http_server(port, addr=addr)
    log.info("serving /metrics on http://%s:%d/metrics", addr, port)
    return port

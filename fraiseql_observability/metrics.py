"""Prometheus metrics shared by every long-running process (SPEC §7).

Each process calls :func:`serve_metrics` once at start; metric objects are module-level so that
every subsystem registers its own names in one registry.
"""

from __future__ import annotations

import errno
import logging

from prometheus_client import start_http_server

from .errors import ConfigError

__all__ = ["serve_metrics", "serve_worker_metrics"]

log = logging.getLogger(__name__)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` on ``addr:port`` (port 0: skip). Returns the port served."""
    if port == 0:
        return 0
    start_http_server(port, addr=addr)
    log.info("serving /metrics on http://%s:%d/metrics", addr, port)
    return port


def serve_worker_metrics(port: int, addr: str, *, setting: str) -> int:
    """A worker's ``/metrics``: port 0 picks a free port; returns (and logs) the port served.

    A port already taken (a second worker on the host) or an address that cannot be bound is a
    :class:`ConfigError` of one line naming the port and ``setting`` (where to choose another).
    """
    try:
        server, _thread = start_http_server(port, addr=addr)
    except OSError as exc:
        where = f"{addr}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"/metrics port {port} is already in use on {addr} (another worker "
                              f"on this host?): choose a free one with {setting}, or 0 to pick "
                              "one") from None
        raise ConfigError(f"cannot serve /metrics on {where} ({setting}, metrics_bind): "
                          f"{exc.strerror or exc}") from None
    served = int(server.server_port)
    host = f"[{addr}]" if ":" in addr else addr
    log.info("serving /metrics on http://%s:%d/metrics", host, served)
    return served

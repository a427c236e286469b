"""What a slotswitch process needs from its host: sockets several processes accept on, the open-file
limit, and logging through the one escaping formatter (proxy.logtext).

Invariants:
- Every process (the main one and each worker) logs through `log_handler`, so no value from outside
  can start a line of its own or hide one.
- A refused config is logged one error a line, the running config kept.
"""

from __future__ import annotations

import logging
import resource
import socket
from typing import TextIO

from proxy.logtext import EscapingFormatter

log = logging.getLogger("slotswitch")


def reuseport_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT, so several processes can accept on one port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(4096)
    sock.setblocking(False)
    return sock


def refused(errors: list[str]) -> None:
    """A config that cannot be used: every error on a line of its own (each escaped: proxy.logtext)."""
    log.error("config reload refused, keeping the running config:" + "\n%s" * len(errors), *errors)


def log_handler(stream: TextIO | None = None) -> logging.Handler:
    """The handler every process logs through: to stderr, each line escaped (proxy.logtext), so that
    nothing from outside can forge or split a line."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), handlers=[log_handler()])


def raise_nofile() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one, as nginx's worker_rlimit_nofile and Go's runtime do.

    Every client and upstream connection is a file descriptor, and shells and services start with a
    soft limit of 1024: 10k idle keep-alive clients need the hard limit. Worker processes inherit it.
    Returns the (soft, hard) limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return soft, hard
    return hard, hard

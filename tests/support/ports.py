"""A free localhost port for a server that a test starts, safe when pytest-xdist runs tests in
several worker processes at once.

Binding port 0 and closing the socket (the usual trick) hands out a port from the kernel's
ephemeral range, where every outgoing connection on the machine also takes its local port:
between the close and the server's own bind, another worker's server or any client may take
it. So each worker takes ports from its own slice below the ephemeral range, starting at a
random place in it (other pytest sessions on the machine use the same slices) and never the
same port twice in a row; a port something is bound to already is passed over.
"""

from __future__ import annotations

import os
import random
import re
import socket
from itertools import count

FIRST, LAST = 20000, 32000  # below Linux's default ephemeral range (32768-60999)
SLICE = 500


def _worker_index() -> int:
    """gw0 -> 0, gw1 -> 1, ...; 0 when the tests run in one process."""
    found = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    return int(found.group(1)) if found else 0


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_slices = (LAST - FIRST) // SLICE
_base = FIRST + (_worker_index() % _slices) * SLICE
_next = count(random.randrange(SLICE))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing is bound to now, from this worker's slice."""
    for _ in range(SLICE):
        port = _base + next(_next) % SLICE
        if _is_free(port):
            return port
    raise RuntimeError(f"no free port in {_base}-{_base + SLICE - 1}: too many servers left running?")

"""The local server's ceilings on what one request may cost in memory and time.

The HTTP layer (``httpserver.py``) and the upload reader (``upload.py``) read them at call time, so a
test may lower one.
"""

from __future__ import annotations

MAX_BODY_BYTES = 8 * 1024 * 1024
# Memory ceilings: a decoded image costs 3 bytes a pixel, and every handler thread may hold a body.
MAX_PIXELS = 16_000_000  # 4K is 8.3 MP
MAX_CONNECTIONS = 32  # handler threads at once; more connections are refused with a 503
REQUEST_DEADLINE_S = 30.0  # a request, first byte to reply, and its body: a trickle cannot hold a thread
# Idle keep-alive connections (and stalled uploads) are dropped after this, so handler threads end.
CONNECTION_IDLE_TIMEOUT_S = 60.0
# The body of a request refused for its key is drained, so the connection stays usable, if it is this small
# and arrives this fast; otherwise the connection is closed.
DRAIN_MAX_BYTES = 1024 * 1024
DRAIN_DEADLINE_S = 5.0

"""Slow and vanishing clients: read deadlines for a request's headers and body, and a client that
leaves mid-body counted as such (not as a server error).

uvicorn bounds only the idle time between requests (--keep-alive-timeout); a client that sends
its headers or body a byte at a time would hold a connection, and a slot of the server, for as
long as it likes. Headers are read before the app sees the request, so that deadline cannot live
in ASGI middleware: SlowClientProtocol is uvicorn's httptools protocol with two timers, one from
the connection (or the first byte of a following request) to the end of the headers, one from
there to the end of the body. Either closes the connection, logs one line and counts it in
/metrics. The app learns of a closed connection as a ClientDisconnect while it reads the body:
install_disconnect_handler answers it (499, never sent) with one log line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Lifespan state key (the ASGI way for an app to hand the server something): a callable taking
# the reason a connection was cut, which the app's metrics count.
CLIENT_LEFT_HOOK = "gradloop.client_left"
_BODY_TIMED_OUT = "gradloop.body_timed_out"  # in a request's scope["state"]: counted already
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client abandoned; never sent
logger = logging.getLogger("uvicorn.error")  # the server's log, beside uvicorn's own lines


class SlowClientProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, header_timeout_s: float, body_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "header")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a following request on a kept-alive connection
            self._arm(self.header_timeout_s, "header")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm(self.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, seconds, part)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, seconds: float, part: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        logger.warning(
            "%s - closed the connection: the request's %s did not arrive within %g s (--%s-timeout)",
            client,
            "headers" if part == "header" else part,
            seconds,
            part,
        )
        if part == "body" and self.scope is not None:
            self.scope["state"][_BODY_TIMED_OUT] = True  # the app's ClientDisconnect is this one
        hook = self.app_state.get(CLIENT_LEFT_HOOK)
        if hook is not None:
            hook(f"{part}_timeout")
        self.transport.close()


def http_protocol(*, header_timeout_s: float, body_timeout_s: float) -> Any:
    """uvicorn.Config(http=...): the protocol with these deadlines. A partial of a module-level
    class pickles, so `serve --workers N` hands it to its worker processes as it is."""
    return functools.partial(SlowClientProtocol, header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s)


def install_disconnect_handler(app: FastAPI, client_left: Any) -> None:
    """A client that closes the connection before its body is in: one log line and a count
    (`client_left("disconnect")`), not an ASGI traceback and a 500."""

    @app.exception_handler(ClientDisconnect)
    async def _client_disconnected(request: Request, exc: ClientDisconnect) -> Response:
        if not request.scope.get("state", {}).get(_BODY_TIMED_OUT):  # else the protocol logged it
            client = request.client
            who = f"{client.host}:{client.port}" if client else "a client"
            logger.warning(
                "%s - %s %s: the client disconnected before sending the whole body",
                who,
                request.method,
                request.url.path,
            )
            client_left("disconnect")
        return Response(status_code=CLIENT_CLOSED_REQUEST)

"""What stands in front of every /v1 route: bearer-token auth and the request body limit.

Auth runs as a router dependency (with the check that refuses unknown query parameters), before
any path or body is looked at, so a request without a valid token learns nothing about jobs. The
operator's routes (/metrics, /readyz, the API docs) ask for the token too, unless the service
runs with --public-metrics; /healthz is always open, for liveness probes. Tokens are compared in
constant time, and every accepted token is compared (no early exit that would tell which one was
close).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gradloop.api.problems import problem_response

bearer = HTTPBearer(auto_error=False, description="GRADLOOP_API_TOKEN (one of its comma-separated tokens)")


def token_ok(given: str, accepted: list[str]) -> bool:
    ok = False
    for token in accepted:
        ok |= hmac.compare_digest(given.encode(), token.encode())
    return ok


# One `async def` dependency for both checks although it never awaits: FastAPI runs a plain
# `def` dependency in its thread pool (two thread hops per request measured about a third of
# a submit's server time), and each dependency costs its own resolution on every request.
async def guard(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """The /v1 routers' dependency: a valid bearer token when the service has tokens (checked
    first, so a client without one learns nothing else), then no unknown query parameters."""
    require_token(request, credentials)
    reject_unknown_query(request)


async def operator_guard(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """/metrics, /readyz and the API docs: they tell a stranger what runs here and how busy it
    is, so they take the token as well unless the operator made them public."""
    if not request.app.state.settings.public_metrics:
        require_token(request, credentials)


def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    accepted: list[str] = request.app.state.settings.tokens
    if not accepted:
        return
    if credentials is None or credentials.scheme.lower() != "bearer" or not token_ok(credentials.credentials, accepted):
        raise HTTPException(
            401,
            "a valid bearer token is required: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not take: `?stauts=failed` would otherwise list
    every job as if no filter had been asked for."""
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed = {p.alias for p in _query_params(dependant)}
    unknown = sorted(set(request.query_params.keys()) - allowed)
    if unknown:
        hint = f"; allowed: {', '.join(sorted(allowed))}" if allowed else "; this route takes none"
        raise HTTPException(422, f"unknown query parameter {unknown[0]!r}{hint}")


def _query_params(dependant: Any) -> list[Any]:
    found = list(dependant.query_params)
    for sub in dependant.dependencies:
        found += _query_params(sub)
    return found


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over `limit` bytes, whether or not the client sent Content-Length."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            f"the request body is over the limit of {self.limit} bytes; send a smaller config",
            instance=scope.get("path"),
        )
        await response(scope, receive, send)

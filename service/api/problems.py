"""Problem details (RFC 9457): every error the API answers is application/problem+json.

A config error is 422 and lists each problem with its dotted field path, the same message the
CLI prints, and the line when the body was YAML. A body is bounded whatever the input: at most
MAX_PROBLEM_ERRORS field errors (the detail says how many more there were), each text cut short.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gradloop.errors import ConfigError, FieldError, GradloopError, PluginNotFoundError
from gradloop.jobs.records import IdempotencyConflictError, InvalidCursorError, JobConflictError, JobNotFoundError

PROBLEM_TYPE = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# A hostile config can make thousands of errors, each echoing a long key or value back.
MAX_PROBLEM_ERRORS = 50
MAX_PROBLEM_TEXT = 500  # characters of one message or path
MAX_PROBLEM_DETAIL = 2000


class FieldProblem(BaseModel):
    path: str
    message: str
    line: int | None = None


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = None


def problem_response(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    type_: str = "about:blank",
) -> JSONResponse:
    if errors is not None and len(errors) > MAX_PROBLEM_ERRORS:
        detail += f" (the first {MAX_PROBLEM_ERRORS} of {len(errors)} errors; fix these and submit again)"
        errors = errors[:MAX_PROBLEM_ERRORS]
    body: dict[str, Any] = {
        "type": type_,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": _cut(detail, MAX_PROBLEM_DETAIL),
    }
    if instance:
        body["instance"] = _cut(instance, MAX_PROBLEM_TEXT)
    if errors is not None:
        body["errors"] = [
            {"path": _cut(e.path, MAX_PROBLEM_TEXT), "message": _cut(e.message, MAX_PROBLEM_TEXT), "line": e.line}
            for e in errors
        ]
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_TYPE: {}}, "description": _TITLES[code]}
    for code in (400, 401, 404, 409, 413, 415, 422)
}


def _status_of(exc: GradloopError) -> int:
    if isinstance(exc, (JobNotFoundError, PluginNotFoundError)):
        return 404
    if isinstance(exc, JobConflictError):
        return 409
    if isinstance(exc, InvalidCursorError):
        return 400
    return 422  # ConfigError, IdempotencyConflictError and the rest: the input cannot be used


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(GradloopError)
    async def _gradloop(request: Request, exc: GradloopError) -> JSONResponse:
        errors = exc.errors if isinstance(exc, ConfigError) else None
        detail = "the config is invalid; see errors for each field" if errors else str(exc)
        if isinstance(exc, IdempotencyConflictError):
            detail = str(exc)
        return problem_response(_status_of(exc), detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "error")
        return problem_response(
            exc.status_code, detail, instance=request.url.path, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldError(".".join(str(p) for p in e.get("loc", ())), e.get("msg", "invalid value")) for e in exc.errors()
        ]
        return problem_response(422, "the request is invalid; see errors", instance=request.url.path, errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(
            500, f"internal error ({type(exc).__name__}); the service logged it", instance=request.url.path
        )

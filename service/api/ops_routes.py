"""Plugins, health, metrics and the API's docs: /v1/plugins..., /healthz, /readyz, /metrics,
/openapi.json, /docs, /redoc. All but /healthz take the token when the service has one (the
operator's routes unless --public-metrics)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gradloop import registry
from gradloop.api.guard import guard, operator_guard
from gradloop.api.problems import PROBLEM_RESPONSES, problem_response

plugins_router = APIRouter(
    prefix="/v1/plugins",
    tags=["plugins"],
    dependencies=[Depends(guard)],
    responses={k: PROBLEM_RESPONSES[k] for k in (401, 422)},
)
ops_router = APIRouter(tags=["operations"])
_OPERATOR_ONLY = [Depends(operator_guard)]
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: PROBLEM_RESPONSES[401]}
# FastAPI's own /openapi.json, /docs and /redoc take no dependencies (create_app turns them
# off); these are the same pages behind the operator's guard.
docs_router = APIRouter(dependencies=_OPERATOR_ONLY, include_in_schema=False)


@plugins_router.get("", summary="Every registered plugin, by kind")
def all_plugins() -> dict[str, list[dict[str, Any]]]:
    return {kind: [p.describe() for p in registry.registry(kind)] for kind in registry.KINDS}


@plugins_router.get("/{kind}", summary="The plugins of one kind", responses={404: PROBLEM_RESPONSES[404]})
def plugins_of(kind: str) -> list[dict[str, Any]]:
    return [p.describe() for p in registry.registry(kind)]


@plugins_router.get(
    "/{kind}/{name}",
    summary="One plugin: description, options and their JSON schema",
    responses={404: PROBLEM_RESPONSES[404]},
)
def plugin(kind: str, name: str) -> dict[str, Any]:
    return registry.registry(kind).get(name).describe()


@ops_router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops_router.get(
    "/readyz",
    summary="The database answers and the workers are alive",
    dependencies=_OPERATOR_ONLY,
    responses={503: {"description": "not ready"}, **_UNAUTHORIZED},
)
async def readyz(request: Request) -> Response:
    store = request.app.state.store
    pool = request.app.state.pool
    db_ok = await anyio.to_thread.run_sync(store.ping)
    workers_ok = pool is None or pool.alive()
    if pool is not None:
        workers = "ok" if workers_ok else "down"
    else:  # another process of this service (serve --workers) runs the jobs, or none does
        workers = "in another process" if request.app.state.pool_elsewhere else "disabled"
    body = {"database": "ok" if db_ok else "unreachable", "workers": workers}
    if db_ok and workers_ok:
        return JSONResponse({"status": "ready", **body})
    problems = [k for k, v in body.items() if v in ("unreachable", "down")]
    return problem_response(503, f"not ready: {', '.join(problems)} ({body})")


@ops_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=_OPERATOR_ONLY,
    responses={200: {"content": {"text/plain": {}}}, **_UNAUTHORIZED},
)
async def metrics(request: Request) -> Response:
    data = await anyio.to_thread.run_sync(request.app.state.metrics.exposition)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


@docs_router.get("/openapi.json")
def openapi_schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@docs_router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{request.app.title} - Swagger UI")


@docs_router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=f"{root}/openapi.json", title=f"{request.app.title} - ReDoc")

"""/v1/jobs: submit, list, inspect, cancel, follow (SSE), and read the log and files of training jobs.

Handlers are plain `def` where they touch the database (FastAPI runs them in its thread pool);
the event stream is async and polls the store from a worker thread.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from gradloop.api.files import list_files, open_regular, read_range, safe_path
from gradloop.api.guard import guard
from gradloop.api.problems import PROBLEM_RESPONSES
from gradloop.api.schemas import JobOut, JobPage, JobStatus, job_out, json_response
from gradloop.api.submit import (
    UnsupportedMediaTypeError,
    parse_body,
    request_hash,
)
from gradloop.config import RunConfig
from gradloop.fitcheck import checked
from gradloop.http_policy import check_http_config, job_procs
from gradloop.jobs.events import job_events
from gradloop.jobs.store import JobStore
from gradloop.jobs.worker import job_dir, log_path

MAX_LOG_CHUNK = 1024 * 1024
MAX_FILE_CHUNK = 16 * 1024 * 1024  # a checkpoint is read in chunks of this (X-Next-Offset)


router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    dependencies=[Depends(guard)],
    responses={k: PROBLEM_RESPONSES[k] for k in (401, 422)},
)


def _store(request: Request) -> JobStore:
    return request.app.state.store


_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]{3,35}$")
_SHORT = re.compile(r"^[0-9a-f]{1,3}$")  # the start of an id, too short to take as one


def _uuid(job_id: str, store: JobStore | None = None) -> str:
    """Job ids are UUIDs, or a unique prefix of one (as `gradloop jobs` shows it, like git's
    short hashes); anything else cannot name a job (and never reaches a file path)."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        pass
    prefix = job_id.lower()
    if store is not None and _SHORT.match(prefix):
        raise HTTPException(
            404,
            f"{job_id!r} is too short to name a job; give at least 4 characters of its id (gradloop jobs shows 8)",
        )
    if store is None or not _PREFIX.match(prefix):
        raise HTTPException(404, f"no job has id {job_id!r}; job ids are UUIDs from POST /v1/jobs") from None
    found = store.ids_starting_with(prefix, limit=10)
    if not found:
        raise HTTPException(404, f"no job has an id starting with {job_id!r}; list jobs with GET /v1/jobs")
    if len(found) > 1:
        listed = ", ".join(found[:9]) + (", ..." if len(found) > 9 else "")
        raise HTTPException(409, f"{job_id!r} is the start of several job ids ({listed}); give more of the id")
    return found[0]


_YAML_BODY = {
    "application/yaml": {
        "schema": {"type": "string", "description": "the run config as YAML (the file `gradloop run` takes)"}
    }
}
_JSON_BODY = {
    "application/json": {"schema": {"type": "object", "description": "the run config (see `gradloop validate --json`)"}}
}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a training job",
    responses={
        202: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **{k: PROBLEM_RESPONSES[k] for k in (413, 415, 422)},
        503: {"description": "the service is shutting down"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {**_JSON_BODY, **_YAML_BODY}}},
)
async def submit_job(
    request: Request,
    priority: Annotated[
        int, Query(ge=-1000, le=1000, description="higher runs first; equal priorities run oldest first")
    ] = 0,
    idempotency_key: Annotated[
        str | None, Header(max_length=200, description="retry-safe submission: one key makes one job")
    ] = None,
) -> Response:
    if idempotency_key is not None and not idempotency_key.strip():
        # A blank key would be one key shared by every client that sends it blank.
        raise HTTPException(422, "the Idempotency-Key header is empty; send a unique key (e.g. a UUID) or leave it out")
    body = await request.body()  # the body limit middleware has already bounded it
    app = request.app
    pool = app.state.pool
    if app.state.draining or (pool is not None and pool._draining.is_set()):
        raise HTTPException(
            503,
            "the service is shutting down and takes no new jobs; submit again once it is back",
            headers={"Retry-After": "5"},
        )
    settings = app.state.settings
    content_type = request.headers.get("content-type", "")
    # Parsing and validating run in a worker thread, whatever the body's size: a large YAML
    # is CPU work that would otherwise hold up every other request on the event loop.
    raw, config = await anyio.to_thread.run_sync(
        _validated, body, content_type, settings, limiter=app.state.parse_limiter
    )
    store = _store(request)
    job_args = {
        "request_hash": request_hash(raw, priority),
        "name": config.name,
        "device": config.device,
        "priority": priority,
        "idempotency_key": idempotency_key,
        "max_attempts": settings.max_attempts,
        "procs": job_procs(config),
    }
    fields = config.to_dict()
    # SQLite: written in place (if another process is writing, after a kernel hand-off of its
    # lock, well under a millisecond). When another thread of this process holds the lock, or on
    # PostgreSQL (network round trips), the write waits in a worker thread instead.
    done = store.submit_now(fields, **job_args)
    job, created = (
        done
        if done is not None
        else await anyio.to_thread.run_sync(functools.partial(store.submit, fields, **job_args))
    )
    if created and pool is not None:
        pool.wake()
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(job_out(job, mlflow_ui=settings.mlflow_ui), status_code=202, headers=headers)


def _validated(body: bytes, content_type: str, settings: Any) -> tuple[dict[str, Any], RunConfig]:
    try:
        raw, lines = parse_body(body, content_type)
    except UnsupportedMediaTypeError as exc:
        raise HTTPException(415, str(exc)) from None
    return raw, _with_fit_check(raw, lines, settings)


def _with_fit_check(raw: dict[str, Any], lines: dict[str, int], settings: Any) -> RunConfig:
    """The service's HTTP policy (gradloop.http_policy), and the model/data/loss fit in the same
    422, so that a job that would fail on it is refused now rather than FAILED later. The fit
    check reads no data here: the dataset's shape comes from its options (built-in datasets say
    how) or from an earlier check; a dataset that cannot say is checked when its job starts,
    before its first step."""
    policy = settings.policy()
    return checked(lambda: check_http_config(raw, policy, lines=lines), raw, lines=lines, probe=False)


@router.get(
    "", response_model=JobPage, summary="List jobs, newest first", responses={400: {"description": "bad cursor"}}
)
def list_jobs(
    request: Request,
    status: Annotated[
        list[JobStatus] | None, Query(description="only jobs in these states (repeat the parameter for several)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")] = None,
) -> JobPage:
    jobs, next_cursor = _store(request).list_page(statuses=status or (), limit=limit, cursor=cursor)
    ui = request.app.state.settings.mlflow_ui
    return JobPage(jobs=[job_out(j, mlflow_ui=ui) for j in jobs], next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="A job: status, progress, metrics, error, MLflow run",
    responses={404: PROBLEM_RESPONSES[404]},
)
def get_job(request: Request, job_id: str) -> Response:
    job = _store(request).require(_uuid(job_id, _store(request)))
    return json_response(job_out(job, mlflow_ui=request.app.state.settings.mlflow_ui, with_config=True))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Cancel a job: queued ends at once, running is stopped at a step boundary",
    responses={404: PROBLEM_RESPONSES[404], 409: PROBLEM_RESPONSES[409]},
)
def cancel_job(request: Request, job_id: str) -> JobOut:
    job = _store(request).cancel(_uuid(job_id, _store(request)))
    if request.app.state.pool is not None:
        request.app.state.pool.wake()
    return job_out(job, mlflow_ui=request.app.state.settings.mlflow_ui)


@router.get(
    "/{job_id}/events",
    summary="Server-Sent Events: state changes, progress and metrics; ends after a terminal state",
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}, 404: PROBLEM_RESPONSES[404]},
    response_class=Response,
)
def job_event_stream(
    request: Request,
    job_id: str,
    last_event_id: Annotated[str | None, Header(max_length=20, description="resume after this event id")] = None,
) -> Response:
    job_id = _uuid(job_id, _store(request))
    store = _store(request)
    store.require(job_id)
    after = 0
    if last_event_id:
        try:
            after = max(0, int(last_event_id))
        except ValueError:
            after = 0  # not one of ours: replay from the start rather than fail the reconnect
    return EventSourceResponse(job_events(store, job_id, after), ping=15, headers={"Cache-Control": "no-store"})


@router.get(
    "/{job_id}/logs",
    summary="The job's own log; ?offset= continues where the last read ended (X-Next-Offset)",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, 404: PROBLEM_RESPONSES[404]},
    response_class=Response,
)
def job_logs(
    request: Request,
    job_id: str,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_CHUNK)] = 256 * 1024,
) -> Response:
    job_id = _uuid(job_id, _store(request))
    job = _store(request).require(job_id)
    jobs_dir = request.app.state.settings.jobs_dir
    # The log is opened without following links: a job.log that points elsewhere reads as 404.
    data, size = read_range(log_path(jobs_dir, job_id), offset, limit)
    start = min(offset, size)
    headers = {"X-Next-Offset": str(start + len(data)), "X-Log-Size": str(size), "X-Job-Status": job.status}
    return Response(data, media_type="text/plain; charset=utf-8", headers=headers)


class JobFile(BaseModel):
    path: str = Field(description="relative to the job's directory")
    size: int


class JobFiles(BaseModel):
    files: list[JobFile]
    truncated: bool = Field(description="true when the job has more files than one listing shows")


@router.get(
    "/{job_id}/artifacts",
    response_model=JobFiles,
    summary="The files in the job's directory (log, run dirs, checkpoints)",
    responses={404: PROBLEM_RESPONSES[404]},
)
def job_artifacts(request: Request, job_id: str) -> JobFiles:
    job_id = _uuid(job_id, _store(request))
    _store(request).require(job_id)
    files, truncated = list_files(job_dir(request.app.state.settings.jobs_dir, job_id))
    return JobFiles(files=[JobFile.model_validate(f) for f in files], truncated=truncated)


@router.get(
    "/{job_id}/artifacts/{path:path}",
    summary="One file of the job, by its path relative to the job's directory",
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        400: PROBLEM_RESPONSES[400],
        404: PROBLEM_RESPONSES[404],
    },
    response_class=Response,
)
def job_artifact(
    request: Request,
    job_id: str,
    path: str,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_FILE_CHUNK)] = MAX_FILE_CHUNK,
) -> Response:
    job_id = _uuid(job_id, _store(request))
    _store(request).require(job_id)
    resolved = safe_path(job_dir(request.app.state.settings.jobs_dir, job_id), path)
    try:
        fd = open_regular(resolved)
    except FileNotFoundError:
        raise HTTPException(404, f"the job has no file {path!r}") from None
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(min(offset, size))
        data = fh.read(limit)
    start = min(offset, size)
    headers = {"X-Next-Offset": str(start + len(data)), "X-File-Size": str(size)}
    return Response(data, media_type="application/octet-stream", headers=headers)

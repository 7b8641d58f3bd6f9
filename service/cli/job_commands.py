"""The job-service commands of `gradloop`: serve, submit, jobs, status, cancel, logs.

`serve` runs the FastAPI app under uvicorn; the others are HTTP clients of a running service
(server and token from --server/--token or GRADLOOP_SERVER/GRADLOOP_API_TOKEN). `submit --wait`
follows the job's event stream with a progress bar and exits with the job's outcome:
0 succeeded, 1 failed, 130 cancelled, 2 the config was refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradloop.api.settings import DEFAULT_PORT, DEFAULT_STATE_DIR, ServiceSettings, tokens_from_env
from gradloop.jobs.job_log import DEFAULT_MAX_LOG_BYTES
from gradloop.limits import ServiceLimits

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 1, 2, 130
ServerOption = typer.Option(None, "--server", help="service URL (default: $GRADLOOP_SERVER or http://127.0.0.1:8000)")
TokenOption = typer.Option(None, "--token", help="bearer token (default: $GRADLOOP_API_TOKEN)")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 in a container)"),
    port: int = typer.Option(DEFAULT_PORT, "--port"),
    state_dir: Path = typer.Option(
        Path(DEFAULT_STATE_DIR), "--state-dir", help="job store, job logs and run directories"
    ),
    db: str | None = typer.Option(
        None,
        "--db",
        envvar="GRADLOOP_DB",
        help="database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in the state dir); "
        "pass one with a password as $GRADLOOP_DB, which other users cannot read the way they read a command line",
    ),
    jobs_dir: Path | None = typer.Option(
        None, "--jobs-dir", help="per-job directories; a shared volume when several hosts share one database"
    ),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="configs' data paths must stay under it (default: $GRADLOOP_DATA_ROOT or .)"
    ),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow store for jobs (default: sqlite in the state dir)"
    ),
    mlflow_ui: str | None = typer.Option(None, "--mlflow-ui", help="MLflow UI address, for links to each job's run"),
    max_concurrent: int | None = typer.Option(
        None, "--max-concurrent", min=0, help="jobs at once (default: one per visible GPU, else 1; 0: submit-only)"
    ),
    slots: int | None = typer.Option(
        None,
        "--slots",
        min=1,
        help="processes this host runs at once; a job takes one per rank "
        "(default: one per visible GPU, else one per CPU)",
    ),
    max_procs_per_job: int | None = typer.Option(
        None,
        "--max-procs-per-job",
        min=1,
        help="limit: processes (distributed.nproc_per_node) one job may start (default: the host's slots)",
    ),
    cancel_grace: float = typer.Option(
        30.0,
        "--cancel-grace",
        min=0,
        help="seconds between SIGTERM and SIGKILL when cancelling a job or stopping the service",
    ),
    lease: float = typer.Option(30.0, "--lease", min=0.5, help="seconds a job's lease lasts without a heartbeat"),
    max_attempts: int = typer.Option(3, "--max-attempts", min=1, help="times a job whose worker died is retried"),
    max_body: int = typer.Option(1024 * 1024, "--max-body", min=1, help="request body limit in bytes"),
    worker_id: str | None = typer.Option(
        None, "--worker-id", help="name of this service's worker in job records (default: host-pid-random)"
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="API processes on one port (jobs still run in one of them); about one per core"
    ),
    log_level: str = typer.Option("info", "--log-level"),
    max_epochs: int = typer.Option(10_000, "--max-epochs", min=1, help="limit: epochs one submitted job may ask for"),
    max_steps: int = typer.Option(10_000_000, "--max-steps", min=1, help="limit: optimizer steps of one job"),
    max_dataset_samples: int = typer.Option(
        10_000_000, "--max-dataset-samples", min=1, help="limit: samples of a generated dataset"
    ),
    max_dataset_bytes: int = typer.Option(
        10 * 1024**3, "--max-dataset-bytes", min=1, help="limit: size of a dataset file"
    ),
    max_model_params: int = typer.Option(
        1_000_000_000, "--max-model-params", min=1, help="limit: parameters of a job's model"
    ),
    max_num_workers: int = typer.Option(4, "--max-num-workers", min=0, help="limit: a job's data.num_workers"),
    max_keep_checkpoints: int = typer.Option(
        10, "--max-keep-checkpoints", min=1, help="limit: a job's trainer.keep_checkpoints"
    ),
    min_histogram_every: int = typer.Option(
        10, "--min-histogram-every", min=1, help="limit: a job's tracking.histogram_every, unless 0 (none)"
    ),
    max_job_disk: int = typer.Option(
        20 * 1024**3, "--max-job-disk", min=1, help="limit: bytes a job may write, by an upper estimate"
    ),
    max_sweep_children: int = typer.Option(
        256, "--max-sweep-children", min=1, help="limit: combinations in a job's sweep grid"
    ),
    allow_tracking_uri: list[str] | None = typer.Option(
        None,
        "--allow-tracking-uri",
        metavar="URI",
        help="a tracking server jobs may name as tracking.uri (repeat for several; default: only the service's store)",
    ),
    public_metrics: bool = typer.Option(
        False, "--public-metrics", help="with a token set, still serve /metrics, /readyz and /docs without one"
    ),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", min=0.001, help="seconds a client has to send a request's headers"
    ),
    body_timeout: float = typer.Option(
        30.0, "--body-timeout", min=0.001, help="seconds a client has to send a request's body after its headers"
    ),
    keep_alive_timeout: float = typer.Option(
        5.0, "--keep-alive-timeout", min=0.001, help="seconds an idle connection stays open"
    ),
    max_log_bytes: int = typer.Option(
        DEFAULT_MAX_LOG_BYTES,
        "--max-log-bytes",
        min=1,
        help="limit: size of one job's log; past it the log stops growing (a last line says so) and the job goes on",
    ),
) -> None:
    """Run the HTTP job service (FastAPI under uvicorn)."""
    # The service's stack (FastAPI, SQLAlchemy, uvicorn): a second to import, so only for serve.
    import uvicorn

    from gradloop.api.app import create_app

    settings = ServiceSettings(
        state_dir=state_dir,
        db=db,
        jobs_dir=jobs_dir,
        tracking_uri=tracking_uri,
        mlflow_ui=mlflow_ui,
        tokens=tokens_from_env(),
        max_body_bytes=max_body,
        max_concurrent=max_concurrent,
        slots=slots,
        lease_s=lease,
        cancel_grace_s=cancel_grace,
        max_attempts=max_attempts,
        worker_id=worker_id,
        max_log_bytes=max_log_bytes,
        limits=ServiceLimits(
            max_epochs=max_epochs,
            max_steps=max_steps,
            max_dataset_samples=max_dataset_samples,
            max_dataset_bytes=max_dataset_bytes,
            max_model_params=max_model_params,
            max_num_workers=max_num_workers,
            max_keep_checkpoints=max_keep_checkpoints,
            min_histogram_every=min_histogram_every,
            max_job_disk=max_job_disk,
            max_sweep_children=max_sweep_children,
            max_procs_per_job=max_procs_per_job,
        ),
        allowed_tracking_uris=allow_tracking_uri or [],
        **({"data_root": data_root} if data_root is not None else {}),
        public_metrics=public_metrics,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        keep_alive_timeout_s=keep_alive_timeout,
    )
    _print_banner(settings, host=host, port=port, workers=workers)
    if workers > 1:
        _serve_workers(settings, workers, host=host, port=port, log_level=log_level)
        return
    app = create_app(settings)
    # Open event streams must not hold a stopping service past its grace period.
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5, **_connection_limits(settings)
    )
    _draining_server(config, app, cancel_grace).run()


def _print_banner(settings: Any, *, host: str, port: int, workers: int) -> None:
    """Where the service listens and keeps its state, and what start-up waits for."""
    resolved = settings.resolved()
    shown_host = f"[{host}]" if ":" in host else host
    rows = [
        ("url", f"http://{shown_host}:{port}"),
        ("state dir", str(resolved.state_dir)),
        ("job store", _hide_password(resolved.db)),
        (
            "MLflow store",
            _hide_password(resolved.tracking_uri) + " (runs of jobs go here; MLFLOW_TRACKING_URI is not used)",
        ),
        ("data root", str(resolved.data_root)),
        ("API processes", str(workers)),
        (
            "jobs at once",
            "one per visible GPU, else 1" if settings.max_concurrent is None else str(settings.max_concurrent),
        ),
        (
            "slots",
            "one per visible GPU, else one per CPU" if settings.slots is None else str(settings.slots),
        ),
    ]
    err.print("gradloop serve", style="bold", highlight=False)
    for k, v in rows:
        err.print(f"  {k:<13}  {v}", soft_wrap=True, markup=False, highlight=False)
    err.print(
        "starting: migrating the job store, loading the plugins (imports torch), starting the job workers; "
        "GET /readyz answers 200 once they are done",
        soft_wrap=True,
        highlight=False,
    )


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url  # SQLAlchemy: only when a database URL is shown

    try:
        return make_url(url).render_as_string(hide_password=True) if "://" in url and "@" in url else url
    except Exception:
        return url


def _serve_workers(settings: Any, workers: int, *, host: str, port: int, log_level: str) -> None:
    """uvicorn's supervisor over `workers` processes of the app (see service/api_workers.py).
    SIGTERM to this process stops every worker; the one running jobs drains them first (they
    checkpoint and go back to the queue), as a single-process service does."""
    # The service's stack: only for serve (as above).
    import uvicorn

    from gradloop.api.workers import SETTINGS_ENV
    from gradloop.jobs.store import JobStore

    settings = settings.resolved()
    # Migrate once here, before the workers start: N processes migrating one SQLite file at
    # the same moment could each try to create the same tables.
    store = JobStore(settings.db)
    try:
        store.migrate()
    finally:
        store.close()
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    # Counters of every worker process, added up at each scrape (prometheus_client's
    # multiprocess mode); emptied at each start, as its documentation asks.
    metrics_dir = settings.state_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    uvicorn.run(
        "gradloop.api.workers:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        **_connection_limits(settings),
    )


def _connection_limits(settings: Any) -> dict[str, Any]:
    """uvicorn's settings for slow clients: its own keep-alive bound, our header and body deadlines."""
    from gradloop.api.timeouts import http_protocol  # the service's stack: only for serve

    return {
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "http": http_protocol(header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s),
    }


def _draining_server(config: Any, app: Any, grace_s: float) -> Any:
    """uvicorn's server, except that SIGTERM/SIGINT first drain the job pool while the API still
    answers (submits get 503, reads work), and only then stop uvicorn. Running jobs checkpoint and
    go back to the queue; the process exits within the grace period plus the few seconds uvicorn
    gives open connections. A second signal stops without waiting for the drain."""
    import uvicorn  # the service's stack: only for serve

    class DrainingServer(uvicorn.Server):
        drain_started = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            pool = getattr(app.state, "pool", None)
            if self.drain_started or pool is None or self.should_exit:
                super().handle_exit(signal.SIGINT if self.drain_started else sig, frame)
                return
            self.drain_started = True
            app.state.draining = True
            threading.Thread(target=self._drain, args=(pool,), name="gradloop-drain", daemon=True).start()

        def _drain(self, pool: Any) -> None:
            try:
                pool.drain(grace_s)
            finally:
                self.should_exit = True

    return DrainingServer(config)


# -- client -------------------------------------------------------------------------------


class Client:
    def __init__(self, server: str | None, token: str | None, timeout: float = 30.0):
        import httpx  # the HTTP client: only for the commands that talk to a service

        self.base = (server or os.environ.get("GRADLOOP_SERVER") or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")
        token = token if token is not None else (os.environ.get("GRADLOOP_API_TOKEN", "").split(",")[0].strip() or None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx  # (see __init__)

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _fail(
                f"cannot reach the service at {self.base} ({type(exc).__name__}); "
                "start it with `gradloop serve` or pass --server",
                EXIT_FAILED,
            )
        if response.status_code >= 400:
            _fail_problem(response)
        return response

    def events(self, job_id: str, last_id: str | None = None) -> Generator[tuple[str, str, dict[str, Any]], None, None]:
        """(id, event, data) from the job's SSE stream, reconnecting with Last-Event-ID."""
        import httpx  # (see __init__)

        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None) as response:
                    if response.status_code >= 400:
                        response.read()
                        _fail_problem(response)
                    event, data, ident = "message", "", None
                    for line in response.iter_lines():
                        if line.startswith("id:"):
                            ident = line[3:].strip()
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data += line[5:].strip()
                        elif line == "" and data:
                            last_id = ident or last_id
                            yield last_id or "", event, json.loads(data)
                            event, data = "message", ""
                return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                time.sleep(1.0)  # the stream dropped: resume after the last event we saw


def _fail(message: str, code: int) -> None:
    # As text, not markup (a message may quote `[...]`); soft_wrap: a URL or path in it is never cut.
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fail_problem(response: Any) -> None:
    try:
        problem = response.json()
    except ValueError:
        _fail(f"HTTP {response.status_code}: {response.text[:300]}", EXIT_FAILED)
    lines = [problem.get("detail", f"HTTP {response.status_code}")]
    for e in problem.get("errors") or []:
        where = e.get("path") or "<config>"
        if e.get("line"):
            where += f" (line {e['line']})"
        lines.append(f"  - {where}: {e.get('message')}")
    _fail("\n".join(lines), EXIT_USAGE if response.status_code in (400, 413, 415, 422) else EXIT_FAILED)


@app.command()
def submit(
    config: Path = typer.Argument(..., help="a run config (YAML or JSON), as `gradloop run` takes it"),
    server: str | None = ServerOption,
    token: str | None = TokenOption,
    priority: int = typer.Option(0, "--priority"),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="resubmitting with the same key returns the same job"
    ),
    wait: bool = typer.Option(
        False, "--wait", help="follow the job to its end with a progress bar; exit with its outcome"
    ),
) -> None:
    """Submit CONFIG to the job service; print the job id."""
    try:
        body = config.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {config}: {exc.strerror}; check the path", EXIT_USAGE)
    ctype = "application/json" if config.suffix.lower() == ".json" else "application/yaml"
    headers = {"Content-Type": ctype}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    client = Client(server, token)
    job = client.call("POST", "/v1/jobs", content=body, headers=headers, params={"priority": priority}).json()
    print(job["id"])
    if wait:
        try:
            code = _follow(client, job["id"])
        except KeyboardInterrupt:
            # Ctrl-C stops the watching, not the job: say so, and how to stop the job too.
            err.print(
                f"detached; the job goes on: gradloop cancel {job['id']} to stop it", highlight=False, soft_wrap=True
            )
            code = 0
        raise typer.Exit(code)


def _steps_text(total: Any, done: Any, status: str) -> str:
    """`12/560 steps` once the job knows its length; its state until then (never `0/None`)."""
    if isinstance(total, int) and total > 0:
        return f"{done or 0}/{total} steps"
    return status


def _follow(client: Client, job_id: str) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # only while following a job

    status = "queued"
    # Bounded text columns and a bar that shrinks first: readable at 80 columns.
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=None),
        TextColumn("{task.fields[steps]}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        expand=False,
    ) as bar:
        task = bar.add_task(f"job {job_id[:8]}", total=None, steps=status, info="")
        # Closed here, not at interpreter exit: a Ctrl-C leaves the stream open otherwise.
        events = contextlib.closing(client.events(job_id))
        with events as stream:
            for _, event, data in stream:
                if event == "progress":
                    metrics = data.get("metrics") or {}
                    info = f"epoch {data.get('epoch')}/{data.get('epochs')}" + (
                        f" loss {_fmt_metric(metrics['train/loss'])}" if "train/loss" in metrics else ""
                    )
                    total = data.get("total_steps") or None
                    steps = _steps_text(total, data.get("step"), status)
                    bar.update(task, total=total, completed=data.get("step") or 0, steps=steps, info=info)
                elif event == "state":
                    status = data.get("status", status)
                    if bar.tasks[0].total is None:
                        bar.update(task, steps=status)
                    else:
                        bar.update(task, info=status)
    job = client.call("GET", f"/v1/jobs/{job_id}").json()
    _print_job(job)
    return {"succeeded": 0, "cancelled": EXIT_CANCELLED}.get(job["status"], EXIT_FAILED)


def _fmt_metric(value: Any) -> str:
    """A job's metric for a person; the service sends null for one that was not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "not finite"
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


OutputOption = typer.Option("table", "--output", "-o", help="table (for people) or json (for scripts)")
JsonOption = typer.Option(False, "--json", help="the same as --output json")


def _output(output: str, as_json: bool) -> str:
    if as_json:
        return "json"
    if output not in ("table", "json"):
        _fail(f"--output {output!r} is not known; use table or json", EXIT_USAGE)
    return output


@app.command()
def jobs(
    server: str | None = ServerOption,
    token: str | None = TokenOption,
    status: list[str] | None = typer.Option(None, "--status", help="only jobs in this state (repeatable)"),
    limit: int = typer.Option(20, "--limit", min=1, max=200),
    output: str = OutputOption,
    as_json: bool = JsonOption,
) -> None:
    """List jobs, newest first (ids shortened: any unique start of an id names the job)."""
    page = Client(server, token).call("GET", "/v1/jobs", params={"status": status or [], "limit": limit}).json()
    if _output(output, as_json) == "json":
        print(json.dumps(page, indent=2))
        return
    out.print(_jobs_table(page["jobs"], with_mlflow=True) if _fits(page["jobs"]) else _jobs_table(page["jobs"]))


def _jobs_table(listed: list[dict[str, Any]], *, with_mlflow: bool = False) -> Table:
    """Ids, states and steps are never cut; a long name folds onto a second line. The MLflow run
    id (32 characters, no prefix of it works in MLflow) is a column only where it fits whole."""
    caption = None if with_mlflow or not listed else "MLflow run ids: gradloop status ID, or --output json"
    table = Table(title="jobs", title_justify="left", caption=caption, caption_justify="left")
    for col in ("id", "status", "attempt", "step", "created"):
        table.add_column(col, no_wrap=True, min_width=SHORT_ID if col == "id" else None)
    table.add_column("name", overflow="fold")
    if with_mlflow:
        table.add_column("mlflow run", no_wrap=True)
    for j in listed:
        p = j.get("progress") or {}
        step = f"{p.get('step') or 0}/{p.get('total_steps')}" if p.get("total_steps") else "-"
        row = [j["id"][:SHORT_ID], j["status"], str(j["attempt"]), step, j["created_at"][:19], j["name"]]
        if with_mlflow:
            row.append((j.get("mlflow") or {}).get("run_id") or "-")
        table.add_row(*row)
    return table


def _fits(listed: list[dict[str, Any]]) -> bool:
    """Whether the table with its MLflow column fits the terminal without cutting a cell."""
    unbounded = out.options.update_width(100_000)  # the table's natural width, not the terminal's
    return out.measure(_jobs_table(listed, with_mlflow=True), options=unbounded).maximum <= out.width


SHORT_ID = 8  # as `gradloop jobs` shows ids; status, cancel and logs take any unique prefix


def _print_job(job: dict[str, Any]) -> None:
    p = job.get("progress") or {}
    rows = [
        ("name", job["name"]),
        ("attempt", f"{job['attempt']} of {job['max_attempts']}"),
        ("created", job["created_at"]),
        ("started", job.get("started_at") or "-"),
        ("finished", job.get("finished_at") or "-"),
        (
            "progress",
            f"epoch {p.get('epoch')}/{p.get('epochs')}, step {p.get('step') or 0}/{p.get('total_steps')}"
            if p.get("total_steps")
            else "-",
        ),
    ]
    rows += [
        (k, _fmt_metric(v))
        for k, v in sorted((job.get("metrics") or {}).items())
        if k.startswith(("train/loss", "train/skipped", "val/"))
    ]
    if job.get("error"):
        e = job["error"]
        rows.append(("error", f"{e['type']}: {e['message']}" + (f" (step {e['step']})" if e.get("step") else "")))
    m = job.get("mlflow") or {}
    if m.get("run_id"):
        rows.append(("mlflow run", m["run_id"]))
        if m.get("url"):
            rows.append(("mlflow url", m["url"]))
    rows.append(("checkpoint", job.get("checkpoint_path") or "-"))
    # Plain lines, not a table: URLs and paths are copied from here, so never cut or wrapped.
    out.print(f"job {job['id']}: {job['status']}", style="bold", soft_wrap=True, markup=False, highlight=False)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        out.print(f"  {k:<{width}}  {v}", soft_wrap=True, markup=False, highlight=False)


@app.command()
def status(
    job_id: str = typer.Argument(..., help="a job id, or any unique start of one"),
    server: str | None = ServerOption,
    token: str | None = TokenOption,
    output: str = OutputOption,
    as_json: bool = JsonOption,
) -> None:
    """Show one job: state, progress, metrics, error, MLflow run."""
    job = Client(server, token).call("GET", f"/v1/jobs/{job_id}").json()
    if _output(output, as_json) == "json":
        print(json.dumps(job, indent=2))
    else:
        _print_job(job)


@app.command()
def cancel(
    job_id: str = typer.Argument(...), server: str | None = ServerOption, token: str | None = TokenOption
) -> None:
    """Cancel a job: a queued one at once, a running one at its next step (with a checkpoint)."""
    job = Client(server, token).call("POST", f"/v1/jobs/{job_id}/cancel").json()
    out.print(f"job {job['id']}: {job['status']}", soft_wrap=True, highlight=False)


@app.command()
def logs(
    job_id: str = typer.Argument(...),
    server: str | None = ServerOption,
    token: str | None = TokenOption,
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines until the job ends"),
) -> None:
    """Print the job's log (with -f, follow it like tail -f)."""
    client = Client(server, token)
    offset = 0
    while True:
        response = client.call("GET", f"/v1/jobs/{job_id}/logs", params={"offset": offset})
        sys.stdout.write(response.text)
        sys.stdout.flush()
        offset = int(response.headers.get("X-Next-Offset", offset))
        done = response.headers.get("X-Job-Status") in ("succeeded", "failed", "cancelled")
        if not follow or (done and offset >= int(response.headers.get("X-Log-Size", offset))):
            return
        if not response.content:
            time.sleep(0.5)

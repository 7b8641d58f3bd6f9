"""The `gradloop` command: run, validate, plugins, sync (and the job-service commands).

Every command goes through the same config loading as train() and the HTTP service, so a bad
config gets the same message everywhere; here it is printed without a traceback, exit code 2.
Exit codes: 0 success, 1 a run failed, 2 bad input (config, arguments), 130 stopped by a signal.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradloop import registry
from gradloop.cli import job_commands
from gradloop.errors import ConfigError, GradloopError
from gradloop.fitcheck import load_checked
from gradloop.tracking.remote import close_shared

app = typer.Typer(
    name="gradloop",
    help="Train PyTorch models from a YAML/JSON config, log to MLflow, run jobs over HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

SetOption = typer.Option(None, "--set", "-s", help="override a config value: key.path=value (YAML value); repeatable")


def _report_error(exc: BaseException, source: str | None = None) -> None:
    text = str(exc)
    if source and isinstance(exc, ConfigError) and not exc.source:
        text = f"{source}: {text}"
    # The message as text, never as markup: a value such as `[bold]` or `a[1]` is printed as given.
    err.print(Text.assemble(("error:", "bold red"), " ", text), highlight=False, soft_wrap=True)


@app.command()
def run(
    configs: list[Path] = typer.Argument(..., help="one or more config files, run one after another"),
    set_: list[str] | None = SetOption,
    resume: str | None = typer.Option(None, "--resume", help="checkpoint file, run directory, or 'latest'"),
    nproc_per_node: str | None = typer.Option(
        None, "--nproc-per-node", help="distributed: processes on this machine (N or auto)"
    ),
    nnodes: str | None = typer.Option(None, "--nnodes", help='distributed: machines, N or "MIN:MAX"'),
    node_rank: int | None = typer.Option(None, "--node-rank", help="distributed: this machine's rank (0 hosts)"),
    rdzv_endpoint: str | None = typer.Option(
        None, "--rdzv-endpoint", help="distributed: HOST:PORT of the rendezvous, the same on every machine"
    ),
) -> None:
    """Train each CONFIG; print a summary of every run.

    A config with `distributed.strategy: ddp` (or fsdp) starts its ranks here through torch's
    elastic launcher; on several machines, run the same command on each with --nnodes,
    --node-rank and --rdzv-endpoint, as with torchrun."""
    # Imported here, not at the top: torch and the training core would slow every other command.
    from gradloop.checkpoint import CheckpointError
    from gradloop.dispatch import run as run_config
    from gradloop.lifecycle import stop_on_signals

    if resume and len(configs) > 1:
        _report_error(GradloopError("--resume applies to one config; run the configs separately"))
        raise typer.Exit(EXIT_USAGE)
    flags = {
        "nproc_per_node": nproc_per_node,
        "nnodes": nnodes,
        "node_rank": node_rank,
        "rdzv_endpoint": rdzv_endpoint,
    }
    # The flags are overrides of the config's distributed block, validated with it.
    # Quoted: YAML would read "1:2" as a base-60 number.
    overrides = [
        *(set_ or []),
        *(f"distributed.{k}={v if str(v).isdigit() else json.dumps(v)}" for k, v in flags.items() if v is not None),
    ]
    outcomes: list[tuple[str, str, Any]] = []
    with stop_on_signals() as stop:  # SIGTERM or Ctrl-C: the current run stops at a step, the rest do not start
        for path in configs:
            if stop.is_set():
                outcomes.append((str(path), "KILLED", "not started: stopped by a signal"))
                continue
            try:
                result = run_config(path, overrides=overrides, resume=resume, stop_event=stop)
            except KeyboardInterrupt:  # a second Ctrl-C: stopped without waiting for the step's checkpoint
                command = shlex.join(["gradloop", "run", str(path), *_set_args(overrides), "--resume", "latest"])
                err.print(
                    f"interrupted; continue from its last checkpoint (if it wrote one) with: {command}",
                    soft_wrap=True,
                    markup=False,
                    highlight=False,
                )
                outcomes.append((str(path), "KILLED", "interrupted"))
                break
            except (ConfigError, CheckpointError) as exc:  # a bad config or --resume: bad input, exit 2
                _report_error(exc, str(path))
                outcomes.append((str(path), "INVALID", exc))
                continue
            except GradloopError as exc:
                _report_error(exc, str(path))
                outcomes.append((str(path), "FAILED", exc))
                continue
            _print_result(result, path, overrides)
            outcomes.append((str(path), getattr(result, "status", "FINISHED"), result))
    if len(configs) > 1:
        _print_outcomes(outcomes)
    statuses = {status for _, status, _ in outcomes}
    if "INVALID" in statuses:
        raise typer.Exit(EXIT_USAGE)
    if "FAILED" in statuses:
        raise typer.Exit(EXIT_FAILED)
    if "KILLED" in statuses:
        raise typer.Exit(EXIT_INTERRUPTED)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):  # a NaN or infinity must not read as a number
            return f"{value} (not finite)"
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _print_result(result: Any, config: Path | None = None, overrides: list[str] | None = None) -> None:
    children = getattr(result, "children", None)
    if children is not None:
        _print_sweep(result)
        return
    m = result.metrics or {}
    # Plain `key  value` lines, not a table: paths and ids are copied from here, so they are
    # never cut or wrapped, whatever the terminal's width (soft_wrap leaves that to the terminal).
    rows: list[tuple[str, str]] = [
        (k, _fmt(m[k])) for k in ("train/loss", "train/accuracy", "val/loss", "val/accuracy") if k in m
    ]
    steps = f"{result.steps} ({result.epochs} epoch{'' if result.epochs == 1 else 's'})"
    if result.skipped_steps:
        steps += f", {result.skipped_steps} skipped"
    rows.append(("steps", steps))
    if getattr(result, "world_size", 1) > 1:
        rows.append(("processes", f"{result.world_size} (global batch {result.global_batch_size})"))
    rows.append(("time", f"{result.duration_s:.2f} s"))
    rows += [("checkpoint", str(result.checkpoint_path or "-")), ("run dir", str(result.run_dir))]
    if result.mlflow_run_id:
        rows.append(("mlflow run", result.mlflow_run_id))
    out.print(f"{result.name}: {result.status.lower()}", style="bold", soft_wrap=True, markup=False, highlight=False)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"  {key:<{width}}  {value}", soft_wrap=True, markup=False, highlight=False)
    _print_dashboard(result)
    if result.status == "KILLED" and result.checkpoint_path is not None and config is not None:
        command = ["gradloop", "run", str(config), *_set_args(overrides), "--resume", str(result.checkpoint_path)]
        out.print(f"stopped; continue it with: {shlex.join(command)}", soft_wrap=True, markup=False, highlight=False)


def _print_dashboard(result: Any) -> None:
    """The link to the run's charts, on a line of its own (a terminal must not cut or wrap it), and
    for a local store the command that serves them."""
    from gradloop.tracking import background_logger, dashboard  # (no MLflow import: tracking.json says)

    link = dashboard(result.run_dir) if result.mlflow_run_id else None
    if link is None:
        return
    out.print(f"charts: {link.url}", soft_wrap=True, highlight=False, markup=False)
    if link.command:
        out.print(f"  (serve them first: {link.command})", soft_wrap=True, highlight=False, markup=False)
    pid = background_logger(result.run_dir)
    if pid is not None:
        out.print(
            f"  (plots and the model are being logged by process {pid}, in the background; "
            f"whatever it cannot log, `gradloop sync {result.run_dir}` sends)",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )


def _set_args(overrides: list[str] | None) -> list[str]:
    return [arg for item in overrides or [] for arg in ("--set", item)]


def _print_sweep(result: Any) -> None:
    table = Table(title=f"sweep {getattr(result, 'name', '')}: {len(result.children)} runs", title_justify="left")
    for col in ("status", "train/loss", "val/loss", "val/accuracy", "steps"):
        table.add_column(col, no_wrap=True)
    # The run's label (its sweep values) goes last and folds rather than being cut: two labels
    # that differ only at the end must stay told apart.
    table.add_column("run", overflow="fold")
    for child in result.children:
        m = child.result.metrics if child.result is not None else {}
        steps = child.result.steps if child.result is not None else None
        table.add_row(
            child.status,
            _fmt(m.get("train/loss")),
            _fmt(m.get("val/loss")),
            _fmt(m.get("val/accuracy")),
            _fmt(steps),
            child.label,
        )
    out.print(table)
    if result.best is not None:
        out.print(f"best: {result.best.label}", soft_wrap=True, markup=False, highlight=False)
        out.print(f"summary: {result.summary_path}", soft_wrap=True, markup=False, highlight=False)
    if result.mlflow_run_id:
        out.print(f"mlflow parent run: {result.mlflow_run_id}", soft_wrap=True, markup=False, highlight=False)


def _print_outcomes(outcomes: list[tuple[str, str, Any]]) -> None:
    table = Table(title="runs")
    for col in ("config", "outcome", "val/loss", "steps", "detail"):
        table.add_column(col)
    for path, status, payload in outcomes:
        if hasattr(payload, "metrics"):
            m = payload.metrics or {}
            table.add_row(path, status, _fmt(m.get("val/loss")), _fmt(payload.steps), str(payload.run_dir))
        else:
            table.add_row(path, status, "-", "-", str(payload).splitlines()[0][:100])
    out.print(table)


@app.command()
def validate(
    configs: list[Path] = typer.Argument(..., help="config files to check"),
    set_: list[str] | None = SetOption,
    as_json: bool = typer.Option(False, "--json", help="print the resolved config as JSON"),
) -> None:
    """Print each CONFIG fully resolved (defaults filled in), or every error a run would meet before its first step."""
    failed = False
    for path in configs:
        try:
            cfg = load_checked(path, set_ or [])
        except ConfigError as exc:
            _report_error(exc, str(path))
            failed = True
            continue
        if len(configs) > 1:
            out.print(f"# {path}", style="bold")
        if as_json:
            print(json.dumps(cfg.to_dict(), indent=2))
        else:
            print(cfg.to_yaml(), end="")
    if failed:
        raise typer.Exit(EXIT_USAGE)


@app.command()
def plugins(
    kind: str | None = typer.Argument(None, help="optimizers, schedulers, models, datasets or losses"),
    as_json: bool = typer.Option(False, "--json", help="print descriptions and option schemas as JSON"),
) -> None:
    """List registered plugins with their descriptions and options."""
    try:
        kinds = [registry.registry(kind).kind] if kind else list(registry.KINDS)
    except GradloopError as exc:
        _report_error(exc)
        raise typer.Exit(EXIT_USAGE) from None
    described = {k: [p.describe() for p in registry.registry(k)] for k in kinds}
    if as_json:
        print(json.dumps(described, indent=2, default=str))
        return
    for k in kinds:
        table = Table(title=k, title_justify="left", show_lines=True)
        table.add_column("name", style="bold cyan", no_wrap=True)
        table.add_column("description")
        table.add_column("options (type = default, constraints)")
        for d in described[k]:
            opts = "\n".join(_describe_option(o) for o in d["options"]) or "-"
            table.add_row(
                d["name"], d["description"] + ("" if d["source"] == "builtin" else f"\n[dim]{d['source']}[/]"), opts
            )
        out.print(table)
    # Plugins that failed to load were reported as they loaded, once (see _one_line_warnings).


def _describe_option(o: dict) -> str:
    text = f"{o['name']}: {o['type']}"
    text += " (required)" if o["required"] else f" = {json.dumps(o['default'])}"
    symbols = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    cons = [f"{symbols[k]} {v}" for k, v in o["constraints"].items() if k in symbols]
    cons += [f"{k} {v}" for k, v in o["constraints"].items() if k not in symbols]
    if cons:
        text += f" [{', '.join(cons)}]"
    return text


@app.command()
def sync(
    run_dirs: list[Path] = typer.Argument(..., help="run directories whose metrics.jsonl has unsent points"),
) -> None:
    """Send what a run could not send to MLflow (idempotent: nothing is sent twice)."""
    from gradloop.tracking.sync import sync_run_dir  # MLflow: seconds to import, only for this command

    code = 0
    for run_dir in run_dirs:
        if not (run_dir / "tracking.json").is_file():  # not a run directory: bad input, not a failed sync
            what = "does not exist" if not run_dir.exists() else "is not a gradloop run directory (no tracking.json)"
            _report_error(GradloopError(f"{run_dir} {what}; give a run directory such as runs/<name>/<run id>"))
            code = max(code, EXIT_USAGE)
            continue
        try:
            report = sync_run_dir(run_dir)
        except GradloopError as exc:
            _report_error(exc, str(run_dir))
            code = max(code, EXIT_FAILED)
            continue
        out.print(f"{run_dir}: {report}", soft_wrap=True)
    if code:
        raise typer.Exit(code)


# serve, submit, jobs, status, cancel, logs live in job_commands; they share this command.
app.registered_commands.extend(job_commands.app.registered_commands)


# gradloop's own code (service/ and plugins/ are installed as one package): its warnings speak to the user.
_OWN_CODE = str(Path(registry.__file__).resolve().parent.parent)


def _one_line_warnings() -> None:
    """gradloop's warnings (a plugin that failed to load, a tracking server that is down, a resume
    with other settings) are one line each, `warning: ...`, printed once; Python's default would
    add the file, line and source line of the warnings.warn call. Other packages' keep Python's form."""
    previous = warnings.showwarning
    shown: set[str] = set()

    def show(message: Any, category: type[Warning], filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        ours = category.__module__.startswith("gradloop") or str(Path(filename).resolve()).startswith(_OWN_CODE)
        if not ours:
            previous(message, category, filename, lineno, *args, **kwargs)
        elif str(message) not in shown:
            shown.add(str(message))
            err.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> None:
    # MLflow logs at INFO by default (database migrations, system-metrics threads starting and
    # stopping): noise around the progress bar. A user's own MLFLOW_LOGGING_LEVEL still wins.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    _one_line_warnings()
    try:
        app(args=argv, prog_name="gradloop")
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    finally:
        # The store processes finish the runs' end-of-run artifacts on their own: the user does
        # not wait for them (tracking.json lists them as owed until they are done).
        close_shared()


if __name__ == "__main__":
    main()

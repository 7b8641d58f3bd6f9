"""Tracking's pieces without a store: params, journal, request splitting, grad stats, histograms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy
import pytest
import torch
from torch import nn

from gradloop.tracking import gradstats, histograms
from gradloop.tracking.jsonl import Journal, read_records, unsent_records
from gradloop.tracking.mlflow_params import MAX_KEY, MAX_VALUE, config_params, flatten
from gradloop.tracking.mlflow_store import resolve_uri
from gradloop.tracking.sender import line_requests
from gradloop.tracking.status import status_for
from gradloop.tracking.windows import held_window, to_host


def test_flatten_dotted_keys_lists_and_groups() -> None:
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "groups": [{"match": "x.*", "lr": 0.1}], "e": {}})
    assert flat == {"a.b": 1, "a.c": [1, 2], "groups.0.match": "x.*", "groups.0.lr": 0.1, "e": "{}"}


def test_config_params_fit_mlflow_limits() -> None:
    params = config_params({"k" * 300: 1, "long": "v" * (MAX_VALUE + 1), "hidden": [64, 64], "none": None})
    assert all(len(k) <= MAX_KEY for k in params)
    assert all(len(v) <= MAX_VALUE for v in params.values())
    assert "config/config.yaml" in params["long"]  # says where the whole value is
    assert params["hidden"] == "[64, 64]" and params["none"] == "None"


def test_line_requests_group_whole_records_up_to_the_limit(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    sizes = [400, 400, 300, 1500, 10]
    records = [journal.append(step, 1000 + step, {f"m{i}": float(i) for i in range(n)}) for step, n in enumerate(sizes)]
    requests = line_requests(records, limit=1000)
    # 400 + 400 fit, the 300 would not; the 1500-point record travels alone; 10 starts anew
    assert [(seqs, n) for _, seqs, n in requests] == [([0, 1], 800), ([2], 300), ([3], 1500), ([4], 10)]
    assert requests[0][0] == records[0].line + b"\n" + records[1].line
    assert journal.path.read_bytes().splitlines()[3] == records[3].line  # what was journaled is what is sent


def test_journal_tracks_what_was_sent_and_survives_a_torn_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for step in range(1, 6):
        journal.append(step, step, {"train/loss": 1.0 / step})
    journal.mark_sent([0, 1, 3])
    journal.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"seq": 5, "step": 6, "ts"')  # a process killed mid-write
    assert [r.seq for r in unsent_records(tmp_path)] == [2, 4]
    again = Journal(tmp_path)  # a resumed run in the same directory continues the numbering
    assert again.append(7, 7, {"x": 1.0}).seq == 5
    again.close()


def test_nan_values_round_trip_through_the_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(1, 1, {"train/loss": float("nan"), "grad_norm/x": float("-inf")})
    journal.append(2, 2, {"grad_norm/nullable.weight": 0.5})  # "null" in a key, every value finite
    journal.close()
    first, second = read_records(tmp_path / "metrics.jsonl")
    assert math.isnan(first.metrics["train/loss"]) and first.metrics["grad_norm/x"] == float("-inf")
    assert second.metrics == {"grad_norm/nullable.weight": 0.5}


def _model_with_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    model(torch.randn(16, 5)).pow(2).sum().backward()
    return model


def test_per_layer_stats_match_plain_torch() -> None:
    model = _model_with_grads()
    layout = gradstats.StatLayout.build(list(model.named_parameters()), "per_layer")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    snap = gradstats.snapshot(3, layout)
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    gradstats.after_step(snap, layout)
    values = to_host(snap.tensors())
    got = gradstats.host_metrics(snap.shape(), values, layout)
    total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in model.parameters()))
    assert got["train/grad_norm"] == pytest.approx(total, rel=1e-5)
    assert got["train/grad_nonfinite"] == 0
    for name, p in model.named_parameters():
        assert got[f"grad_norm/{name}"] == pytest.approx(float(p.grad.norm()), rel=1e-5)
        assert got[f"weight_norm/{name}"] == pytest.approx(float(p.detach().norm()), rel=1e-5)
        ratio = float((p.detach() - before[name]).norm() / p.detach().norm())
        assert got[f"update_ratio/{name}"] == pytest.approx(ratio, rel=1e-4)


def test_each_window_gets_the_norms_of_its_own_step_when_read_back_later() -> None:
    """Many windows, norms read back only at the end (as the observer's once-a-second write
    does), a window whose step never came among them: each window's norms are its own step's,
    although the layout's weight buffers are reused from window to window."""
    model = _model_with_grads()
    layout = gradstats.StatLayout.build(list(model.named_parameters()), "per_layer")
    taken, expected = [], []
    for step in range(1, 12):
        before = [p.detach().clone() for p in model.parameters()]
        snap = gradstats.snapshot(step, layout)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * step * p.grad
        gradstats.after_step(snap, layout)
        taken.append(snap)
        expected.append(
            [float(torch.linalg.vector_norm(b - p.detach())) for b, p in zip(before, model.parameters())]
            + [float(torch.linalg.vector_norm(p.detach())) for p in model.parameters()]
        )
        if step == 5:
            gradstats.snapshot(step, layout)  # a step that never came: the next window takes its buffers
    for snap, want in zip(taken, expected):
        n = snap.shape().grad_norms
        assert to_host(snap.tensors())[n:] == pytest.approx(want, rel=1e-5)


def test_snapshot_reuses_the_trainers_norms_only_when_they_cover_every_watched_parameter() -> None:
    model = _model_with_grads()
    named = list(model.named_parameters())
    measured = torch.stack(torch._foreach_norm([p.grad for _, p in named]))
    layout = gradstats.StatLayout.build(named, "per_layer")
    assert gradstats.snapshot(1, layout, measured).grad_norms is measured
    model[0].bias.requires_grad_(False)  # a frozen parameter: the trainer's list no longer lines up
    partial = gradstats.StatLayout.build(list(model.named_parameters()), "per_layer")
    snap = gradstats.snapshot(1, partial, measured)
    assert snap.grad_norms is not measured and len(snap.grad_norms) == len(named) - 1


def test_trainer_hands_observers_the_norms_it_measured_at_logging_steps(tmp_path: Path) -> None:
    """RunContext.grad_norms: at a logging step, the pre-clip per-parameter norms (the same values
    as measuring the gradients), in optimizer order; None at steps it measured nothing."""
    from gradloop import train
    from gradloop.observer import NullObserver

    seen: dict[int, list[float] | None] = {}

    class Watch(NullObserver):
        def start(self, ctx):
            self.ctx = ctx

        def wants_step_stats(self, step):
            return True

        def before_optimizer_step(self, step, model):
            norms = self.ctx.grad_norms()
            expected = [float(p.grad.norm()) for p in self.ctx.optimizer.param_groups[0]["params"]]
            seen[step] = None if norms is None else [float(n) for n in norms]
            if norms is not None:
                assert seen[step] == pytest.approx(expected, rel=1e-5)

    cfg = {
        "name": "norms",
        "seed": 0,
        "device": "cpu",
        "output_dir": str(tmp_path),
        "model": {"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 3}},
        "data": {"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 16},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "trainer": {"epochs": 1, "progress": "none", "checkpoint_at_end": False},
        "tracking": {"enabled": False, "log_every": 3},
    }
    train(cfg, observers=[Watch()])
    assert seen[3] is not None and len(seen[3]) == 4
    assert seen[1] is None and seen[2] is None


def test_per_module_norm_combines_weight_and_bias_and_nonfinite_is_counted() -> None:
    model = _model_with_grads()
    model[2].bias.grad[0] = float("nan")
    layout = gradstats.StatLayout.build(list(model.named_parameters()), "per_module")
    snap = gradstats.snapshot(1, layout)
    gradstats.after_step(snap, layout)
    got = gradstats.host_metrics(snap.shape(), to_host(snap.tensors()), layout)
    assert got["train/grad_nonfinite"] == 1
    expected = math.hypot(float(model[0].weight.grad.norm()), float(model[0].bias.grad.norm()))
    assert got["grad_norm/0"] == pytest.approx(expected, rel=1e-5)
    assert {k for k in got if k.startswith("grad_norm/")} == {"grad_norm/0", "grad_norm/2"}


def test_total_mode_reports_no_layers() -> None:
    model = _model_with_grads()
    layout = gradstats.StatLayout.build(list(model.named_parameters()), "total")
    snap = gradstats.snapshot(1, layout)
    got = gradstats.host_metrics(snap.shape(), to_host(snap.tensors()), layout)
    assert set(got) == {"train/grad_norm", "train/grad_nonfinite"}


def test_histograms_count_every_element(tmp_path: Path) -> None:
    model = _model_with_grads()
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    labels, table = histograms.compute(names, params, bins=10)
    path = histograms.write(tmp_path, 40, labels, table.tolist())
    data = json.loads(path.read_text())
    assert path.name == "step_000040.json" and data["step"] == 40
    for name, p in zip(names, params):
        layer = data["layers"][name]
        assert sum(layer["grad"]["counts"]) == p.numel() == sum(layer["weight"]["counts"])
        assert layer["weight"]["min"] == pytest.approx(float(p.detach().min())) and layer["weight"][
            "max"
        ] == pytest.approx(float(p.detach().max()))


def test_histogram_counts_match_numpy_per_tensor() -> None:
    """The fused counting (one bincount for all layers) bins each tensor over its own range,
    as numpy.histogram does, including the maximum in the last bin and a constant tensor."""
    model = _model_with_grads(seed=3)
    with torch.no_grad():
        model[2].bias.fill_(0.5)  # constant: every element in the first bin
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    labels, table = histograms.compute(names, params, bins=7)
    assert labels == names and table.shape == (2 * len(params), 2 + 7)
    rows = [t for p in params for t in (p.grad, p.detach())]
    for row, tensor in zip(table.tolist(), rows):
        values = tensor.reshape(-1).double().numpy()
        assert row[0] == pytest.approx(values.min()) and row[1] == pytest.approx(values.max())
        if values.max() > values.min():
            expected = numpy.histogram(values, bins=7, range=(values.min(), values.max()))[0].tolist()
        else:
            expected = [len(values)] + [0] * 6
        assert [int(c) for c in row[2:]] == expected


def test_histograms_of_a_large_model_are_counted_chunk_by_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above CHUNK_ELEMENTS the counting happens at capture time, a chunk at a time (no copy of
    the whole model); the table is the one a single fused pass gives."""
    model = _model_with_grads(seed=5)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    whole = histograms.capture(names, params)
    assert whole.pending is not None and whole.table is None  # small: copied, counted later
    monkeypatch.setattr(histograms, "CHUNK_ELEMENTS", 40)
    chunked = histograms.capture(names, params)
    assert chunked.pending is None and chunked.table is not None  # counted now
    assert torch.equal(chunked.counted(), whole.counted())


def test_histogram_writer_holds_captures_until_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model_with_grads()
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    writer = histograms.HistogramWriter(tmp_path / "h", bins=5)
    first = histograms.capture(names, params)
    with torch.no_grad():
        params[0].add_(100.0)  # a later step changes the weights: the capture keeps its copy
    writer.hold(10, first)
    writer.hold(20, histograms.capture(names, params))
    assert not (tmp_path / "h").exists() and not writer.full
    writer.close()  # flushes what is held and waits for the files
    ten = json.loads((tmp_path / "h" / "step_000010.json").read_text())
    twenty = json.loads((tmp_path / "h" / "step_000020.json").read_text())
    assert (
        ten["bins"] == 5 and ten["layers"][names[0]]["weight"]["max"] < 50 < twenty["layers"][names[0]]["weight"]["min"]
    )
    assert writer.failed == 0
    monkeypatch.setattr(histograms, "MAX_HELD_ELEMENTS", 10)
    writer.hold(30, histograms.capture(names, params))
    assert writer.full  # the observer writes early rather than hold more copies of the model


def test_an_interrupt_while_histograms_are_flushed_loses_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model_with_grads()
    names, params = [n for n, _ in model.named_parameters()], list(model.parameters())
    writer = histograms.HistogramWriter(tmp_path / "h", bins=5)
    for step in (1, 2, 3):
        writer.hold(step, histograms.capture(names, params))
    encode, calls = histograms.encode, []

    def interrupted_once(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode(*args, **kwargs)

    monkeypatch.setattr(histograms, "encode", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        writer.flush()  # the observer's write pass, cut short at the second histogram
    writer.close()  # the run's finish
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == [f"step_00000{i}.json" for i in (1, 2, 3)]
    assert writer.failed == 0


def test_histogram_files_that_cannot_be_written_are_counted(tmp_path: Path) -> None:
    model = _model_with_grads()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    writer = histograms.HistogramWriter(blocked / "h")
    writer.hold(1, histograms.capture([n for n, _ in model.named_parameters()], list(model.parameters())))
    writer.close()
    assert writer.failed == 1 and "NotADirectoryError" in (writer.last_error or "")


def test_status_for_errors() -> None:
    assert status_for(None) == "FINISHED"
    assert status_for(ValueError("x")) == "FAILED"
    assert status_for(KeyboardInterrupt()) == "KILLED"


def test_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_uri("http://given:1") == "http://given:1"
    assert resolve_uri(None) == "http://example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert resolve_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"  # pinned: a later chdir keeps the store


def test_a_held_window_keeps_its_values_and_names_them_like_mlflow_keys():
    """A logging window holds its 0-d tensors until the once-a-second write, which moves every
    held window's values to the host in one stack."""
    held = held_window(
        40,
        1234,
        {
            "train/loss": torch.tensor(0.25),
            "train/grad_norm": torch.tensor([3.0]),
            "epoch": 2,
            "val/acc@1": None,
            "train/lr/head:0": 0.5,
        },
        None,
    )
    later = held_window(50, 1300, {"train/loss": torch.tensor(0.125, dtype=torch.float64)}, None)
    flat = to_host(held.parts + later.parts)
    assert (held.step, held.ts) == (40, 1234)
    assert held.host_values(flat[:2], None) == {
        "train/loss": 0.25,
        "train/grad_norm": 3.0,
        "epoch": 2.0,
        "train/lr/head_0": 0.5,
    }
    assert later.host_values(flat[2:], None) == {"train/loss": 0.125}
    assert held_window(1, 1, {"epoch": None}, None) is None  # nothing to log, nothing held


def _snapshot_around_a_step() -> tuple[nn.Linear, gradstats.StatLayout, gradstats.GradSnapshot]:
    """A Linear layer's per-layer snapshot around a step that adds 1 to each weight (not the bias)."""
    model = nn.Linear(3, 2)
    model(torch.ones(4, 3)).sum().backward()
    layout = gradstats.StatLayout.build(list(model.named_parameters()), "per_layer")
    snap = gradstats.snapshot(7, layout)
    with torch.no_grad():
        model.weight.add_(1.0)
    gradstats.after_step(snap, layout)
    return model, layout, snap


def test_a_cpu_run_reads_a_window_at_once_and_keeps_no_tensor_alive():
    """On the CPU there is no synchronisation to save: a window's tensors are read when it is
    held, so nothing the garbage collector has to walk survives until the write."""
    _, layout, snap = _snapshot_around_a_step()
    device_held = held_window(7, 0, {"train/loss": torch.tensor(1.5), "epoch": 1}, snap)
    cpu_held = held_window(7, 0, {"train/loss": torch.tensor(1.5), "epoch": 1}, snap, on_host=True)
    assert all(type(p) is float for p in cpu_held.parts)
    assert not any(isinstance(getattr(cpu_held, f), (torch.Tensor, gradstats.GradSnapshot)) for f in cpu_held.__slots__)
    assert cpu_held.host_values(cpu_held.parts, layout) == device_held.host_values(to_host(device_held.parts), layout)


def test_the_trainer_never_changes_a_metric_tensor_it_has_handed_over(tmp_path: Path) -> None:
    """Held windows keep the trainer's tensors, not copies: every window's values must be fresh
    tensors that no later step writes into."""
    from gradloop import train
    from gradloop.observer import NullObserver

    given: list[tuple[torch.Tensor, float]] = []

    class Keep(NullObserver):
        def after_optimizer_step(self, step, snapshot, metrics):
            given.extend((v, float(v)) for v in metrics.values() if isinstance(v, torch.Tensor))

        def log_metrics(self, metrics, step):
            given.extend((v, float(v)) for v in metrics.values() if isinstance(v, torch.Tensor))

    cfg = {
        "name": "fresh",
        "seed": 0,
        "device": "cpu",
        "output_dir": str(tmp_path),
        "model": {"name": "mlp", "options": {"in_features": 4, "hidden": [8], "out_features": 3}},
        "data": {"name": "sklearn", "options": {"dataset": "iris"}, "batch_size": 16},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.1}},
        "trainer": {"epochs": 3, "progress": "none", "checkpoint_at_end": False, "val_every_epochs": 1},
        "tracking": {"enabled": False, "log_every": 2},
    }
    train(cfg, observers=[Keep()])
    assert len(given) > 10 and len({v for v, _ in given}) > 5
    assert [float(v) for v, _ in given] == [value for _, value in given]


def test_a_held_window_with_gradient_stats_gives_per_layer_metrics():
    model, layout, snap = _snapshot_around_a_step()
    held = held_window(7, 0, {"train/loss": torch.tensor(1.5)}, snap)
    values = held.host_values(to_host(held.parts), layout)
    assert values["train/loss"] == 1.5
    assert values["grad_norm/weight"] == pytest.approx(float(model.weight.grad.norm()))
    assert values["weight_norm/weight"] == pytest.approx(float(model.weight.detach().norm()))
    assert values["update_ratio/weight"] == pytest.approx(math.sqrt(6) / float(model.weight.detach().norm()))
    assert values["update_ratio/bias"] == 0.0


def test_the_dashboard_link_lands_on_the_runs_model_metrics(tmp_path: Path) -> None:
    from gradloop.tracking import dashboard
    from gradloop.tracking.state import TrackingState

    assert dashboard(tmp_path) is None  # not a tracked run directory
    state = TrackingState(uri="sqlite:////data/mlflow.db", experiment="e", run_name="r", run_id="abc")
    state.save(tmp_path)
    assert dashboard(tmp_path) is None  # the store has not created it yet
    state.experiment_id = "7"
    state.save(tmp_path)
    local = dashboard(tmp_path)
    assert local is not None and local.url == "http://127.0.0.1:5000/#/experiments/7/runs/abc/model-metrics"
    assert local.command == "mlflow ui --backend-store-uri sqlite:////data/mlflow.db"
    state.uri = "http://mlflow.internal:5000/"
    state.save(tmp_path)
    remote = dashboard(tmp_path)
    assert remote is not None and remote.command is None
    assert remote.url == "http://mlflow.internal:5000/#/experiments/7/runs/abc/model-metrics"

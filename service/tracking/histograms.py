"""Per-layer histograms of gradients and weights (MLflow has no histogram type): capturing
them on the training thread, counting them with torch, and writing one file per step.

The file: histograms/step_000100.json holds, for every parameter, the gradient's and the
weight's min, max and bin counts (equal-width bins between the two; non-finite values count as
0, and an element equal to its tensor's max goes in the last bin, as with torch.histc).

Counting is fused: the tensors are concatenated into one vector, each element is mapped to a
bin of its own tensor's range (offset by tensor, so bins of different tensors never meet) and
one bincount counts them all -- about a dozen kernels whatever the number of layers, where a
histc per tensor costs seven each. The concatenation is also a copy, taken before the optimizer
step: for a model of up to CHUNK_ELEMENTS values the training thread pays that copy and holds
it until HistogramWriter.flush (see there for where it is counted). A larger model is counted
chunk by chunk on its device at capture time, so memory never holds a second copy of it;
beside such a model's step the counting is small anyway.
"""

from __future__ import annotations

import functools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
import torch

from gradloop.torch_ops import foreach_max

log = logging.getLogger("gradloop.tracking")

BINS = 30
CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per concatenated chunk


def file_name(step: int) -> str:
    return f"step_{step:06d}.json"


def encode(step: int, labels: list[str], table: list[list[float]]) -> bytes:
    """Rows per label: a gradient row, then a weight row, each [min, max, count_0 ...]."""
    layers = {}
    for i, name in enumerate(labels):
        g, w = table[2 * i], table[2 * i + 1]
        layers[name] = {
            "grad": {"min": g[0], "max": g[1], "counts": g[2:]},
            "weight": {"min": w[0], "max": w[1], "counts": w[2:]},
        }
    return orjson.dumps({"step": step, "bins": len(table[0]) - 2 if table else 0, "layers": layers})


@dataclass
class Capture:
    """One step's gradients and weights, ready to count: either copied into `pending` (a flat
    vector and the sizes of its parts), or already counted into `table`."""

    labels: list[str]
    pending: tuple[torch.Tensor, tuple[int, ...]] | None = None
    table: torch.Tensor | None = None

    def counted(self, bins: int = BINS) -> torch.Tensor:
        """The (2 * P, 2 + bins) table: per parameter, a gradient row then a weight row, each
        [min, max, count_0 .. count_{bins-1}]."""
        if self.table is None:
            assert self.pending is not None
            self.table = _count(*self.pending, bins)
            self.pending = None
        return self.table


def capture(
    names: list[str],
    params: list[torch.nn.Parameter],
    bins: int = BINS,
    weights: list[torch.Tensor] | None = None,
    grads: list[torch.Tensor | None] | None = None,
) -> Capture | None:
    """Take the histograms' inputs now (before the optimizer step changes the weights).
    weights: the parameters, detached (StatLayout.weights), if the caller keeps them.
    grads: the gradients, if not the parameters' own (whole ones gathered from FSDP's shards,
    with those weights)."""
    labels: list[str] = []
    tensors: list[torch.Tensor] = []
    given = grads if grads is not None else [p.grad for p in params]
    for name, g, w in zip(names, given, weights or [p.detach() for p in params]):
        if g is None or w.numel() == 0:
            continue
        labels.append(name)
        # (.grad needs no detach unless a backward pass made it with create_graph.)
        tensors += [(g.detach() if g.requires_grad else g).reshape(-1), w.reshape(-1)]
    if not tensors:
        return None
    sizes = tuple(t.numel() for t in tensors)
    chunks = [tensors] if sum(sizes) <= CHUNK_ELEMENTS else _chunks(tensors)
    if len(chunks) == 1:  # most models: one copy, counted later
        return Capture(labels, pending=(torch.cat(tensors), sizes))
    table = torch.cat([_count(torch.cat(chunk), tuple(t.numel() for t in chunk), bins) for chunk in chunks])
    return Capture(labels, table=table)


def compute(
    names: list[str], params: list[torch.nn.Parameter], bins: int = BINS
) -> tuple[list[str], torch.Tensor] | None:
    """Labels and the counted table, at once."""
    taken = capture(names, params, bins)
    return None if taken is None else (taken.labels, taken.counted(bins))


def _chunks(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive gradient/weight pairs, grouped up to CHUNK_ELEMENTS values per group."""
    chunks: list[list[torch.Tensor]] = [[]]
    size = 0
    for i in range(0, len(tensors), 2):
        pair = tensors[i : i + 2]
        n = pair[0].numel() * 2
        if chunks[-1] and size + n > CHUNK_ELEMENTS:
            chunks.append([])
            size = 0
        chunks[-1].extend(pair)
        size += n
    return chunks


def _count(flat: torch.Tensor, sizes: tuple[int, ...], bins: int) -> torch.Tensor:
    flat = torch.nan_to_num(flat.float(), nan=0.0, posinf=0.0, neginf=0.0)
    hi = _segment_max(flat, sizes)
    lo = -_segment_max(flat.neg(), sizes)
    segment, offset = _segments(sizes, flat.device, bins)
    per_bin = bins / (hi - lo).clamp_min(1e-30)
    # index_select, not lo[segment]: advanced indexing costs four times as much here.
    position = (flat - lo.index_select(0, segment)).mul_(per_bin.index_select(0, segment))
    # An element equal to its tensor's max belongs to the last bin, as with torch.histc.
    index = position.long().clamp_(0, bins - 1).add_(offset)
    counts = torch.bincount(index, minlength=len(sizes) * bins).reshape(len(sizes), bins)
    return torch.cat([lo[:, None], hi[:, None], counts.float()], dim=1)


@functools.lru_cache(maxsize=8)  # the same model's sizes come back every histogram step
def _segments(sizes: tuple[int, ...], device: torch.device, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element of the concatenation: its tensor's index, and that index times `bins`."""
    segment = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
    return segment, segment * bins


def _segment_max(flat: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    segments = flat.split(sizes)
    return torch.stack(foreach_max(list(segments)))


def table_rows(table: torch.Tensor | list[list[float]]) -> list[list[float]]:
    """A counted table as histfile's rows, counts as ints."""
    if isinstance(table, torch.Tensor):
        # Counts as integers straight from the tensor: int() on each of them in Python cost
        # more than the rest of the file.
        ranges, counts = table[:, :2].tolist(), table[:, 2:].long().tolist()
        return [r + c for r, c in zip(ranges, counts)]
    return table


def write(directory: Path, step: int, labels: list[str], table: torch.Tensor | list[list[float]]) -> Path:
    """One step's file (min and max are finite: non-finite elements were counted as 0)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name(step)
    path.write_bytes(encode(step, labels, table_rows(table)))
    return path


# Held captures are counted early once they hold this many values (a fast large model could
# otherwise keep many copies of itself for a second).
MAX_HELD_ELEMENTS = 4 * CHUNK_ELEMENTS


class HistogramWriter:
    """Holds the run's captures until `flush` (the observer's once-a-second pass), then counts
    them there, in one warm pass, and has the files written off the training thread (the
    writes wait in the kernel without the GIL). `close` writes what is held and waits for every
    file, so the run's artifacts are complete before they are logged."""

    def __init__(self, directory: Path, bins: int = BINS):
        self.directory, self.bins = directory, bins
        self.failed = 0
        self.last_error: str | None = None
        self._held: list[tuple[int, Capture]] = []
        self._held_elements = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def hold(self, step: int, taken: Capture) -> None:
        self._held.append((step, taken))
        if taken.pending is not None:
            self._held_elements += taken.pending[0].numel()

    @property
    def full(self) -> bool:
        return self._held_elements >= MAX_HELD_ELEMENTS

    def flush(self) -> None:
        """Count and encode the held captures here; a thread writes the files."""
        if not self._held:
            return
        held, self._held, self._held_elements = self._held, [], 0
        files: list[tuple[str, bytes]] = []
        done = 0
        try:
            for step, taken in held:
                try:
                    files.append((file_name(step), encode(step, taken.labels, table_rows(taken.counted(self.bins)))))
                except Exception as exc:  # a histogram is never worth a failed run
                    self._failed(exc)
                done += 1
        finally:
            # An interrupt mid-pass (SIGTERM, Ctrl-C): what is ready is still written, and the
            # rest is held again for close().
            for step, taken in held[done:]:
                self.hold(step, taken)
            if files:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradloop-histograms")
                # One worker runs the submissions in order: waiting on the last waits on them all.
                self._pending = self._pool.submit(self._write, files)

    def _write(self, files: list[tuple[str, bytes]]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._failed(exc, len(files))
            return
        for name, data in files:  # one file that cannot be written does not stop the others
            try:
                (self.directory / name).write_bytes(data)
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: BaseException, n: int = 1) -> None:
        with self._lock:  # the caller's thread and the writer's both count
            self.failed += n
            self.last_error = f"{type(exc).__name__}: {exc}"

    def close(self, timeout: float = 30.0) -> None:
        """Write what is held and wait (up to `timeout` seconds) for every file."""
        self.flush()
        if self._pool is None:
            return
        if self._pending is not None:
            try:
                self._pending.result(timeout)
            except Exception:
                pass  # _write reports its own failures; a disk that hangs is not waited for
        self._pool.shutdown(wait=False)
        self._pool = None

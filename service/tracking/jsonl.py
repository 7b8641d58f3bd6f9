"""The run's local metric journal: metrics.jsonl (every point, written first) and what was sent.

Each logging window is one line, `{"seq": n, "step": s, "ts": ms, "metrics": {key: value}}`,
appended by the training thread before anything is queued for MLflow (and flushed at least
once a second, and at the end), so a dead server never loses a point that was computed. The sender appends the seq
ranges MLflow has acknowledged to metrics.sent (`first last` per line, inclusive); `gradloop
sync` sends exactly the records that are in the journal but in no acknowledged range.
The timestamp is kept in the journal so that a re-sent point is the identical MLflow Metric,
which the stores de-duplicate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

JOURNAL_NAME = "metrics.jsonl"
SENT_NAME = "metrics.sent"
FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class Record:
    """One logging window's points: all share a step and a timestamp. `line` is its journal
    line when the record was just appended (the sender forwards it as it is)."""

    seq: int
    step: int
    ts: int
    metrics: dict[str, float]
    line: bytes | None = field(default=None, compare=False, repr=False)

    def to_line(self) -> bytes:
        return self.line if self.line is not None else encode_line(self.seq, self.step, self.ts, self.metrics)

    @classmethod
    def from_line(cls, line: bytes | str) -> Record:
        """The record of one journal line (raises json.JSONDecodeError for a torn one)."""
        d = decode_line(line)
        return cls(int(d["seq"]), int(d["step"]), int(d["ts"]), {k: float(v) for k, v in d["metrics"].items()})


def encode_line(seq: int, step: int, ts: int, metrics: Mapping[str, float]) -> bytes:
    fields = {"seq": seq, "step": step, "ts": ts, "metrics": metrics}
    # orjson: ~1 us a line against ~30 us for json.dumps (float formatting in C).
    line = orjson.dumps(fields)
    if b"null" not in line:  # (a faster test than isfinite on every value)
        return line
    # orjson writes NaN and inf as null; json keeps them (a non-finite loss is a fact worth
    # keeping, and our own reader accepts NaN and Infinity). A key with "null" in it only
    # takes this slower path to the same line.
    return json.dumps(fields, separators=(",", ":")).encode()


def decode_line(line: bytes | str) -> dict:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:  # NaN or Infinity, which only json writes and reads
        return json.loads(line)


class Journal:
    """Append-only metrics.jsonl plus the acknowledged ranges in metrics.sent."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / JOURNAL_NAME
        self.sent_path = Path(run_dir) / SENT_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A resumed run in the same directory continues the numbering, so old ranges stay valid.
        self._next_seq = last_seq(self.path) + 1
        self._file = open(self.path, "ab")
        self._sent_lock = threading.Lock()
        self._flushed = time.monotonic()

    def append(self, step: int, ts: int, metrics: dict[str, float]) -> Record:
        """Append one window; the record keeps `metrics` itself (callers hand over a dict of
        their own)."""
        seq, step, ts = self._next_seq, int(step), int(ts)
        line = encode_line(seq, step, ts, metrics)
        record = Record(seq, step, ts, metrics, line)
        self._next_seq += 1
        self._file.write(line + b"\n")
        now = time.monotonic()
        if now - self._flushed >= FLUSH_SECONDS:
            # A write syscall per window measured ~1% of a small model's step; once a second
            # bounds what a SIGKILL can take to the last second (an exception still flushes).
            self._file.flush()
            self._flushed = now
        return record

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._flushed = time.monotonic()

    def mark_sent(self, seqs: list[int]) -> None:
        if not seqs:
            return
        lines = "".join(f"{a} {b}\n" for a, b in _ranges(sorted(set(seqs))))
        with self._sent_lock, open(self.sent_path, "a", encoding="utf-8") as f:
            f.write(lines)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_records(path: Path) -> Iterator[Record]:
    """Every complete record of a journal; a torn last line (a killed process) is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield Record.from_line(line)
            except json.JSONDecodeError:  # (orjson's error is one too)
                continue


def read_sent(path: Path) -> set[int]:
    sent: set[int] = set()
    if not path.exists():
        return sent
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and all(p.lstrip("-").isdigit() for p in parts):
                sent.update(range(int(parts[0]), int(parts[1]) + 1))
    return sent


def unsent_records(run_dir: Path) -> list[Record]:
    sent = read_sent(Path(run_dir) / SENT_NAME)
    return [r for r in read_records(Path(run_dir) / JOURNAL_NAME) if r.seq not in sent]


def last_seq(path: Path) -> int:
    last = -1
    for r in read_records(path):
        last = max(last, r.seq)
    return last


def _ranges(seqs: list[int]) -> Iterator[tuple[int, int]]:
    start = prev = seqs[0]
    for s in seqs[1:]:
        if s != prev + 1:
            yield start, prev
            start = s
        prev = s
    yield start, prev

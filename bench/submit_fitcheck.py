"""What the model/data/loss fit check adds to validating one HTTP submission (issue 18, item 1).

In one process, the job service's validation of an iris config (check_http_config) is timed
without and with the fit check (gradloop.fitcheck.checked with probe=False, as POST /v1/jobs runs
it: the dataset's shape from its options or a cache, no data read). The two variants alternate,
PAIRS times, each a batch of CALLS validations; medians, spread and CPU time are printed, and the
ratio is taken within each pair.

    python bench/submit_fitcheck.py [--pairs 7] [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradloop.fitcheck import checked  # noqa: E402
from gradloop.http_policy import HttpPolicy, check_http_config  # noqa: E402
from tests.support.api_service import iris_config  # noqa: E402


def _batch(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(wall s, CPU s) of `calls` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    body = json.dumps(iris_config("bench", tracking=False))

    policy = HttpPolicy(data_root=root)

    def plain() -> object:
        return check_http_config(json.loads(body), policy)

    def with_fit() -> object:
        raw = json.loads(body)
        return checked(lambda: check_http_config(raw, policy), raw, probe=False)

    with_fit()  # plugins loaded, shape cached: what a running service has after its first submission
    rows: dict[str, list[tuple[float, float]]] = {"validation": [], "validation + fit check": []}
    ratios = []
    for _ in range(args.pairs):
        a = _batch(plain, args.calls)
        b = _batch(with_fit, args.calls)
        rows["validation"].append(a)
        rows["validation + fit check"].append(b)
        ratios.append(b[0] / a[0])
    print(f"{args.pairs} alternating pairs of {args.calls} validations each (one process)")
    for name, samples in rows.items():
        per_call = [w / args.calls * 1e6 for w, _ in samples]
        cpu = [c / args.calls * 1e6 for _, c in samples]
        print(
            f"{name:24s} wall median {statistics.median(per_call):7.1f} us/call "
            f"(min {min(per_call):.1f}, max {max(per_call):.1f}); "
            f"CPU median {statistics.median(cpu):.1f} us/call (min {min(cpu):.1f})"
        )
    spread = f"min {min(ratios):.3f}, max {max(ratios):.3f}"
    print(f"wall ratio (with / without, per pair): median {statistics.median(ratios):.3f} ({spread})")


if __name__ == "__main__":
    main()

"""System metrics of every machine of a multi-node run, in the run's one MLflow run.

Rank 0's tracking observer samples its machine with MLflow's monitor, in its store process. On
several machines (torchelastic's GROUP_WORLD_SIZE > 1) the first rank of each other machine
samples its own the same way, into the same run, and every machine's keys carry its node id
(`system/node1/cpu_utilization_percentage`; rank 0's machine is node0). On one machine nothing
here runs and the keys stay `system/...`.

The run's id exists only once rank 0's store process has created the run, which training never
waits for (the store may be down), so it travels through the rendezvous store on threads of their
own: rank 0 posts it once its observer knows it, and the other machines' first ranks wait for it,
then hand the monitor to a store process of their own. They send system metrics only.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gradloop.distributed.process_group import node_id

if TYPE_CHECKING:
    from gradloop.config import RunConfig
    from gradloop.distributed.process_group import DistContext

log = logging.getLogger("gradloop.tracking")

RUN_ID_KEY = "mlflow_run_id"
POLL_SECONDS = 0.5  # how often rank 0 looks for the run id, and the other machines for the key
STOP_SECONDS = 5.0  # how long the end of a rank waits for its monitor's last flush


def _store() -> Any:
    """A client of the rendezvous store of its own: the process group's client belongs to the
    training thread."""
    import torch.distributed as dist  # (a rank has imported it already)

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=60)
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"gradloop/attempt_{attempt}/node_metrics", store)


class NodeMetrics:
    """One daemon thread: on rank 0 it posts the run id; on another machine's first rank it waits
    for it and samples this machine until `close`."""

    def __init__(self, post: Callable[[], str | None] | None, uri: str, node: str, resumed: bool):
        self._post, self._uri, self._node, self._resumed = post, uri, node, resumed
        self._stop = threading.Event()
        if post is None:
            from gradloop.tracking.remote import shared_client

            shared_client(uri)  # MLflow's import, in the store process, starts now
        self._thread = threading.Thread(target=self._run, name="gradloop-node-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            store = _store()
            if self._post is not None:
                self._publish(store, self._post)
            else:
                self._sample(store)
        except Exception as exc:  # (the rendezvous store or MLflow went away: training goes on)
            log.warning("system metrics of machine %s: %s", self._node, exc)

    def _publish(self, store: Any, run_id_of: Callable[[], str | None]) -> None:
        while not self._stop.is_set():
            run_id = run_id_of()
            if run_id:
                store.set(RUN_ID_KEY, run_id)
                return
            self._stop.wait(POLL_SECONDS)

    def _sample(self, store: Any) -> None:
        from gradloop.tracking.remote import shared_client

        while not store.check([RUN_ID_KEY]):
            if self._stop.wait(POLL_SECONDS):
                return  # (the run ended before the store had created it)
        run_id = store.get(RUN_ID_KEY).decode()
        client = shared_client(self._uri)
        args = {"start": True, "resumed": self._resumed, "node_id": self._node}
        client.op(run_id, "system_metrics", args)
        self._stop.wait()
        client.op(run_id, "system_metrics", {"start": False})

    def close(self) -> None:
        """Stop: rank 0 posts nothing more; another machine's monitor logs its last samples,
        waited for a few seconds at most (the store process finishes it when this one exits)."""
        self._stop.set()
        self._thread.join(STOP_SECONDS)


def start(
    cfg: RunConfig, dist_ctx: DistContext, run_id_of: Callable[[], str | None], resumed: bool
) -> NodeMetrics | None:
    """The thread this rank runs for its machine's system metrics, or None when it runs none:
    one machine, tracking or its system metrics off, or not a machine's first rank."""
    node = node_id()
    if node is None or not (cfg.tracking.enabled and cfg.tracking.system_metrics):
        return None
    if not (dist_ctx.is_main or dist_ctx.local_rank == 0):
        return None
    from gradloop.tracking import resolve_uri

    return NodeMetrics(run_id_of if dist_ctx.is_main else None, resolve_uri(cfg.tracking.uri), node, resumed)


__all__ = ["NodeMetrics", "node_id", "start"]

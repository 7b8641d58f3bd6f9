"""Per-layer update and weight norms on the CPU, computed for a batch of logging windows at once.

On the CPU a foreach op is a loop of per-tensor kernels, and code that runs once per logging
window runs cold. So the per-layer statistics' copy, subtraction and norms (one foreach call
each) cost about 30 us a window on the digits MLP. Here a window only copies the weights into
a slot of a small ring of flat buffers, before and after its step (one torch.cat each, into
memory that stays in the cache); when the ring is full, or the observer writes its held
windows, every filled slot is reduced together: one subtraction, and one norm per parameter
for the whole batch (what that saves, end to end: docs/benchmarks.md, "What each
optimisation saves"). The windows are held until then (windows.py): a window's norms are
filled in when the ring reduces its batch.

Only for CPU runs whose parameters fit (contiguous, one dtype, RING_BYTES for the ring): on a
GPU the foreach ops are fused kernels already, and a large model's step dwarfs the ops' cost.
"""

from __future__ import annotations

import torch

RING_SLOTS = 16  # windows per batch
RING_BYTES = 16 << 20  # at most this much for the ring (3 weight-sized rows per slot)


class PendingNorms:
    """One window's update and weight norms (updates first, one per parameter, then weights):
    None until the ring computes its batch."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] | None = None


class UpdateRing:
    """Slots of [weights before the step, update, weights after it], flat, for the windows not
    yet reduced."""

    def __init__(self, weights: list[torch.Tensor], slots: int = RING_SLOTS):
        # Views of the parameters' storage: optimizers update in place, so they see every step.
        self._flat = [w.view(-1) for w in weights]
        sizes = [w.numel() for w in weights]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._bounds = [(a, a + n) for a, n in zip(starts, sizes)]
        # Per slot three rows: the weights before the step, the update (filled in by compute,
        # which leaves the copies as they were, so a pass cut short can simply run again), and
        # the weights after the step. Rows 1:3 are then [update, weights], in the order wanted.
        self._buffer = torch.zeros(slots, 3, sum(sizes), dtype=weights[0].dtype)
        self._rows = [(self._buffer[k, 0], self._buffer[k, 2]) for k in range(slots)]
        self._filled: list[PendingNorms] = []

    @staticmethod
    def fits(weights: list[torch.Tensor], slots: int = RING_SLOTS) -> bool:
        if not weights or any(
            w.device.type != "cpu" or not w.is_contiguous() or w.dtype != weights[0].dtype for w in weights
        ):
            return False
        return 3 * slots * sum(w.numel() for w in weights) * weights[0].element_size() <= RING_BYTES

    def before_step(self) -> PendingNorms:
        """Copy the weights into the next free slot (a window whose step never comes is simply
        overwritten by the next one)."""
        torch.cat(self._flat, out=self._rows[len(self._filled)][0])
        return PendingNorms()

    def after_step(self, pending: PendingNorms) -> None:
        torch.cat(self._flat, out=self._rows[len(self._filled)][1])
        self._filled.append(pending)
        if len(self._filled) == len(self._rows):
            self.compute()

    def compute(self) -> None:
        """Fill in the norms of every window copied since the last call."""
        if not self._filled:
            return
        n = len(self._filled)
        block = self._buffer[:n]
        torch.sub(block[:, 0], block[:, 2], out=block[:, 1])  # before - after: the update's norm
        # (n, 2, parameters): per window, the update norms, then the weight norms.
        norms = torch.stack([torch.linalg.vector_norm(block[:, 1:, a:b], dim=2) for a, b in self._bounds], dim=2)
        for pending, values in zip(self._filled, norms.reshape(n, -1).tolist()):
            pending.values = values
        self._filled = []

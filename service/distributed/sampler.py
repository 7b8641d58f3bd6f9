"""Which samples of each global batch a rank trains on: a partition of every epoch, no padding.

An epoch's order (gradloop.batching.epoch_order, the same on every rank) is cut into global
batches of `batch_size x world_size` samples, exactly as one process with that batch size would
cut it. Rank r takes the r-th contiguous part of each global batch. The parts of a short last
batch differ by at most one sample, so no sample is repeated to even them out (a padded duplicate
would count twice in the gradient and in validation), and every rank has the same number of
batches, hence of optimizer steps. The trainer weights each rank's loss by its share of the window,
so the averaged gradient is that of the one-process run with the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    """This process's place among `world_size` data-parallel ranks (rank 0 of 1: one process)."""

    rank: int = 0
    world_size: int = 1

    def part(self, size: int) -> tuple[int, int]:
        """(offset, count) of this rank's contiguous part of a global batch of `size` samples."""
        base, extra = divmod(size, self.world_size)
        return self.rank * base + min(self.rank, extra), base + (1 if self.rank < extra else 0)

    def local_sizes(self, global_sizes: Sequence[int]) -> tuple[int, ...]:
        return tuple(self.part(g)[1] for g in global_sizes)

    def positions(self, global_sizes: Sequence[int], start: int = 0) -> torch.Tensor:
        """Positions in the epoch's order of this rank's samples, from global batch `start` on."""
        first = sum(global_sizes[:start])
        pieces = []
        for g in global_sizes[start:]:
            offset, count = self.part(g)
            pieces.append(torch.arange(first + offset, first + offset + count))
            first += g
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


__all__ = ["Shard"]

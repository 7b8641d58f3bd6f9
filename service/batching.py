"""Turning a dataset into the micro-batches of each epoch, with the sizes known upfront.

Two sources, one API (`Batches`):
- `TensorBatches` for in-memory TensorData: the whole dataset moves to the run's device once,
  and each epoch is a permutation plus slices -- no DataLoader, no per-sample collation.
- `LoaderBatches` for any other torch Dataset: a DataLoader (workers, pin_memory on CUDA) fed
  with the same per-epoch index batches.

Each epoch's order comes from a generator seeded by (seed, epoch) alone, never from the global
RNG, so a run resumed in the middle of an epoch can skip the batches it already consumed and see
exactly the order an uninterrupted run sees. `plan` gives every micro-batch size before the epoch
starts; the trainer needs them to scale a partial accumulation window by its real sample count.

On several ranks (a `Shard` from gradloop.distributed.sampler), the epoch is cut into global
batches of batch_size x world_size and each rank takes its part of every global batch; the plan
then holds this rank's sizes and the windows' sample counts over all ranks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch.utils.data import DataLoader, Dataset

from gradloop.data import TensorData
from gradloop.distributed.sampler import Shard
from gradloop.errors import ConfigError
from gradloop.seeding import derive_seed

Batch = tuple[Any, torch.Tensor]


@dataclass(frozen=True)
class Window:
    """One accumulation window: micro-batches [start, stop) of an epoch and their sizes."""

    start: int
    sizes: tuple[int, ...]  # this process's micro-batch sizes
    # The window's samples on all ranks (sum(sizes) in one process): read once per micro-batch,
    # so computed once.
    samples: int = -1

    def __post_init__(self) -> None:
        if self.samples < 0:
            object.__setattr__(self, "samples", sum(self.sizes))

    @property
    def stop(self) -> int:
        return self.start + len(self.sizes)


@dataclass(frozen=True)
class BatchPlan:
    """The micro-batch sizes of one epoch (the same every epoch) grouped into windows of `accum`."""

    sizes: tuple[int, ...]
    accum: int = 1
    global_sizes: tuple[int, ...] | None = None  # the global batches' sizes, on several ranks

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.sizes) / self.accum)

    def windows(self, start: int = 0) -> list[Window]:
        """Windows of the epoch from micro-batch `start` (a window boundary) to the end.

        The last window of an epoch may hold fewer than `accum` micro-batches (and its last
        micro-batch fewer samples); windows never span two epochs.
        """
        if start % self.accum and start != len(self.sizes):
            raise ValueError(f"micro-batch {start} is not the start of a window of {self.accum}")
        every = self.global_sizes or self.sizes
        return [
            Window(i, self.sizes[i : i + self.accum], sum(every[i : i + self.accum]))
            for i in range(start, len(self.sizes), self.accum)
        ]


def plan_sizes(n: int, batch_size: int, drop_last: bool) -> tuple[int, ...]:
    full, rest = divmod(n, batch_size)
    return (batch_size,) * full + ((rest,) if rest and not drop_last else ())


def shard_plan(n: int, batch_size: int, drop_last: bool, accum: int, shard: Shard, *, what: str) -> BatchPlan:
    """The plan of this rank's batches: global batches of batch_size x world_size, split by rank."""
    if shard.world_size == 1:
        return BatchPlan(plan_sizes(n, batch_size, drop_last), accum)
    global_sizes = plan_sizes(n, batch_size * shard.world_size, drop_last)
    if what == "train" and global_sizes and global_sizes[-1] < shard.world_size:
        # A rank with no sample would have no loss to back-propagate, and padding it with a
        # duplicate would count that sample twice.
        raise ConfigError.single(
            "data.batch_size",
            f"the training split's {n} samples leave a last global batch of {global_sizes[-1]} sample(s) "
            f"for {shard.world_size} ranks (batch_size {batch_size} x {shard.world_size} ranks); "
            "set data.drop_last: true or change batch_size",
        )
    return BatchPlan(shard.local_sizes(global_sizes), accum, global_sizes)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """Sample indices of an epoch, on the CPU: the same on every device and after a resume."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(derive_seed(seed, epoch))
    return torch.randperm(n, generator=g)


class Batches(Protocol):
    plan: BatchPlan

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Micro-batches of `epoch` from micro-batch index `start`, already on the device."""
        ...

    def example_input(self) -> Any:
        """A few inputs (for a model signature or a compile warm-up)."""
        ...

    def close(self) -> None:
        """Release what the batches hold beyond the run (DataLoader workers); epoch() may start again after."""
        ...


class TensorBatches:
    """Batches of an in-memory TensorData by permutation and slicing, on the device."""

    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        device: torch.device,
        accum: int = 1,
        shard: Shard = Shard(),
        what: str = "train",
    ) -> None:
        self.data = data.to(device)  # once: every epoch then indexes device memory
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = device
        self.shard = shard
        self.plan = shard_plan(len(data), batch_size, drop_last, accum, shard, what=what)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        x, y, b = self.data.x, self.data.y, self.batch_size
        if self.plan.global_sizes is not None:
            yield from self._shard_epoch(epoch, start)
            return
        if not self.shuffle:
            for i in range(start, len(self.plan)):
                yield x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]
            return
        order = epoch_order(len(self.data), self.seed, epoch, True).to(self.device)
        # One gather for the whole epoch, then every batch is a view: a gather per batch cost
        # more than the forward pass of a small model. (The epoch's copy is one dataset's size.)
        xs, ys = x[order], y[order]
        for i in range(start, len(self.plan)):
            yield xs[i * b : (i + 1) * b], ys[i * b : (i + 1) * b]

    def _shard_epoch(self, epoch: int, start: int) -> Iterator[Batch]:
        assert self.plan.global_sizes is not None
        order = epoch_order(len(self.data), self.seed, epoch, self.shuffle)
        # Still one gather per epoch, of this rank's samples only.
        mine = order[self.shard.positions(self.plan.global_sizes, start)].to(self.device)
        xs, ys = self.data.x[mine], self.data.y[mine]
        first = 0
        for size in self.plan.sizes[start:]:
            if size:  # a validation batch may leave a rank nothing
                yield xs[first : first + size], ys[first : first + size]
            first += size

    def example_input(self) -> Any:
        return self.data.x[: min(self.batch_size, 8)]

    def close(self) -> None:
        pass  # nothing beyond the tensors, which the caller owns


class LoaderBatches:
    """Batches of a torch Dataset through a DataLoader, in the same seeded order."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        device: torch.device,
        num_workers: int = 0,
        accum: int = 1,
        shard: Shard = Shard(),
        what: str = "train",
    ) -> None:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError.single(
                "data.name",
                f"the dataset {type(dataset).__name__} has no length; gradloop needs a map-style Dataset (with "
                "__len__ and __getitem__)",
            ) from None
        self.dataset = dataset
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = device
        self.num_workers = num_workers
        self.pin = device.type == "cuda"
        self.shard = shard
        self.plan = shard_plan(n, batch_size, drop_last, accum, shard, what=what)
        self._loader: DataLoader | None = None
        self._sampler = _EpochBatches()

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        order = epoch_order(self.n, self.seed, epoch, self.shuffle)
        if self.plan.global_sizes is not None:
            mine = order[self.shard.positions(self.plan.global_sizes, start)].tolist()
            cuts = [0]
            for size in self.plan.sizes[start:]:
                cuts.append(cuts[-1] + size)
            index_batches = [mine[a:z] for a, z in zip(cuts, cuts[1:]) if z > a]
        else:
            b, flat = self.batch_size, order.tolist()
            index_batches = [flat[i * b : (i + 1) * b] for i in range(start, len(self.plan))]
        if not index_batches:
            return
        if self.num_workers:
            loader = self._worker_loader()
            # Items are (epoch, index): each sample's randomness (augmentations) comes from a
            # generator seeded by (seed, epoch, index), whichever worker decodes it, so a resumed
            # run sees the same crops as an uninterrupted one, with workers kept across epochs.
            self._sampler.batches = [[(epoch, i) for i in batch] for batch in index_batches]
        else:
            # In-process: the loader's generator, from (seed, epoch) rather than the global RNG.
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, "workers"))
            loader = DataLoader(self.dataset, batch_sampler=index_batches, num_workers=0, generator=g)
        for batch in loader:
            x, y = _split_batch(batch)
            yield to_device(x, self.device), y.to(self.device, non_blocking=self.pin)

    def _worker_loader(self) -> DataLoader:
        """One DataLoader for the whole run: its workers start once (persistent_workers) and
        decode in the background; each epoch hands its batches to the same sampler."""
        if self._loader is None:
            self._sampler = _EpochBatches()
            self._loader = DataLoader(
                _SeededItems(self.dataset, self.seed),
                batch_sampler=self._sampler,
                num_workers=self.num_workers,
                pin_memory=self.pin,
                persistent_workers=True,
                generator=torch.Generator().manual_seed(derive_seed(self.seed, "workers")),
            )
        return self._loader

    def close(self) -> None:
        """Stop the persistent workers now. Left to garbage collection, they are stopped at exit,
        where torch's shutdown waits out each worker's status-check interval before it goes."""
        loader, self._loader = self._loader, None
        workers = getattr(loader, "_iterator", None)  # the iterator that owns the worker processes
        shutdown = getattr(workers, "_shutdown_workers", None)  # what torch's own __del__ calls
        if shutdown is not None:
            shutdown()

    def example_input(self) -> Any:
        x, _ = _split_batch(self.dataset[0])
        if isinstance(x, Mapping):
            return {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
        return x.unsqueeze(0) if isinstance(x, torch.Tensor) else x


class _EpochBatches:
    """The batch sampler of a persistent DataLoader: the current epoch's batches, set before each."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _SeededItems(Dataset):
    """dataset[index] for the key (epoch, index), drawn with torch's CPU and Python's RNGs seeded from
    (seed, epoch, index). Only used in DataLoader workers, whose RNG nothing else relies on."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        sample_seed = derive_seed(self.seed, epoch, index)
        # The CPU generator only (what transforms draw from): torch.manual_seed would also queue
        # the seeding of every CUDA device, with a captured stack, once per sample -- and a
        # worker never runs CUDA.
        torch.default_generator.manual_seed(sample_seed)
        random.seed(sample_seed)
        return self.dataset[index]


def make_batches(
    data: TensorData | Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
    accum: int = 1,
    shard: Shard = Shard(),
    what: str = "train",
) -> TensorBatches | LoaderBatches:
    """TensorData is sliced in place; any other Dataset goes through a DataLoader.

    `shard`: this rank's part of every global batch; `what` ("train" or "val") says whether a rank
    may be left without a sample in a short last batch (validation only)."""
    if isinstance(data, TensorData):
        return TensorBatches(
            data,
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            device=device,
            accum=accum,
            shard=shard,
            what=what,
        )
    return LoaderBatches(
        data,
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        device=device,
        num_workers=num_workers,
        accum=accum,
        shard=shard,
        what=what,
    )


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ConfigError.single(
        "data.name",
        f"dataset items must be (input, target) pairs, got {type(batch).__name__}; make __getitem__ return (x, y)",
    )


def to_device(x: Any, device: torch.device) -> Any:
    """A batch's inputs on `device`: a tensor, or tensors in a mapping (e.g. input_ids and
    attention_mask) or a sequence."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=device.type == "cuda")
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, Sequence) and not isinstance(x, str):
        return cast(Any, type(x))(to_device(v, device) for v in x)  # list or tuple, as it came
    return x


__all__ = [
    "Window",
    "BatchPlan",
    "Batches",
    "TensorBatches",
    "LoaderBatches",
    "make_batches",
    "epoch_order",
    "plan_sizes",
    "shard_plan",
    "to_device",
]

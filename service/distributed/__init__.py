"""Data-parallel training on torch.distributed's own machinery: one model, several processes.

- config checks (checks.py): the `distributed:` block against this machine (backend, GPUs),
  before anything starts.
- launch.py: `gradloop run` starts the ranks through torch's elastic launcher (c10d rendezvous,
  restarts, per-rank logs); a process that torchrun already started is a rank and launches nothing.
- process_group.py: a rank's view of the run: its rank and world size, the process group, and
  the few collectives the trainer uses (sums, an agreed stop, broadcasts).
- sampler.py: which samples of each global batch belong to which rank (a partition, no padding).
- wrap.py: DistributedDataParallel around the model, or FSDP2's sharding, and gradient sync on or
  off inside an accumulation window.
- fsdp.py: FSDP2 (`strategy: fsdp`): fully_shard, full gradient norms from the shards, the
  whole tensors rank 0 logs (histograms, the final model), and sharded checkpoints through
  torch.distributed.checkpoint.
- node_metrics.py: on several machines, each machine's system metrics in rank 0's MLflow run,
  under its node id (the run's id reaches the other machines through the rendezvous store).

The trainer (gradloop.trainer) runs the same loop on every rank; rank 0 alone logs and writes
checkpoint files (under FSDP every rank writes its shards beside them).
"""

"""The job service's machinery: the job store, queue claims and leases, and the worker processes.

Layout (one idea per module):
  models.py      the SQLAlchemy tables (jobs, job_events)
  migrations/    Alembic scripts that create and evolve those tables; run at start-up
  store.py       JobStore: submitting, reading, listing, cancelling jobs and their event log
  claims.py      claiming a queued job as a lease, heartbeats, re-queueing expired leases
  progress.py    JobProgressObserver: what a running job writes back (progress, metrics, run id)
  worker.py      what runs inside one job's child process
  forkserver.py  a pre-imported process that forks one child (own process group) per job
  job_log.py     a job's output, copied by the fork server into its log up to --max-log-bytes
  pool.py        the service side: claims jobs, starts them, heartbeats, cancels, reaps
  events.py      Server-Sent Events from the job's event log
"""

from __future__ import annotations

from gradloop.jobs.models import ACTIVE_STATES, TERMINAL_STATES, JobState

__all__ = ["JobState", "TERMINAL_STATES", "ACTIVE_STATES"]

"""Serving the API from several processes: `gradloop serve --workers N`.

One Python process answers about 400-450 submits a second on this project's machine: FastAPI,
validation and the store write are a couple of milliseconds of CPU each, and the GIL keeps them
on one core. With --workers N, uvicorn's supervisor runs N copies of the app on one listening
socket and the kernel spreads connections between them.

Jobs still run in one place. The first process to take the state directory's pool lock (an
flock, which the kernel releases when its holder exits, however it exits) runs the job pool;
the others only serve the API, and the pool finds the jobs they queue in the shared store at
its next tick (every 0.25 s). When the pool's process dies, uvicorn starts a replacement, and
the replacement takes the lock. The children read their settings from one environment variable
that `gradloop serve` fills in before uvicorn spawns them.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from gradloop.api.app import create_app
from gradloop.api.pool_lock import POOL_LOCK_NAME
from gradloop.api.settings import ServiceSettings

SETTINGS_ENV = "GRADLOOP_SERVICE_SETTINGS"


def app_from_env() -> FastAPI:
    """uvicorn's app factory in each worker process."""
    settings = ServiceSettings.model_validate_json(os.environ[SETTINGS_ENV])
    return create_app(settings, pool_lock=settings.state_dir / POOL_LOCK_NAME)

"""What a job's output may cost the service, through a real `gradloop serve`: an error of a
megabyte is stored capped (in the job's row, its events and every list of jobs) with a marker
pointing at the log, and the log itself holds a capped copy; a job that prints past
--max-log-bytes leaves a log of about that size ending with one line saying it was cut, and
goes on to succeed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest

from gradloop.jobs.job_log import cut_line
from gradloop.jobs.records import MAX_ERROR_BYTES
from gradloop.jobs.worker import LOG_ERROR_BYTES
from tests.support.api_service import Service, iris_config

pytestmark = [pytest.mark.server, pytest.mark.timeout(240)]

MAX_LOG_BYTES = 200_000
# What one job may take in GET /v1/jobs: its fields, and an error of at most MAX_ERROR_BYTES.
JOB_IN_A_LIST_BYTES = 8 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        tmp_path_factory.mktemp("svc"),
        extra_args=["--max-concurrent", "1", "--max-log-bytes", str(MAX_LOG_BYTES)],
    )
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()


def _log_bytes(service: Service, job_id: str) -> bytes:
    return (service.state_dir / "jobs" / job_id / "job.log").read_bytes()


@pytest.mark.parametrize("error", ["RuntimeError", "GradloopError"])  # (a job's bug; an error gradloop reports)
def test_a_megabyte_error_is_stored_capped_and_lists_stay_small(service: Service, error: str) -> None:
    options = {"at_call": 3, "message_bytes": 1_000_000, "gradloop_error": error == "GradloopError"}
    loss = {"name": "raise_loss", "options": options}
    job_id = service.submit(iris_config("huge-error", loss=loss, tracking=False)).json()["id"]
    failed = service.wait_for(job_id)
    assert failed["status"] == "failed" and failed["error"]["type"] == error
    message = failed["error"]["message"]
    assert message.startswith("test plugin raised on call 3xxx")
    assert message.endswith("more bytes, see the job log)")
    assert len(json.dumps(failed["error"])) <= MAX_ERROR_BYTES

    with sqlite3.connect(service.state_dir / "jobs.db") as db:
        (stored,) = db.execute("SELECT error FROM gradloop_jobs WHERE id = ?", (job_id,)).fetchone()
        events = db.execute("SELECT data FROM gradloop_job_events WHERE job_id = ?", (job_id,)).fetchall()
    assert len(stored) <= MAX_ERROR_BYTES
    assert max(len(data) for (data,) in events) <= MAX_ERROR_BYTES + 256  # the error and the state around it

    listed = service.http.get("/v1/jobs", params={"limit": 200})
    assert listed.status_code == 200
    entry = next(j for j in listed.json()["jobs"] if j["id"] == job_id)
    assert len(json.dumps(entry)) <= JOB_IN_A_LIST_BYTES
    assert len(service.http.get(f"/v1/jobs/{job_id}/events").content) <= 4 * JOB_IN_A_LIST_BYTES

    # The log has more of the message than the row, and still not the megabyte.
    log = _log_bytes(service, job_id)
    assert b"test plugin raised on call 3" in log and b"more bytes)" in log
    assert len(log) < LOG_ERROR_BYTES + 16 * 1024


def test_a_job_printing_past_the_limit_leaves_a_log_of_the_limit_and_goes_on(service: Service) -> None:
    # About 20 calls of the loss (training and validation) of 50 kB each: five times the limit.
    loss = {"name": "noisy_loss", "options": {"bytes_per_call": 50_000}}
    job_id = service.submit(iris_config("noisy", loss=loss, tracking=False)).json()["id"]
    done = service.wait_for(job_id)
    assert done["status"] == "succeeded", done  # the job went on past the cut
    assert done["progress"]["step"] == done["progress"]["total_steps"]

    log = _log_bytes(service, job_id)
    assert log.endswith(cut_line(MAX_LOG_BYTES))
    assert log.count(b"reached its limit") == 1
    kept = len(log) - len(cut_line(MAX_LOG_BYTES))
    assert MAX_LOG_BYTES - 200 <= kept <= MAX_LOG_BYTES  # whole lines, up to the limit
    assert b"starting in process" in log and b"noise noise" in log
    # The service's view of the log is the same file.
    served = service.http.get(f"/v1/jobs/{job_id}/logs")
    assert served.status_code == 200 and "reached its limit" in served.text

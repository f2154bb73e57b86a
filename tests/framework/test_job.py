"""Parsing job resources, leases and serialised errors (no server needed)."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from oada_jobs import InvalidJob, JobError
from oada_jobs.job import Job, JobStatus, Lease, error_result, iso, new_update, parse_time


def test_a_job_resource_is_parsed() -> None:
    job = Job.from_resource(
        {
            "service": "svc",
            "type": "email",
            "config": {"to": "a@example.org", "traceId": "t-1"},
            "status": "running",
            "lease": {"worker": "w1", "expires": "2999-01-01T00:00:00.000Z"},
            "_id": "resources/J",
        },
        oada_id="resources/J",
        key="k",
        etag='"J/3"',
    )
    assert (job.service, job.type, job.key, job.etag) == ("svc", "email", "k", '"J/3"')
    assert job.config == {"to": "a@example.org", "traceId": "t-1"}
    assert job.trace_id == "t-1"
    assert job.lease is not None
    assert job.lease.worker == "w1"
    assert not job.finished
    assert not job.claimable_by("w2")
    assert job.claimable_by("w1")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1, 2], "expected a job object with 'service' and 'type', got a list"),
        (None, "got null"),
        ({}, "'service' is missing; 'type' is missing"),
        ({"service": "s", "type": 3}, "'type' must be a non-empty string, got an integer"),
        ({"service": "s", "type": "t", "config": [1]}, "'config' must be an object, got a list"),
        ({"service": "s", "type": "t", "status": 5}, "'status' must be a string"),
    ],
)
def test_bad_job_resources_are_refused_with_what_is_wrong(data: object, expected: str) -> None:
    with pytest.raises(InvalidJob, match="resources/X is not a job") as info:
        Job.from_resource(data, oada_id="resources/X", key="k")
    assert expected in str(info.value)
    assert info.value.job_id == "resources/X"
    assert info.value.key == "k"


def test_finished_jobs_are_not_claimable() -> None:
    for status in ("success", "failure"):
        job = Job.from_resource(
            {"service": "s", "type": "t", "status": status}, oada_id="resources/J"
        )
        assert job.finished
        assert not job.claimable_by("w")


def test_an_expired_lease_can_be_taken_over() -> None:
    lease = Lease.new("w1", timedelta(seconds=-1))
    job = Job.from_resource(
        {"service": "s", "type": "t", "status": JobStatus.RUNNING.value, "lease": lease.to_json()},
        oada_id="resources/J",
    )
    assert lease.expired()
    assert job.claimable_by("w2")


def test_updates_have_time_ordered_keys_and_iso_times() -> None:
    keys = [new_update("started")[0] for _ in range(50)]
    assert keys == sorted(keys)
    _, body = new_update("started", {"x": 1})
    assert body["status"] == "started"
    assert body["meta"] == {"x": 1}
    assert parse_time(body["time"]) is not None
    assert body["time"].endswith("Z")


def test_errors_are_serialised_with_name_message_traceback_and_type() -> None:
    try:
        raise JobError("mailbox full", "smtp-rejected", details={"code": 552})
    except JobError as error:
        result = error_result(error)
    assert result["name"] == "JobError"
    assert result["message"] == "mailbox full"
    assert result["failType"] == "smtp-rejected"
    assert result["details"] == {"code": 552}
    assert "Traceback" in result["traceback"]
    assert "mailbox full" in result["traceback"]


def test_times_are_written_in_utc_to_the_millisecond_with_a_z() -> None:
    assert iso(datetime(2026, 1, 2, 3, 4, 5, 678_999, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"
    assert iso(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"
    east = timezone(timedelta(hours=2))
    assert iso(datetime(2026, 1, 2, 1, 0, 0, 5_000, tzinfo=east)) == "2026-01-01T23:00:00.005Z"

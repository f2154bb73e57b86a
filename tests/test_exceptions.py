from datetime import timedelta

import pytest

from oada_jobs import exceptions as exc


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, exc.BadRequest),
        (401, exc.Unauthorized),
        (403, exc.Forbidden),
        (404, exc.NotFound),
        (409, exc.Conflict),
        (412, exc.PreconditionFailed),
        (413, exc.PayloadTooLarge),
        (422, exc.UnprocessableEntity),
        (429, exc.TooManyRequests),
        (500, exc.ServerError),
        (503, exc.ServerError),
        (418, exc.OADAStatusError),
    ],
)
def test_error_for_status_picks_named_class(status: int, cls: type) -> None:
    err = exc.error_for_status(status, "nope", method="get", path="/bookmarks/x")
    assert type(err) is cls
    assert err.status == status
    assert isinstance(err, exc.OADAError)
    assert str(err) == "GET /bookmarks/x: nope"


def test_messages_never_carry_bearer_tokens() -> None:
    err = exc.OADAError("failed with Authorization: Bearer s3cret-token", path="/x")
    assert "s3cret" not in str(err)
    assert "s3cret" not in repr(err)
    entry = exc.InvalidQueueEntry("bad entry {'token': 'Bearer abc123'}")
    assert "abc123" not in str(entry)


def test_redact_masks_named_secrets() -> None:
    assert exc.redact("token=hunter2 ok", "hunter2") == "token=*** ok"


def test_retry_after_header_is_parsed() -> None:
    err = exc.error_for_status(429, "slow down", headers={"retry-after": "3"})
    assert isinstance(err, exc.TooManyRequests)
    assert err.retry_after == 3.0


def test_retry_signal_accepts_timedelta_and_rejects_negative() -> None:
    assert exc.Retry(defer=timedelta(minutes=1)).defer == 60.0
    with pytest.raises(ValueError, match="defer must be >= 0"):
        exc.Retry(defer=-1)


def test_job_cancelled_is_a_typed_job_error() -> None:
    err = exc.JobCancelled()
    assert isinstance(err, exc.JobError)
    assert err.fail_type == "cancelled"

"""Property-based tests: job parsing and queue-entry parsing accept exactly the
well-formed input, refuse everything else with their own clear error (never a
stray TypeError/KeyError), and never put a token in an error."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from oada_jobs.client import parse_domain
from oada_jobs.exceptions import InvalidJob, InvalidKey, InvalidQueueEntry
from oada_jobs.job import Job, JobOptions, Lease
from oada_jobs.queue_list import parse_queue_entry
from oada_jobs.server.core import _split_path
from oada_jobs.tree import path_segment, resource_path

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
names = st.text(min_size=1, max_size=20)


@st.composite
def job_like(draw: st.DrawFn) -> Any:
    """Mostly job-shaped objects, each field sometimes missing or of a wrong type."""
    body: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    for field, good in (
        ("service", names),
        ("type", names),
        ("config", st.none() | st.dictionaries(st.text(), json_values, max_size=4)),
        ("updates", st.none() | st.dictionaries(st.text(), json_values, max_size=3)),
        ("status", st.none() | st.sampled_from(["pending", "running", "success", "failure"])),
        ("lease", json_values),
        (
            "options",
            st.none()
            | st.fixed_dictionaries(
                {},
                optional={
                    "priority": st.integers(),
                    "group": names,
                    "uniqueKey": names,
                    "version": st.integers(min_value=0),
                    "tries": st.integers(min_value=1),
                },
            ),
        ),
    ):
        choice = draw(st.integers(0, 4))
        if choice == 0:
            body.pop(field, None)
        elif choice == 1:
            body[field] = draw(json_values)
        else:
            body[field] = draw(good)
    return body


def well_formed(data: object) -> bool:
    if not isinstance(data, Mapping):
        return False
    service, job_type = data.get("service"), data.get("type")
    config = data.get("config", {})
    updates = data.get("updates") or {}
    status = data.get("status")
    finished = status in ("success", "failure")
    options_ok = finished or JobOptions.parse(data.get("options"))[1] == []
    return (
        options_ok
        and isinstance(service, str)
        and bool(service)
        and isinstance(job_type, str)
        and bool(job_type)
        and (config is None or isinstance(config, Mapping))
        and isinstance(updates, Mapping)
        and (status is None or isinstance(status, str))
    )


@SETTINGS
@given(job_like() | json_values)
def test_job_parsing_accepts_exactly_well_formed_jobs(data: Any) -> None:
    if not well_formed(data):
        with pytest.raises(InvalidJob) as info:
            Job.from_resource(data, oada_id="resources/J1", key="J1", etag='"J1/3"')
        assert str(info.value).startswith("resources/J1 is not a job: ")
        assert info.value.job_id == "resources/J1"
        return
    job = Job.from_resource(data, oada_id="resources/J1", key="J1", etag='"J1/3"')
    assert job.service == data["service"]
    assert job.type == data["type"]
    assert job.config == dict(data.get("config") or {})
    assert job.oada_id == "resources/J1"
    assert job.key == "J1"
    assert job.etag == '"J1/3"'
    assert job.finished == (data.get("status") in ("success", "failure"))
    if job.finished:
        assert not job.claimable_by("anyone")


@SETTINGS
@given(st.text(min_size=1, max_size=30), st.datetimes(timezones=st.just(UTC)))
def test_lease_round_trips_and_guards_claims(worker: str, moment: datetime) -> None:
    lease = Lease(worker, moment.replace(microsecond=moment.microsecond // 1000 * 1000))
    assert Lease.from_json(lease.to_json()) == lease
    job: Job[dict[str, Any]] = Job(
        oada_id="resources/J", key="J", service="s", type="t", config={}, lease=lease
    )
    assert job.claimable_by(worker)
    before, after = lease.expires - timedelta(seconds=1), lease.expires + timedelta(seconds=1)
    assert not job.claimable_by(worker + "-other", now=before)
    assert job.claimable_by(worker + "-other", now=after)


hosts = st.sampled_from(
    ["127.0.0.1:8080", "localhost", "oada.example.org", "https://oada.example.org", "http://h:1"]
)
tokens = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=40
).map(lambda t: "TOK" + t)


@st.composite
def queue_entries(draw: st.DrawFn) -> Any:
    entry: dict[str, Any] = {}
    for field, good in (("domain", hosts | st.text(max_size=20)), ("token", tokens)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            continue
        entry[field] = draw(json_values) if choice == 1 else draw(good)
    extra = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2))
    return {**extra, **entry}


def valid_entry(value: object) -> bool:
    if not isinstance(value, Mapping):
        return False
    domain, token = value.get("domain"), value.get("token")
    if not isinstance(token, str) or not token.strip() or not isinstance(domain, str):
        return False
    if any(char.isspace() or not char.isprintable() for char in token):
        return False
    if any(char.isspace() for char in domain.strip()):
        return False
    try:
        parse_domain(domain)
    except ValueError:
        return False
    return True


@SETTINGS
@given(st.text(max_size=10), queue_entries() | json_values)
# A token that is also the key's text: the key is named as it is.
@example("0", {"token": "0"})
def test_queue_entry_parsing(key: str, value: Any) -> None:
    if not valid_entry(value):
        with pytest.raises(InvalidQueueEntry) as info:
            parse_queue_entry(key, value)
        message = str(info.value)
        assert message.startswith(f"queue entry {key!r} is ignored: ")
        token = value.get("token") if isinstance(value, Mapping) else None
        secret = token.strip() if isinstance(token, str) else ""
        # (unless the key or the domain happen to contain the same text)
        if secret and secret not in repr(key) + repr(value.get("domain")):
            assert secret not in message, "a token in an error message"
            assert secret not in repr(info.value)
        return
    entry = parse_queue_entry(key, value)
    assert entry.token == value["token"]
    assert entry.domain == parse_domain(value["domain"]).http
    assert value["token"] not in repr(entry)


@SETTINGS
@given(key=st.text(max_size=30) | st.sampled_from(["", ".", "..", "~", "/", "~1", "a/b~0"]))
def test_a_key_is_one_path_segment_that_names_it_or_an_invalid_key(key: str) -> None:
    """Whatever the key, the escaped segment names exactly that key on the
    server (split and unescaped as a JSON pointer), or InvalidKey says why."""
    refused: InvalidKey | None = None
    try:
        segment = path_segment(key)
    except InvalidKey as error:
        refused = error
    if refused is not None:
        assert refused.key == key
        with pytest.raises(InvalidKey):
            resource_path(f"resources/{key}")
        return
    assert "/" not in segment
    assert segment not in ("", ".", "..")
    assert segment.isascii()
    assert not any(char.isspace() or char in "?#" for char in segment)
    assert _split_path(f"/bookmarks/{segment}") == ["bookmarks", key]
    if "/" not in key:
        assert resource_path(f"resources/{key}") == f"/resources/{segment}"

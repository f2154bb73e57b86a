"""The two job-list layouts and their trees (no server needed)."""

from datetime import date

import pytest

from oada_jobs.tree import JOBS_TYPE, get_layout, service_root, validate_service_name


def test_classic_layout_paths() -> None:
    layout = get_layout("classic")
    assert layout.pending_path("svc") == "/bookmarks/services/svc/jobs"
    day = date(2026, 11, 23)
    assert (
        layout.day_index_path("svc", "success", day)
        == "/bookmarks/services/svc/jobs-success/day-index/2026-11-23"
    )
    assert (
        layout.day_index_path("svc", "failure", day, "timeout")
        == "/bookmarks/services/svc/jobs-typed-failure/timeout/day-index/2026-11-23"
    )


def test_pending_layout_paths() -> None:
    layout = get_layout("pending")
    assert layout.pending_path("svc") == "/bookmarks/services/svc/jobs/pending"
    day = date(2026, 1, 2)
    assert (
        layout.day_index_path("svc", "failure", day)
        == "/bookmarks/services/svc/jobs/failure/day-index/2026-01-02"
    )
    assert (
        layout.day_index_path("svc", "failure", day, "a b/c")
        == "/bookmarks/services/svc/jobs/typed-failure/a-b-c/day-index/2026-01-02"
    )
    # Never a navigation segment, which servers refuse.
    for fail_type, segment in ((".", "-"), ("..", "--"), ("", "-"), (".x", ".x")):
        path = layout.day_index_path("svc", "failure", day, fail_type)
        assert path == f"/bookmarks/services/svc/jobs/typed-failure/{segment}/day-index/2026-01-02"


def test_trees_mark_lists_as_resources_with_versioned_finished_lists() -> None:
    service = get_layout("pending").tree["bookmarks"]["services"]["*"]
    assert service["jobs"]["pending"] == {"_type": JOBS_TYPE}
    assert service["jobs"]["success"]["_rev"] == 0
    assert service["jobs"]["success"]["day-index"]["*"]["_type"] == JOBS_TYPE
    classic = get_layout("classic").tree["bookmarks"]["services"]["*"]
    assert "_rev" not in classic["jobs"]
    assert classic["jobs-failure"]["day-index"]["*"]["_rev"] == 0


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="expected layout 'classic' or 'pending', got 'nope'"):
        get_layout("nope")  # type: ignore[arg-type]
    for name in ("", "a/b", "has space", "../x"):
        with pytest.raises(ValueError, match="expected a service name"):
            validate_service_name(name)
    assert service_root("email-service") == "/bookmarks/services/email-service"
    for bad in ("a/b", ["svc"], None):
        with pytest.raises(ValueError, match="expected a service name"):
            service_root(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected status"):
        get_layout("classic").day_index_path("svc", "running", date(2026, 1, 1))

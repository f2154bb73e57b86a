"""``oada-jobs demo`` runs to completion by itself with every kind of job."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import anyio
import anyio.abc
from product_helpers import CLI

from oada_jobs.cli.demo import BAD_CONFIG, OK, REFUSED, SLOW, job_kinds
from oada_jobs.client import OADAClient
from oada_jobs.testing import embedded_server


def test_job_mix_covers_every_outcome_first() -> None:
    assert job_kinds(4) == [OK, SLOW, BAD_CONFIG, REFUSED]
    assert job_kinds(2) == [OK, SLOW]
    many = job_kinds(20)
    assert len(many) == 20
    assert {kind.name for kind in many} == {OK.name, SLOW.name, BAD_CONFIG.name, REFUSED.name}


async def test_demo_runs_to_completion(tmp_path: Path) -> None:
    where = tmp_path / "demo"
    result = await CLI({})("demo", "--jobs", "4", "--timeout", "1", "--dir", str(where))
    assert result.exit_code == 0, result
    out = result.stdout
    assert "4 jobs in" in out
    assert "1 succeeded, 3 failed, 4 of 4 as expected" in out
    # It says how to look at the jobs again, with real ids...
    assert f"oada-jobs serve --db {where / 'oada.sqlite'}" in out
    shown = re.search(r"oada-jobs jobs show (resources/\w{27})", out)
    assert shown is not None
    # ... and that works: the data is kept, every job filed where it should be.
    async with embedded_server(db=where / "oada.sqlite") as server:
        cli = CLI({"OADA_DOMAIN": server.url, "OADA_TOKEN": "god"})
        listed = await cli("jobs", "list", "-s", "email-service", "--json")
        assert listed.exit_code == 0, listed
        jobs = listed.json()
        assert jobs["pending"] == {"day": None, "jobs": []}
        assert len(jobs["success"]["jobs"]) == 1
        assert len(jobs["failure"]["jobs"]) == 3
        job = (await cli("jobs", "show", shown.group(1), "--json")).json()
        assert job["status"] == "failure"
        day = jobs["failure"]["day"]
        async with OADAClient(server.url, "god") as oada:
            for fail_type in ("timeout", "invalid-config", "recipient-refused"):
                path = f"/bookmarks/services/email-service/jobs-typed-failure/{fail_type}"
                typed = (await oada.get(f"{path}/day-index/{day}")).data
                assert len([key for key in typed if not key.startswith("_")]) == 1
    # The one delivered message went to the outbox; the refused one did not.
    assert len(list((where / "outbox").glob("*.eml"))) == 1
    assert "job finished" in (where / "service.log").read_text()


async def test_demo_with_the_pending_layout(tmp_path: Path) -> None:
    result = await CLI({})(
        "demo", "--jobs", "2", "--timeout", "0.5", "--layout", "pending", "--dir", str(tmp_path)
    )
    assert result.exit_code == 0, result
    assert "1 succeeded, 1 failed, 2 of 2 as expected" in result.stdout
    async with embedded_server(db=tmp_path / "oada.sqlite") as server:
        listed = await CLI({"OADA_DOMAIN": server.url, "OADA_TOKEN": "god"})(
            "jobs", "list", "-s", "email-service", "--json"
        )
    assert listed.json()["layout"] == "pending"
    assert len(listed.json()["failure"]["jobs"]) == 1


async def test_demo_rejects_a_bad_layout(tmp_path: Path) -> None:
    result = await CLI({})("demo", "--layout", "flat", "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert "--layout must be classic or pending" in result.stderr


async def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        command = [sys.executable, "-m", "oada_jobs", "demo", "--port", str(port)]
        with anyio.fail_after(60):
            result = await anyio.run_process(
                [*command, "--dir", str(tmp_path), "--jobs", "1"], check=False
            )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0]
    assert "address already in use" in lines[0]

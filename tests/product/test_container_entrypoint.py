"""The container's entrypoint, run the way the image runs it (no Docker engine needed).

Builds the wheel as the Dockerfile does, installs it into a fresh virtualenv,
copies the example as ``COPY examples/...`` does, and runs the image's
ENTRYPOINT command against an embedded server until a job is processed.
Dependencies come from the development environment (added to the new
virtualenv's path), so nothing but the wheel's build backend is downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from anyio.streams.text import TextReceiveStream

from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer, post_job, wait_for_job

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT, as a list."""
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"^ENTRYPOINT \[(.*)\]$", text, re.MULTILINE)
    assert match is not None, "the Dockerfile has no exec-form ENTRYPOINT"
    return [part.strip().strip('"') for part in match.group(1).split(",")]


def build(tmp: Path) -> Path:
    """Build the wheel and a virtualenv with it; return the venv's bin directory."""
    wheels = tmp / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("oada_jobs-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    bin_dir = env_dir / "bin"
    (site,) = (env_dir / "lib").glob("python3*/site-packages")
    # The wheel goes into the new environment; its dependencies are the
    # development environment's (a path entry after the venv's own).
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    (site / "zz_dependencies.pth").write_text(deps + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    shutil.copytree(REPO / "examples", tmp / "app" / "examples")
    return bin_dir


async def test_entrypoint_processes_a_job(server: EmbeddedServer, tmp_path: Path) -> None:
    command = entrypoint()
    assert command[:3] == ["oada-jobs", "run", "examples.email_service:service"]
    bin_dir = await anyio.to_thread.run_sync(build, tmp_path)
    app = tmp_path / "app"
    # What the `oada-jobs` console script runs, from the image's WORKDIR.
    script = bin_dir / "python"
    args = [str(script), "-c", "from oada_jobs.cli import main; main()", *command[1:]]
    which = subprocess.run(
        [str(script), "-c", "import oada_jobs; print(oada_jobs.__file__)"],
        cwd=app,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(tmp_path / "venv") in which.stdout, "oada_jobs must come from the wheel"
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "OADA_DOMAIN": server.url,
        "OADA_TOKEN": server.token,
        "OADA_JOBS_METRICS_PORT": "0",
        "OADA_JOBS_GRACE_PERIOD": "2",
        "EMAIL_OUTBOX": str(app / "outbox"),
    }
    output = ""
    async with await anyio.open_process(
        args, cwd=app, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    ) as process:
        try:
            assert process.stderr is not None
            with anyio.fail_after(60):
                async for chunk in TextReceiveStream(process.stderr):
                    output += chunk
                    if "is running on" in output:
                        break
            async with OADAClient(server.url, server.token) as oada:
                job_id = await post_job(
                    oada, "email-service", "email", {"to": ["ada@example.org"], "subject": "Hi"}
                )
                job = await wait_for_job(oada, job_id, 30)
            assert job.status == "success", output
            assert len(list((app / "outbox").glob("*.eml"))) == 1
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()

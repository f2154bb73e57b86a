"""``oada-jobs dashboard`` as a process: serves the page, keeps the token out, stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import sys

import anyio
import httpx
from anyio.streams.text import TextReceiveStream

from oada_jobs.testing import EmbeddedServer


async def test_the_command_serves_until_interrupted(server: EmbeddedServer) -> None:
    env = {**os.environ, "OADA_DOMAIN": server.url, "OADA_TOKEN": server.token}
    env.pop("OADA_JOBS_DASHBOARD_SECRET", None)
    command = [sys.executable, "-m", "oada_jobs", "dashboard", "--port", "0"]
    async with await anyio.open_process(command, env=env) as process:
        assert process.stdout is not None
        output = ""
        with anyio.fail_after(30):
            async for text in TextReceiveStream(process.stdout):
                output += text
                if "\n" in output:
                    break
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", output)
        assert found, output
        assert server.token not in output
        async with httpx.AsyncClient(base_url=found.group(1)) as http:
            page = await http.get("/")
        assert page.status_code == 200
        assert "Services" in page.text
        assert server.token not in page.text
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(15):
            code = await process.wait()
        assert process.stderr is not None
        errors = ""
        with anyio.fail_after(5):
            async for text in TextReceiveStream(process.stderr):
                errors += text
        assert "Traceback" not in errors
    # Stopped by the user: the command's usual 130 (or 0), never a traceback.
    assert code in (0, 130)

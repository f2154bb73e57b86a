"""Helpers that run the official OADA Node clients against the embedded server.

Each Node script in ``conformance/`` runs every case it knows against one
server and prints one JSON line per case: ``{"case", "ok", "detail"}``. A
module-scoped fixture starts the server, runs the script once, and the test
functions then assert one case each, so a failure names its case and shows
what the client saw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from oada_jobs.testing import EmbeddedServer

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE = ROOT / "conformance"
#: Upper bound for one whole script run (every case of one client and mode).
RUN_TIMEOUT = 90.0
#: The conformance servers' body limit: small enough that the too_large case
#: stays quick, big enough for large_body (~4 MiB).
MAX_BODY_BYTES = 8 * 1024 * 1024

CLIENT5_SCRIPT = "oada-client-5.mjs"
CLIENT1_SCRIPT = "oada-client-1.cjs"
JOBS1_SCRIPT = "oada-jobs-1.cjs"
REQUESTER_SCRIPT = "jobs-requester.mjs"

#: The cases of ``oada-client-5.mjs`` (@oada/client 5.3.0), in its order
#: (the tests check this against the script's ``--list``).
CLIENT5_CASES = [
    "connect",
    "connect_auto",
    "get_bookmarks",
    "head_bookmarks",
    "get_subpath",
    "put",
    "key_escapes",
    "post",
    "post_resources",
    "delete_key",
    "delete_link",
    "delete_resource",
    "rev_propagation",
    "rev_propagation_deep",
    "ensure_create",
    "ensure_noop",
    "tree_put",
    "tree_put_race",
    "tree_get",
    "watch",
    "watch_rev_resume",
    "unwatch",
    "watch_persist",
    "get_watch",
    "watch_resource_delete",
    "concurrent_writes",
    "large_body",
    "too_large",
    "binary",
    "not_found",
    "bad_token",
    "other_user",
    "if_match",
    "jobs_request",
]

#: The cases of ``oada-client-1.cjs`` (@oada/client 1.1.4), in its order.
CLIENT1_CASES = ["connect", "get", "put", "post", "not_found", "watch", "tree_put"]

#: The cases of ``oada-jobs-1.cjs`` (@oada/jobs 1.0.4 service), in its order.
JOBS1_CASES = ["service_start", "job_success", "job_failure"]

#: The cases of ``jobs-requester.mjs`` (@oada/client/jobs 5.3.0), in its order.
REQUESTER_CASES = ["job_success", "job_failure", "job_events"]


@dataclass(frozen=True, slots=True)
class CaseResult:
    """What one case reported."""

    ok: bool
    detail: str


@dataclass(slots=True)
class NodeRun:
    """Everything one run of a conformance script reported."""

    label: str
    returncode: int
    results: dict[str, CaseResult] = field(default_factory=dict)
    stderr: str = ""
    #: stdout lines that were not case reports (kept for the failure message).
    other_output: list[str] = field(default_factory=list)

    def check(self, case: str) -> None:
        """Fail with the case's own detail unless it passed."""
        result = self.results.get(case)
        context = f"\n--- node stderr ---\n{self.stderr[-3000:]}" if self.stderr.strip() else ""
        if self.other_output:
            context += "\n--- other node output ---\n" + "\n".join(self.other_output[-20:])
        assert result is not None, (
            f"{self.label}: case {case!r} was not reported (node exited {self.returncode}){context}"
        )
        assert result.ok, f"{self.label}: case {case!r} failed:\n{result.detail}{context}"


def server_env(server: EmbeddedServer) -> dict[str, str]:
    """The environment that points a conformance script at *server*.

    ``OADA_OTHER_TOKEN`` is a token of a second user (for permission cases);
    ``NODE_EXTRA_CA_CERTS`` makes Node trust a TLS server's development CA.
    """
    env = {
        "OADA_URL": server.url,
        "OADA_TOKEN": server.token,
        "OADA_MAX_BODY_BYTES": str(server.config.max_body_bytes),
    }
    user = server.config.tokens[server.token].user
    others = [t for t in server.tokens if server.config.tokens[t].user != user]
    if others:
        env["OADA_OTHER_TOKEN"] = others[0]
    if server.ca_cert is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(server.ca_cert)
    return env


def node_binary() -> str:
    """The ``node`` executable, or a clear failure telling how to get the packages."""
    node = shutil.which("node")
    assert node is not None, "node is not on PATH; the conformance tests need Node 20 (make setup)"
    assert (CONFORMANCE / "node_modules" / "@oada" / "client").is_dir(), (
        "conformance/node_modules is missing; run `make setup` (npm ci in conformance/)"
    )
    return node


async def list_cases(script: str) -> list[str]:
    """The case names a script knows (``--list``)."""
    with anyio.fail_after(30):
        done = await anyio.run_process(
            [node_binary(), str(CONFORMANCE / script), "--list"], cwd=CONFORMANCE
        )
    return done.stdout.decode().split()


async def run_cases(script: str, label: str, env: Mapping[str, str]) -> NodeRun:
    """Run *script* with *env* added to the environment and collect its reports.

    A run that outlives :data:`RUN_TIMEOUT` is killed; what it reported so
    far is kept, and the cases it never reached fail as "not reported".
    """
    # Node's deprecation warnings (e.g. the ALPN probe's IP server name) would
    # only bury the client's real complaints in the failure output.
    node_options = f"{os.environ.get('NODE_OPTIONS', '')} --no-deprecation".strip()
    full_env = {**os.environ, "NODE_OPTIONS": node_options, **env}
    stdout = bytearray()
    stderr = bytearray()
    timed_out = False

    async def drain(stream: AsyncIterable[bytes], into: bytearray) -> None:
        async for chunk in stream:
            into += chunk

    async with await anyio.open_process(
        [node_binary(), str(CONFORMANCE / script)],
        cwd=CONFORMANCE,
        env=full_env,
        stdin=subprocess.DEVNULL,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        with anyio.move_on_after(RUN_TIMEOUT) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain, process.stdout, stdout)
                tg.start_soon(drain, process.stderr, stderr)
                await process.wait()
        if scope.cancelled_caught:
            timed_out = True
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
    if timed_out:
        stderr += f"\n[killed: the run took longer than {RUN_TIMEOUT:.0f} s]\n".encode()
    secrets = [env[name] for name in ("OADA_TOKEN", "OADA_OTHER_TOKEN") if env.get(name)]

    def redact(text: str) -> str:
        # Tokens never reach test output, even when DEBUG tracing prints them.
        for secret in secrets:
            text = text.replace(secret, "<token>")
        return text

    run = NodeRun(
        label=label,
        returncode=process.returncode if process.returncode is not None else -1,
        stderr=redact(stderr.decode(errors="replace")),
    )
    for line in redact(stdout.decode(errors="replace")).splitlines():
        try:
            report = json.loads(line)
            run.results[report["case"]] = CaseResult(
                ok=report["ok"] is True, detail=str(report["detail"])
            )
        except (ValueError, KeyError, TypeError):
            run.other_output.append(line)
    return run

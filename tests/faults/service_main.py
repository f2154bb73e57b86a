"""A job service in its own process, for fault tests that SIGKILL it.

    FAULTS_SERVICE_TOKEN=god python -m tests.faults.service_main \\
        --domain http://127.0.0.1:8080 --name svc --record runs.txt --worker A

It registers ``noop`` jobs: each run appends ``start <job> <worker> <time>``
to the record file, sleeps ``config.sleep`` seconds (default ``--sleep``),
appends ``end ...`` and returns ``{"n": config.n}``. On the worker named by
``config.stall_worker`` it first blocks its event loop for ``config.stall``
seconds; on the one named by ``config.fail_worker`` the job fails after its sleep. Lines are written with
one ``write`` on an ``O_APPEND`` descriptor, so several processes can share
one file and a SIGKILL never leaves half a line. The token comes from
``FAULTS_SERVICE_TOKEN`` (or ``--token``) so it does not show in ``ps``.
It prints ``READY`` once its queues are watched.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio

from oada_jobs import Job, Service, WorkerContext


def _record(fd: int, event: str, job: str, worker: str) -> None:
    os.write(fd, f"{event} {job} {worker} {time.time():.6f}\n".encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--token", default=os.environ.get("FAULTS_SERVICE_TOKEN"))
    parser.add_argument("--name", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--worker", default="w")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--sweep-interval", type=float, default=1.0)
    parser.add_argument("--connection", default="auto")
    parser.add_argument("--divide-work", type=int, default=1)
    parser.add_argument("--member-lease", type=float, default=10.0)
    parser.add_argument("--steal-after", type=float, default=2.0)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give the token in FAULTS_SERVICE_TOKEN or --token")
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s"
    )
    fd = os.open(args.record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def noop(job: Job[Any], ctx: WorkerContext) -> Any:
        _record(fd, "start", job.oada_id, args.worker)
        if job.config.get("stall_worker") == args.worker:
            # Block the event loop, as a CPU-bound or blocking call would:
            # the lease is not renewed meanwhile.
            time.sleep(float(job.config["stall"]))
        await anyio.sleep(float(job.config.get("sleep", args.sleep)))
        if job.config.get("fail_worker") == args.worker:
            _record(fd, "fail", job.oada_id, args.worker)
            raise RuntimeError(f"failed on purpose on worker {args.worker}")
        _record(fd, "end", job.oada_id, args.worker)
        return {"n": job.config.get("n")}

    async def run() -> None:
        from oada_jobs.client import OADAClient

        options: dict[str, Any] = {
            "concurrency": args.concurrency,
            "lease": args.lease,
            "sweep_interval": args.sweep_interval,
            "retry_initial": 0.05,
            "retry_max": 0.5,
            "shutdown_grace": 2,
            "divide_work": bool(args.divide_work),
            "member_lease": args.member_lease,
            "steal_after": args.steal_after,
        }
        async with AsyncExitStack() as stack:
            if args.connection == "auto":
                # The service opens its own client, as in production.
                service = Service(args.name, domain=args.domain, token=args.token, **options)
            else:
                oada = await stack.enter_async_context(
                    OADAClient(
                        args.domain,
                        args.token,
                        connection=args.connection,
                        concurrency=args.concurrency,
                    )
                )
                service = Service(args.name, oada=oada, **options)
            service.on("noop", None, noop)
            async with anyio.create_task_group() as tg:
                await tg.start(service.run)
                print("READY", flush=True)

    try:
        anyio.run(run)
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()

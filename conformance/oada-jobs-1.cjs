// Conformance cases for the original @oada/jobs 1.0.4 job service (installed
// as `oada-jobs-1`) on an OADA server: a real Service with two workers runs
// jobs that are posted with @oada/client 1.1.4. Both packages speak only
// `wss://`, so the server must run with TLS.
//
// Environment:
//   OADA_URL      server origin, e.g. https://127.0.0.1:8443
//   OADA_TOKEN    bearer token of a user allowed to write /bookmarks (all:all)
//   NODE_EXTRA_CA_CERTS  the server's (self-signed) certificate, PEM file
//   CASES         optional comma-separated case names to run (default: all)
//   CASE_TIMEOUT_MS  per-case time limit (default 20000)
//
// Output: one JSON line per case on stdout,
//   {"case": "<name>", "ok": true|false, "detail": "<what was seen>", "ms": <duration>}
// `node oada-jobs-1.cjs --list` prints the case names, one per line.

"use strict";

const assert = require("node:assert/strict");

const { connect } = require("oada-client-1");
const { Service } = require("oada-jobs-1");

const URL_ = process.env.OADA_URL ?? "https://127.0.0.1:8443";
const TOKEN = process.env.OADA_TOKEN ?? "god";
const CASE_TIMEOUT_MS = Number(process.env.CASE_TIMEOUT_MS ?? 20_000);
const RUN = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const SERVICE = `conformance-jobs1-${RUN}`;
const ROOT = `/bookmarks/services/${SERVICE}`;
// @oada/jobs 1.0.4 content types (older than the ones in the protocol notes).
const JOBS_TYPE = "application/vnd.oada.service.jobs+json";
const JOB_TYPE = "application/vnd.oada.service.job+json";

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Watch changes collected in order, awaited one at a time. */
class ChangeQueue {
  constructor() {
    this.items = [];
    this.waiters = [];
  }

  push(change) {
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter(change);
    } else {
      this.items.push(change);
    }
  }

  async until(predicate, what) {
    const seen = [];
    const deadline = Date.now() + CASE_TIMEOUT_MS - 2_000;
    for (;;) {
      const change =
        this.items.length > 0
          ? this.items.shift()
          : await withTimeout(
              new Promise((resolve) => this.waiters.push(resolve)),
              Math.max(1, deadline - Date.now()),
              `${what}; saw ${JSON.stringify(seen).slice(0, 600)}`,
            );
      if (predicate(change)) {
        return change;
      }
      seen.push(change);
    }
  }
}

/** moment().format("YYYY-MM-DD") as @oada/jobs files finished jobs: local time. */
function today() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

let service;
let jobsWatch;

/** Post a job and link it into the service's queue; resolve when the service has filed it. */
async function runJob(oada, type, config) {
  const posted = await oada.post({ path: "/resources", data: { service: SERVICE, type, config }, contentType: JOB_TYPE });
  assert.equal(posted.status, 201, "POST /resources of the job");
  const id = /^\/(resources\/[^/]+)$/.exec(posted.headers["content-location"])?.[1];
  assert.ok(id, `content-location of the new job: ${posted.headers["content-location"]}`);
  const key = id.slice("resources/".length);
  await oada.put({ path: `${ROOT}/jobs/${key}`, data: { _id: id }, contentType: JOBS_TYPE });
  // The runner removes the job from the queue last, after filing it.
  await jobsWatch.until(
    (change) => change.type === "delete" && change.body && key in change.body && change.body[key] === null,
    `the service to remove job ${key} from its queue`,
  );
  const job = (await oada.get({ path: `/${id}` })).data;
  return { id, key, job };
}

const cases = {};

cases.service_start = async (oada) => {
  service = new Service(SERVICE, URL_, TOKEN, 10);
  service.on("ok", 10_000, async (job) => ({ answer: 42, echo: job.config }));
  service.on("fail", 10_000, async () => {
    throw new Error("this job fails on purpose");
  });
  await service.start();
  const jobs = await oada.get({ path: `${ROOT}/jobs` });
  assert.equal(jobs.data._type, JOBS_TYPE, "the service created its job queue");
  const queue = new ChangeQueue();
  await oada.watch({ path: `${ROOT}/jobs`, watchCallback: (change) => queue.push(change) });
  jobsWatch = queue;
  return `service ${SERVICE} started; queue ${jobs.data._id}`;
};

cases.job_success = async (oada) => {
  assert.ok(jobsWatch, "needs service_start");
  const { id, key, job } = await runJob(oada, "ok", { x: 1 });
  assert.equal(job.status, "success", `job status: ${JSON.stringify(job)}`);
  assert.deepEqual(job.result, { answer: 42, echo: { x: 1 } }, "the worker's result is stored");
  const statuses = Object.values(job.updates ?? {}).map((u) => u.status);
  assert.deepEqual(statuses, ["started", "success"], "updates in POST (time) order");
  const filed = (await oada.get({ path: `${ROOT}/jobs-success/day-index/${today()}/${key}` })).data;
  assert.equal(filed._id, id, "filed under jobs-success/day-index/<today>");
  return `job ${key} succeeded and was filed under jobs-success`;
};

cases.job_failure = async (oada) => {
  assert.ok(jobsWatch, "needs service_start");
  const { id, key, job } = await runJob(oada, "fail", {});
  assert.equal(job.status, "failure", `job status: ${JSON.stringify(job)}`);
  const statuses = Object.values(job.updates ?? {}).map((u) => u.status);
  assert.deepEqual(statuses, ["started", "failure"]);
  const filed = (await oada.get({ path: `${ROOT}/jobs-failure/day-index/${today()}/${key}` })).data;
  assert.equal(filed._id, id, "filed under jobs-failure/day-index/<today>");
  return `job ${key} failed and was filed under jobs-failure`;
};

function describe(error) {
  if (error instanceof assert.AssertionError) {
    return error.message.split("\n").slice(0, 12).join("\n");
  }
  if (error instanceof Error) {
    return `${error.name}: ${error.message}`;
  }
  return `rejected with ${JSON.stringify(error)}`;
}

function report(name, ok, detail, ms) {
  process.stdout.write(`${JSON.stringify({ case: name, ok, detail, ms })}\n`);
}

async function main() {
  if (process.argv.includes("--list")) {
    process.stdout.write(`${Object.keys(cases).join("\n")}\n`);
    return;
  }
  const only = process.env.CASES ? new Set(process.env.CASES.split(",")) : undefined;
  const selected = Object.keys(cases).filter((name) => !only || only.has(name));
  const oada = await connect({ domain: URL_, token: TOKEN });
  for (const name of selected) {
    const started = performance.now();
    const elapsed = () => Math.round(performance.now() - started);
    try {
      const detail = await withTimeout(cases[name](oada), CASE_TIMEOUT_MS, `case ${name}`);
      report(name, true, detail, elapsed());
    } catch (error) {
      report(name, false, describe(error), elapsed());
    }
  }
}

process.on("unhandledRejection", (error) => {
  process.stderr.write(`unhandled rejection: ${describe(error)}\n`);
});

// These packages have no error handler on their sockets: a TLS or connection
// failure surfaces as an uncaught exception. Report it against every case.
process.on("uncaughtException", (error) => {
  const only = process.env.CASES ? new Set(process.env.CASES.split(",")) : undefined;
  for (const name of Object.keys(cases).filter((n) => !only || only.has(n))) {
    report(name, false, `connection failed: ${describe(error)}`);
  }
  process.exit(1);
});

main().then(
  // The service's sockets must not keep the process alive once every case has reported.
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${describe(error)}\n`);
    process.exit(1);
  },
);

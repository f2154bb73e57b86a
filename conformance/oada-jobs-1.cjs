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
// Output: one JSON line per case on stdout (see harness.cjs);
// `node oada-jobs-1.cjs --list` prints the case names, one per line.

"use strict";

const assert = require("node:assert/strict");

const { connect } = require("oada-client-1");
const { Service } = require("oada-jobs-1");

const {
  ChangeQueue,
  failAllOnUncaughtException,
  logUnhandledRejections,
  runCases,
} = require("./harness.cjs");

const URL_ = process.env.OADA_URL ?? "https://127.0.0.1:8443";
const TOKEN = process.env.OADA_TOKEN ?? "god";
const CASE_TIMEOUT_MS = Number(process.env.CASE_TIMEOUT_MS ?? 20_000);
const RUN = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const SERVICE = `conformance-jobs1-${RUN}`;
const ROOT = `/bookmarks/services/${SERVICE}`;
// @oada/jobs 1.0.4 content types (older than the ones in the protocol notes).
const JOBS_TYPE = "application/vnd.oada.service.jobs+json";
const JOB_TYPE = "application/vnd.oada.service.job+json";

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
  const queue = new ChangeQueue(CASE_TIMEOUT_MS - 2_000);
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

logUnhandledRejections();
failAllOnUncaughtException(cases);

runCases(cases, { connect: () => connect({ domain: URL_, token: TOKEN }), timeoutMs: CASE_TIMEOUT_MS })
  .catch(() => {})
  // The service's sockets must not keep the process alive once every case has reported.
  .finally(() => process.exit(0));

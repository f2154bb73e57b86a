// The official job requester of @oada/client 5.3.0 (`@oada/client/jobs`)
// posting jobs to a job service that someone else runs (in the tests: an
// oada_jobs.Service with the "pending" layout and two work functions,
// "echo" returning {echo: <config>} and "fail" raising "boom").
//
// Environment:
//   OADA_URL      server origin, e.g. http://127.0.0.1:8080
//   OADA_TOKEN    bearer token the requester uses
//   SERVICE       the service's name (/bookmarks/services/<SERVICE>)
//   CONNECTION    "http" (default) or "ws"
//   CASES         optional comma-separated case names to run (default: all)
//   CASE_TIMEOUT_MS  per-case time limit (default 20000)
//
// Output: one JSON line per case on stdout (see harness.cjs);
// `node jobs-requester.mjs --list` prints the case names, one per line.

import assert from "node:assert/strict";

import { connect } from "@oada/client";
import { doJob, JobEventType, JobsRequest } from "@oada/client/jobs";

import harness from "./harness.cjs";

const { logUnhandledRejections, runCases, withTimeout } = harness;

const URL_ = process.env.OADA_URL ?? "http://127.0.0.1:8080";
const TOKEN = process.env.OADA_TOKEN ?? "god";
const SERVICE = process.env.SERVICE ?? "conformance-service";
const MODE = process.env.CONNECTION ?? "http";
const CASE_TIMEOUT_MS = Number(process.env.CASE_TIMEOUT_MS ?? 20_000);

function statuses(job) {
  return Object.entries(job.updates ?? {})
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([, update]) => update.status);
}

const cases = {};

cases.job_success = async (oada) => {
  const job = await doJob(oada, { service: SERVICE, type: "echo", config: { x: 1 } });
  assert.equal(job.status, "success");
  assert.deepEqual(job.result, { echo: { x: 1 } }, "the work function's return value is the result");
  const seen = statuses(job);
  assert.equal(seen[0], "started", `updates: ${seen}`);
  assert.equal(seen.at(-1), "success", `updates: ${seen}`);
  return `doJob resolved: result ${JSON.stringify(job.result)}, updates ${seen.join(" -> ")}`;
};

cases.job_failure = async (oada) => {
  let error;
  try {
    const job = await doJob(oada, { service: SERVICE, type: "fail", config: {} });
    assert.fail(`doJob should reject for a failing job, got ${JSON.stringify(job)}`);
  } catch (caught) {
    if (caught instanceof assert.AssertionError) throw caught;
    error = caught;
  }
  assert.equal(error?.message, "boom", `doJob rejects with the job's error: ${error}`);
  return `doJob rejected: ${error.name}: ${error.message}`;
};

cases.job_events = async (oada) => {
  const request = new JobsRequest({ oada, job: { service: SERVICE, type: "echo", config: { y: 2 } } });
  const events = [];
  const success = new Promise((resolve) => {
    for (const type of [JobEventType.Update, JobEventType.Result, JobEventType.Status]) {
      request.on(type, () => events.push(type));
    }
    request.on(JobEventType.Success, async ({ job }) => resolve(await job));
  });
  const { _id } = await request.start();
  const job = await withTimeout(success, CASE_TIMEOUT_MS - 2_000, "the Success event");
  assert.deepEqual(job.result, { echo: { y: 2 } });
  for (const type of [JobEventType.Update, JobEventType.Result, JobEventType.Status]) {
    assert.ok(events.includes(type), `a ${type} event was emitted; saw ${events}`);
  }
  return `${_id}: events ${[...new Set(events)].join(", ")} then Success`;
};

// The requester starts its work without awaiting it; a failure there must
// be reported by its case, not crash the remaining ones.
logUnhandledRejections();

await runCases(cases, {
  connect: () => connect({ domain: URL_, token: TOKEN, connection: MODE }),
  timeoutMs: CASE_TIMEOUT_MS,
});
// Watches left open by the requester must not keep the process alive.
process.exit(0);

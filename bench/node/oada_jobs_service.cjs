#!/usr/bin/env node
// Runs the original TypeScript @oada/jobs 1.0.4 Service (npm alias
// `oada-jobs-1`, installed in conformance/node_modules) with a benchmark
// worker, so bench/ can compare it with oada_jobs.Service on the same server.
//
// Configuration comes from the environment (never argv: the token is a
// secret and argv is visible to every process on the machine):
//
//   OADA_DOMAIN          https://127.0.0.1:<port>   (@oada/client 1.1.4 speaks wss:// only)
//   OADA_TOKEN           bearer token of the service
//   BENCH_SERVICE        service name: /bookmarks/services/<name>
//   BENCH_JOB_TYPE       job type the worker is registered for
//   BENCH_SLEEP_MS       milliseconds each job sleeps (0: a no-op worker)
//   BENCH_CONCURRENCY    most work functions running at once (0: no limit)
//   BENCH_REQUESTS       in-flight OADA requests (the Service's `concurrency`)
//   BENCH_TIMEOUT_MS     work function timeout (default 60000)
//
// Protocol on stdout, one JSON object a line:
//   {"event":"ready"}                        Service.start() resolved
//   {"event":"exit","runs":n,"jobs":[ids],"max_active":k}   on SIGTERM/SIGINT
//     (`jobs`: the resource id of every job the work function ran, repeats kept)
// Errors go to stderr and exit with status 1.
'use strict';

const path = require('node:path');
const { createRequire } = require('node:module');

// The packages live in conformance/node_modules, not next to this file.
const conformanceRequire = createRequire(
  path.resolve(__dirname, '..', '..', 'conformance', 'package.json'),
);
const { Service } = conformanceRequire('oada-jobs-1');

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) {
      process.stderr.write(`missing environment variable ${name}\n`);
      process.exit(2);
    }
    return fallback;
  }
  return value;
}

function intEnv(name, fallback) {
  const raw = env(name, String(fallback));
  const value = Number.parseInt(raw, 10);
  if (!Number.isFinite(value) || value < 0) {
    process.stderr.write(`expected a non-negative integer in ${name}, got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return value;
}

const domain = env('OADA_DOMAIN');
const token = env('OADA_TOKEN');
const name = env('BENCH_SERVICE');
const jobType = env('BENCH_JOB_TYPE', 'bench');
const sleepMs = intEnv('BENCH_SLEEP_MS', 0);
const concurrency = intEnv('BENCH_CONCURRENCY', 0);
const requests = Math.max(1, intEnv('BENCH_REQUESTS', 10));
const timeoutMs = Math.max(1, intEnv('BENCH_TIMEOUT_MS', 60000));

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

// A counting semaphore: @oada/jobs 1.0.4 itself starts a Runner for every key
// of a change (100 at a time per change), so the work concurrency the
// benchmark asks for is enforced inside the work function.
let active = 0;
let maxActive = 0;
const waiting = [];

async function acquire() {
  if (concurrency > 0 && active >= concurrency) {
    await new Promise((resolve) => waiting.push(resolve));
  }
  active += 1;
  maxActive = Math.max(maxActive, active);
}

function release() {
  active -= 1;
  const next = waiting.shift();
  if (next) next();
}

const ran = [];

async function work(job) {
  await acquire();
  try {
    ran.push(job.oadaId);
    if (sleepMs > 0) {
      await new Promise((resolve) => setTimeout(resolve, sleepMs));
    }
    return { ok: true };
  } finally {
    release();
  }
}

function stop() {
  // Exit only once the (possibly large) report has been written: a pipe
  // takes 64 KiB at once and process.exit() would drop the rest.
  const report = { event: 'exit', runs: ran.length, jobs: ran, max_active: maxActive };
  process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0));
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.on('unhandledRejection', (reason) => {
  process.stderr.write(`unhandled rejection: ${reason && reason.stack ? reason.stack : JSON.stringify(reason)}\n`);
  process.exit(1);
});

async function main() {
  const service = new Service(name, domain, token, requests);
  service.on(jobType, timeoutMs, work);
  await service.start();
  emit({ event: 'ready' });
}

main().catch((error) => {
  process.stderr.write(`could not start the @oada/jobs 1.0.4 service: ${error && error.stack ? error.stack : JSON.stringify(error)}\n`);
  process.exit(1);
});

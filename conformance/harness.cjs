// What every conformance script shares: running its cases with time limits
// and reporting one JSON line per case on stdout,
//   {"case": "<name>", "ok": true|false, "detail": "<what was seen>", "ms": <duration>}
// plus `--list` (the case names, one per line) and CASES=a,b (run only those).
//
// CommonJS so that both the ESM scripts (`import harness from "./harness.cjs"`)
// and the CommonJS ones (`require("./harness.cjs")`) can use it.

"use strict";

const assert = require("node:assert/strict");

/** Reject with a message naming `what` if `promise` takes longer than `ms`. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * One readable line (or a few) for a failure: assertion messages as they
 * are, errors with their OADA status code, and the raw response message
 * that the 1.x clients reject with.
 */
function describe(error) {
  if (error instanceof assert.AssertionError) {
    return error.message.split("\n").slice(0, 12).join("\n");
  }
  if (error instanceof Error) {
    const code = error.code === undefined ? "" : ` (code ${error.code})`;
    return `${error.name}: ${error.message}${code}`;
  }
  return `rejected with ${JSON.stringify(error)}`;
}

function report(name, ok, detail, ms) {
  process.stdout.write(`${JSON.stringify({ case: name, ok, detail, ms })}\n`);
}

/** The names of the cases to run: all, or those listed in CASES. */
function selected(cases) {
  const only = process.env.CASES ? new Set(process.env.CASES.split(",")) : undefined;
  return Object.keys(cases).filter((name) => !only || only.has(name));
}

/**
 * Run `cases` (name -> async (client) => detail) one after the other, each
 * within `timeoutMs`, against the client `connect()` makes; report each.
 * Returns the client (to disconnect), or undefined after `--list` or a
 * failed connect (then every case is reported as failed with the reason).
 */
async function runCases(cases, { connect, timeoutMs }) {
  if (process.argv.includes("--list")) {
    process.stdout.write(`${Object.keys(cases).join("\n")}\n`);
    return undefined;
  }
  const names = selected(cases);
  let client;
  try {
    client = await withTimeout(Promise.resolve().then(connect), timeoutMs, "connect");
  } catch (error) {
    for (const name of names) {
      report(name, false, `connect failed: ${describe(error)}`);
    }
    return undefined;
  }
  for (const name of names) {
    const started = performance.now();
    const elapsed = () => Math.round(performance.now() - started);
    try {
      const detail = await withTimeout(cases[name](client), timeoutMs, `case ${name}`);
      report(name, true, detail, elapsed());
    } catch (error) {
      report(name, false, describe(error), elapsed());
    }
  }
  return client;
}

/**
 * Keep a stray rejection (e.g. from work a client starts without awaiting
 * it) from crashing the remaining cases; the case concerned reports it.
 */
function logUnhandledRejections() {
  process.on("unhandledRejection", (error) => {
    process.stderr.write(`unhandled rejection: ${describe(error)}\n`);
  });
}

/**
 * The 1.x packages have no error handler on their sockets: a TLS or
 * connection failure is an uncaught exception. Report it against every case
 * and exit, so the cause shows instead of a run of time-outs.
 */
function failAllOnUncaughtException(cases) {
  process.on("uncaughtException", (error) => {
    for (const name of selected(cases)) {
      report(name, false, `connection failed: ${describe(error)}`);
    }
    process.exit(1);
  });
}

/** Watch changes pushed by a callback, awaited one at a time and in order. */
class ChangeQueue {
  constructor(timeoutMs) {
    this.timeoutMs = timeoutMs;
    this.items = [];
    this.waiters = [];
  }

  /** Use as (or from) the watch callback. */
  push(change) {
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter(change);
    } else {
      this.items.push(change);
    }
  }

  /** The first change for which `predicate` holds (earlier ones are dropped). */
  async until(predicate, what) {
    const seen = [];
    const deadline = Date.now() + this.timeoutMs;
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

  /** The next change. */
  next(what) {
    return this.until(() => true, what);
  }
}

module.exports = {
  ChangeQueue,
  describe,
  failAllOnUncaughtException,
  logUnhandledRejections,
  report,
  runCases,
  withTimeout,
};

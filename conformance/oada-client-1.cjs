// Conformance cases for the official @oada/client 1.1.4 (installed as
// `oada-client-1`) against an OADA server. This old client speaks only
// WebSocket over TLS (`wss://<domain>/`), so the server must run with TLS.
//
// Environment:
//   OADA_URL      server origin, e.g. https://127.0.0.1:8443
//   OADA_TOKEN    bearer token of a user allowed to write /bookmarks (all:all)
//   NODE_EXTRA_CA_CERTS  the server's (self-signed) certificate, PEM file
//   CASES         optional comma-separated case names to run (default: all)
//   CASE_TIMEOUT_MS  per-case time limit (default 15000)
//
// Output: one JSON line per case on stdout (see harness.cjs);
// `node oada-client-1.cjs --list` prints the case names, one per line.

"use strict";

const assert = require("node:assert/strict");

const { connect } = require("oada-client-1");

const {
  ChangeQueue,
  failAllOnUncaughtException,
  logUnhandledRejections,
  runCases,
  withTimeout,
} = require("./harness.cjs");

const URL_ = process.env.OADA_URL ?? "https://127.0.0.1:8443";
const TOKEN = process.env.OADA_TOKEN ?? "god";
const CASE_TIMEOUT_MS = Number(process.env.CASE_TIMEOUT_MS ?? 15_000);
const RUN = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const BASE = `/bookmarks/conformance-${RUN}-v1`;

const BOOKMARKS_TYPE = "application/vnd.oada.bookmarks.1+json";
const TEST_TYPE = "application/vnd.oada-jobs.conformance.1+json";

const TREE = {
  bookmarks: {
    _type: BOOKMARKS_TYPE,
    "*": {
      "*": { _type: TEST_TYPE, _rev: 0, inner: { _type: TEST_TYPE } },
    },
  },
};

function idFromLocation(location) {
  const match = /^\/(resources\/[^/]+)/.exec(location ?? "");
  assert.ok(match, `content-location ${JSON.stringify(location)} does not start with /resources/<id>`);
  return match[1];
}

async function rejectsWith(promise, status, what) {
  let result;
  try {
    result = await promise;
  } catch (error) {
    // This client rejects with the server's response message itself.
    assert.equal(error?.status, status, `${what}: expected status ${status}, got ${JSON.stringify(error)}`);
    return error;
  }
  assert.fail(`${what}: expected rejection with ${status}, got status ${result?.status}`);
}

const cases = {};

cases.connect = async (oada) => {
  const response = await oada.head({ path: "/bookmarks" });
  assert.equal(response.status, 200);
  return `wss connection open; HEAD /bookmarks -> ${response.status}`;
};

cases.get = async (oada) => {
  const response = await oada.get({ path: "/bookmarks" });
  assert.equal(response.status, 200);
  const { data, headers } = response;
  assert.match(data._id, /^resources\//);
  assert.equal(data._type, BOOKMARKS_TYPE);
  assert.equal(headers["x-oada-rev"], `${data._rev}`);
  assert.equal(headers["content-location"], `/${data._id}`);
  return `GET /bookmarks -> ${data._id} rev ${data._rev}`;
};

cases.put = async (oada) => {
  const path = `${BASE}/put`;
  const response = await oada.put({ path, data: { a: { b: 1 } } });
  assert.equal(response.status, 201);
  assert.match(response.headers["x-oada-rev"] ?? "", /^\d+$/, "x-oada-rev");
  assert.match(response.headers["content-location"] ?? "", /^\/resources\/[^/]+\/.+\/put$/, "content-location");
  await oada.put({ path, data: { a: { c: 2 } } });
  const { data } = await oada.get({ path });
  assert.deepEqual(data, { a: { b: 1, c: 2 } }, "PUT deep-merges");
  return `PUT ${path} -> 201 rev ${response.headers["x-oada-rev"]}`;
};

cases.post = async (oada) => {
  const response = await oada.post({ path: "/resources", data: { a: 1 }, contentType: TEST_TYPE });
  assert.equal(response.status, 201);
  const id = idFromLocation(response.headers["content-location"]);
  const { data } = await oada.get({ path: `/${id}` });
  assert.equal(data._type, TEST_TYPE);
  assert.equal(data.a, 1);
  return `POST /resources -> ${id}`;
};

cases.not_found = async (oada) => {
  await rejectsWith(oada.get({ path: `${BASE}/does-not-exist` }), 404, "GET of a missing path");
  return "404 for a missing path";
};

cases.watch = async (oada) => {
  const created = await oada.post({ path: "/resources", data: { n: 0 }, contentType: TEST_TYPE });
  const id = idFromLocation(created.headers["content-location"]);
  const queue = new ChangeQueue(CASE_TIMEOUT_MS - 2_000);
  const requestId = await oada.watch({ path: `/${id}`, watchCallback: (change) => queue.push(change) });
  assert.equal(typeof requestId, "string", "watch resolves to its request id");
  const put = await oada.put({ path: `/${id}`, data: { n: 1 } });
  const change = await queue.next("the change with n=1");
  assert.equal(change.resource_id, id);
  assert.equal(change.path, "");
  assert.equal(change.type, "merge");
  assert.equal(change.body.n, 1);
  assert.equal(`${change.body._rev}`, put.headers["x-oada-rev"], "change _rev is the write's rev");

  // Resume from the rev before that change: exactly the missed change, again.
  const resumed = new ChangeQueue(CASE_TIMEOUT_MS - 2_000);
  const resumeId = await oada.watch({
    path: `/${id}`,
    rev: `${change.body._rev - 1}`,
    watchCallback: (c) => resumed.push(c),
  });
  const replayed = await resumed.next("the replayed change");
  assert.equal(replayed.body._rev, change.body._rev, "replay starts after the given rev");

  const unwatched = await withTimeout(oada.unwatch(requestId), 5_000, "unwatch");
  assert.equal(unwatched.status, 200, "unwatch status");
  await withTimeout(oada.unwatch(resumeId), 5_000, "second unwatch");
  return `change at rev ${change.body._rev} delivered, replayed with x-oada-rev, unwatched`;
};

cases.tree_put = async (oada) => {
  // This client's tree PUT sends If-Match with the bare rev from x-oada-rev
  // (no quotes, no id) when it links a new resource into an existing one.
  const path = `${BASE}/tree/inner`;
  const response = await oada.put({ path, data: { leaf: true }, tree: TREE });
  assert.equal(response.status, 201);
  const outer = (await oada.get({ path: `${BASE}/tree` })).data;
  assert.equal(outer._type, TEST_TYPE, "the tree node became a resource");
  const inner = (await oada.get({ path })).data;
  assert.equal(inner._type, TEST_TYPE);
  assert.equal(inner.leaf, true);
  assert.deepEqual(outer.inner, { _id: inner._id }, "unversioned link to the inner resource");
  const parent = (await oada.get({ path: BASE })).data;
  assert.deepEqual(parent.tree, { _id: outer._id, _rev: outer._rev }, "versioned link from the bookmarks");
  return `tree PUT created ${outer._id} -> ${inner._id}`;
};

logUnhandledRejections();
failAllOnUncaughtException(cases);

runCases(cases, { connect: () => connect({ domain: URL_, token: TOKEN }), timeoutMs: CASE_TIMEOUT_MS })
  .then((oada) => withTimeout(oada?.disconnect() ?? Promise.resolve(), 5_000, "disconnect"))
  .catch(() => {})
  // The socket must not keep the process alive once every case has reported.
  .finally(() => process.exit(0));

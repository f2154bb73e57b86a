// Conformance cases for the official @oada/client 5.3.0 against an OADA server.
//
// Environment:
//   OADA_URL      server origin, e.g. http://127.0.0.1:8080
//   OADA_TOKEN    bearer token of a user allowed to write /bookmarks (all:all)
//   OADA_OTHER_TOKEN  token of a second user (for the permission case)
//   OADA_MAX_BODY_BYTES  the server's body limit (for the too_large case)
//   CONNECTION    "http" (default) or "ws": the client's transport
//   CASES         optional comma-separated case names to run (default: all)
//   CASE_TIMEOUT_MS  per-case time limit (default 15000)
//   QUIRKS        "reference" when the server imitates the reference OADA
//                 server (403 for a missing /resources/<id>, rev propagation
//                 after the write is acknowledged, no data in a resumed
//                 get-watch answer); the cases then expect exactly that
//
// Output: one JSON line per case on stdout (see harness.cjs);
// `node oada-client-5.mjs --list` prints the case names, one per line.
//
// Every case builds its own data under a unique prefix, so the cases can run
// against a shared server and in any order.

import assert from "node:assert/strict";

import { connect } from "@oada/client";
import { doJob } from "@oada/client/jobs";

import harness from "./harness.cjs";

const { logUnhandledRejections, runCases, withTimeout } = harness;

const URL_ = process.env.OADA_URL ?? "http://127.0.0.1:8080";
const TOKEN = process.env.OADA_TOKEN ?? "god";
const OTHER_TOKEN = process.env.OADA_OTHER_TOKEN;
const MAX_BODY_BYTES = Number(process.env.OADA_MAX_BODY_BYTES ?? 20 * 1024 * 1024);
const MODE = process.env.CONNECTION ?? "http";
const CASE_TIMEOUT_MS = Number(process.env.CASE_TIMEOUT_MS ?? 15_000);
const REFERENCE = process.env.QUIRKS === "reference";
/** What GET/HEAD of a missing /resources/<id> answers. */
const MISSING_RESOURCE_STATUS = REFERENCE ? 403 : 404;
const RUN = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const BASE = `/bookmarks/conformance-${RUN}-${MODE}`;

const BOOKMARKS_TYPE = "application/vnd.oada.bookmarks.1+json";
const SERVICES_TYPE = "application/vnd.oada.services.1+json";
const SERVICE_TYPE = "application/vnd.oada.service.1+json";
const JOBS_TYPE = "application/vnd.oada.service.jobs.1+json";
const JOB_TYPE = "application/vnd.oada.service.job.1+json";
const TEST_TYPE = "application/vnd.oada-jobs.conformance.1+json";

// The jobs service tree of the protocol (§5.3 / §7.1): services and each
// service are versioned links, jobs and pending unversioned, success and
// failure versioned, day-index entries versioned.
const JOBS_TREE = {
  bookmarks: {
    _type: BOOKMARKS_TYPE,
    services: {
      _type: SERVICES_TYPE,
      _rev: 0,
      "*": {
        _type: SERVICE_TYPE,
        _rev: 0,
        jobs: {
          _type: JOBS_TYPE,
          pending: { _type: JOBS_TYPE, "*": { _type: JOB_TYPE } },
          success: {
            _type: JOBS_TYPE,
            _rev: 0,
            "day-index": { "*": { _type: JOBS_TYPE, _rev: 0, "*": { _type: JOB_TYPE, _rev: 0 } } },
          },
          failure: {
            _type: JOBS_TYPE,
            _rev: 0,
            "day-index": { "*": { _type: JOBS_TYPE, _rev: 0, "*": { _type: JOB_TYPE, _rev: 0 } } },
          },
        },
      },
    },
  },
};

// A plain tree for ensure: /bookmarks/<base>/<key> is a resource,
// versioned-linked from the bookmarks (<base> is a plain object).
const ENSURE_TREE = {
  bookmarks: {
    _type: BOOKMARKS_TYPE,
    "*": {
      "*": { _type: TEST_TYPE, _rev: 0 },
    },
  },
};

// ----------------------------------------------------------------------------
// Helpers

/** Expect `promise` to reject with an OADA error of `status`; return the error. */
async function rejectsWith(promise, status, what) {
  let result;
  try {
    result = await promise;
  } catch (error) {
    assert.equal(
      `${error?.code}`,
      `${status}`,
      `${what}: expected rejection with code ${status}, got code ${error?.code} (${error?.message})`,
    );
    return error;
  }
  assert.fail(`${what}: expected rejection with ${status}, got status ${result?.status}`);
}

function keyOf(resourceId) {
  return resourceId.replace(/^resources\//, "");
}

function etagOf(resourceId, rev) {
  return `"${keyOf(resourceId)}/${rev}"`;
}

/** Resource id from a content-location header: "/resources/X/a/b" -> "resources/X". */
function idFromLocation(location) {
  const match = /^\/(resources\/[^/]+)/.exec(location ?? "");
  assert.ok(match, `content-location ${JSON.stringify(location)} does not start with /resources/<id>`);
  return match[1];
}

function assertIntString(value, what) {
  assert.match(`${value}`, /^[1-9]\d*$/, `${what} should be a positive integer string, got ${JSON.stringify(value)}`);
  return Number(value);
}

function assertWriteResponse(response, what) {
  assert.equal(response.status, 201, `${what}: status`);
  const rev = assertIntString(response.headers["x-oada-rev"], `${what}: x-oada-rev`);
  const location = response.headers["content-location"];
  assert.match(location ?? "", /^\/resources\//, `${what}: content-location`);
  assert.equal(response.headers.etag, etagOf(idFromLocation(location), rev), `${what}: etag`);
  return { rev, location, id: idFromLocation(location) };
}

/**
 * Check a versioned link to `target` (a resource body). Parents learn a new
 * child rev only after the write is acknowledged with reference quirks, so
 * there the link's rev may still be catching up.
 */
function assertVersionedLink(link, target, what) {
  if (REFERENCE) {
    assert.equal(link?._id, target._id, `${what}: link _id`);
    assert.ok(Number.isInteger(link._rev) && link._rev <= target._rev, `${what}: link _rev ${link._rev} vs ${target._rev}`);
  } else {
    assert.deepEqual(link, { _id: target._id, _rev: target._rev }, `${what} at the target's rev`);
  }
}

/** Create a resource with POST /resources; return its id ("resources/<key>"). */
async function newResource(oada, data = {}, contentType = TEST_TYPE) {
  const response = await oada.post({ path: "/resources", data, contentType });
  return idFromLocation(response.headers["content-location"]);
}

/**
 * Read changes from a watch until `predicate` matches one; return it and the
 * changes seen before it.
 */
async function nextMatching(changes, predicate, what, ms = CASE_TIMEOUT_MS - 2_000) {
  const seen = [];
  const deadline = Date.now() + ms;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) {
      throw new Error(`timed out waiting for ${what}; saw ${JSON.stringify(seen).slice(0, 600)}`);
    }
    const { value, done } = await withTimeout(changes.next(), left, `${what}; saw ${JSON.stringify(seen).slice(0, 600)}`);
    if (done) {
      throw new Error(`watch ended while waiting for ${what}`);
    }
    if (predicate(value)) {
      return { change: value, seen };
    }
    seen.push(value);
  }
}

/** Close a watch iterator (sends unwatch); bounded, so a stuck watch cannot hang the run. */
async function closeWatch(changes) {
  await withTimeout(changes.return(), 5_000, "the watch to close (unwatch)");
}

/**
 * Close a watch in a `finally`: a failure here must not hide the case's own
 * error (a timed-out next() keeps the iterator busy, so return() waits).
 */
async function closeQuietly(changes) {
  try {
    await closeWatch(changes);
  } catch (error) {
    process.stderr.write(`closing a watch: ${error?.message}\n`);
  }
}

// ----------------------------------------------------------------------------
// Cases: each gets the connected client and returns a short detail string.

const cases = {};

cases.connect = async (oada) => {
  // connect() itself resolved before the cases run; prove the connection is usable.
  const response = await oada.head({ path: "/bookmarks" });
  assert.equal(response.status, 200, "HEAD /bookmarks status");
  return `connected over ${MODE}; HEAD /bookmarks -> ${response.status}`;
};

cases.connect_auto = async () => {
  // connection "auto" probes the port with a TLS ClientHello (ALPN) first; a
  // plain-HTTP server must refuse the probe so that the client falls back.
  const auto = await connect({ domain: URL_, token: TOKEN, connection: "auto" });
  try {
    const response = await auto.get({ path: "/bookmarks" });
    assert.equal(response.status, 200);
    return `connection "auto" works; GET /bookmarks -> ${response.status}`;
  } finally {
    await auto.disconnect();
  }
};

cases.get_bookmarks = async (oada) => {
  const response = await oada.get({ path: "/bookmarks" });
  assert.equal(response.status, 200);
  const { data, headers } = response;
  assert.equal(typeof data, "object", "body should be a JSON object");
  assert.match(data._id, /^resources\/[^/]+$/, "_id");
  assert.ok(Number.isInteger(data._rev) && data._rev >= 1, `_rev should be an integer >= 1, got ${data._rev}`);
  assert.equal(data._type, BOOKMARKS_TYPE, "_type");
  assert.deepEqual(data._meta, { _id: `${data._id}/_meta`, _rev: data._rev }, "_meta should be reduced to a versioned link");
  assert.ok((headers["content-type"] ?? "").startsWith(BOOKMARKS_TYPE), `content-type: ${headers["content-type"]}`);
  assert.equal(headers["content-location"], `/${data._id}`, "content-location");
  assert.equal(headers["x-oada-rev"], `${data._rev}`, "x-oada-rev");
  assert.equal(headers.etag, etagOf(data._id, data._rev), "etag");
  return `GET /bookmarks -> ${data._id} rev ${data._rev}`;
};

cases.head_bookmarks = async (oada) => {
  const response = await oada.head({ path: "/bookmarks" });
  assert.equal(response.status, 200);
  assert.ok(response.data === undefined || response.data === null, `HEAD should have no body, got ${JSON.stringify(response.data)}`);
  const { headers } = response;
  const id = idFromLocation(headers["content-location"]);
  const rev = assertIntString(headers["x-oada-rev"], "x-oada-rev");
  assert.equal(headers.etag, etagOf(id, rev), "etag");
  assert.ok((headers["content-type"] ?? "").startsWith(BOOKMARKS_TYPE), `content-type: ${headers["content-type"]}`);
  return `HEAD /bookmarks -> ${headers.etag}`;
};

cases.get_subpath = async (oada) => {
  const path = `${BASE}/subpath`;
  await oada.put({ path, data: { a: { b: 1 }, s: "aaa" } });
  const bookmarks = (await oada.head({ path: "/bookmarks" })).headers;
  const bmId = idFromLocation(bookmarks["content-location"]);
  const leftover = `/${BASE.split("/").at(-1)}/subpath/a`;

  const response = await oada.get({ path: `${path}/a` });
  assert.equal(response.status, 200);
  assert.deepEqual(response.data, { b: 1 }, "GET of a sub path returns the value stored there");
  assert.equal(response.headers["content-location"], `/${bmId}${leftover}`, "content-location");
  assert.equal(response.headers["x-oada-path-leftover"], leftover, "x-oada-path-leftover");
  assert.equal(response.headers["x-oada-rev"], bookmarks["x-oada-rev"], "x-oada-rev is the resource's rev");

  const scalar = await oada.get({ path: `${path}/s` });
  assert.equal(scalar.data, "aaa", "a scalar sub path is returned as JSON text");

  const head = await oada.head({ path: `${path}/a/b` });
  assert.equal(head.status, 200, "HEAD of a scalar sub path");
  assert.equal(head.headers["content-location"], `/${bmId}${leftover}/b`, "HEAD content-location");
  return `GET ${path}/a -> ${JSON.stringify(response.data)}`;
};

cases.put = async (oada) => {
  const path = `${BASE}/put`;
  const first = await oada.put({ path, data: { a: { b: 1 } } });
  const w1 = assertWriteResponse(first, "first PUT");
  assert.equal(w1.location, `/${w1.id}/${BASE.split("/").at(-1)}/put`, "content-location names the written path");
  const second = await oada.put({ path, data: { a: { c: 2 }, d: [1, 2] } });
  const w2 = assertWriteResponse(second, "second PUT");
  assert.equal(w2.rev, w1.rev + 1, "each write bumps the rev by one");
  const { data } = await oada.get({ path });
  assert.deepEqual(data, { a: { b: 1, c: 2 }, d: [1, 2] }, "PUT deep-merges");

  // A new resource with a client-chosen id.
  const id = `resources/conformance-put-${RUN}-${MODE}`;
  const created = await oada.put({ path: `/${id}`, data: { x: 1 }, contentType: TEST_TYPE });
  const w3 = assertWriteResponse(created, "PUT /resources/<new id>");
  assert.equal(w3.rev, 1, "a new resource starts at rev 1");
  const resource = (await oada.get({ path: `/${id}` })).data;
  assert.equal(resource._type, TEST_TYPE, "_type comes from the content type");
  assert.equal(resource.x, 1);
  return `201 rev ${w1.rev} -> ${w2.rev}; new resource ${id} at rev 1`;
};

cases.key_escapes = async (oada) => {
  // Path segments are JSON-pointer tokens, not percent-decoded (protocol
  // §1.2): "%20" stays literal, "~1" is "/" and "~0" is "~", over HTTP and
  // WebSocket alike.
  const path = `${BASE}/escapes`;
  for (const key of ["a%20b", "a~1b", "a~0b"]) {
    await oada.put({ path: `${path}/${key}`, data: { key } });
  }
  const { data } = await oada.get({ path });
  assert.deepEqual(Object.keys(data).sort(), ["a%20b", "a/b", "a~b"], "stored keys");
  assert.deepEqual((await oada.get({ path: `${path}/a~1b` })).data, { key: "a~1b" }, "read back through ~1");
  assert.deepEqual((await oada.get({ path: `${path}/a%20b` })).data, { key: "a%20b" }, "read back through %20");
  return `keys stored as ${JSON.stringify(Object.keys(data).sort())}`;
};

cases.post = async (oada) => {
  const path = `${BASE}/post/list`;
  const r1 = await oada.post({ path, data: { n: 1 } });
  const w1 = assertWriteResponse(r1, "POST");
  const prefix = `/${w1.id}/${BASE.split("/").at(-1)}/post/list/`;
  assert.ok(w1.location.startsWith(prefix), `content-location ${w1.location} should start with ${prefix}`);
  const key1 = w1.location.slice(prefix.length);
  assert.match(key1, /^[0-9A-Za-z]{27}$/, "POST key should be a KSUID");
  const r2 = await oada.post({ path, data: { n: 2 } });
  const key2 = assertWriteResponse(r2, "second POST").location.slice(prefix.length);
  assert.ok(key1 < key2, `POST keys should sort in creation order: ${key1} !< ${key2}`);
  const { data } = await oada.get({ path: `${path}/${key1}` });
  assert.deepEqual(data, { n: 1 }, "the posted value is readable at the new key");
  return `POST -> ${w1.location}`;
};

cases.post_resources = async (oada) => {
  const response = await oada.post({ path: "/resources", data: { a: 1 }, contentType: TEST_TYPE });
  const w = assertWriteResponse(response, "POST /resources");
  assert.match(w.location, /^\/resources\/[^/]+$/, "content-location is the new resource");
  assert.equal(w.rev, 1, "new resource at rev 1");
  const { data } = await oada.get({ path: w.location });
  assert.equal(data._id, w.id);
  assert.equal(data._rev, 1);
  assert.equal(data._type, TEST_TYPE);
  assert.equal(data.a, 1);
  return `POST /resources -> ${w.location}`;
};

cases.delete_key = async (oada) => {
  const path = `${BASE}/delete`;
  const put = assertWriteResponse(await oada.put({ path, data: { keep: 1, gone: { x: 1 } } }), "PUT");
  const response = await oada.delete({ path: `${path}/gone` });
  assert.equal(response.status, 204, "DELETE status");
  const rev = assertIntString(response.headers["x-oada-rev"], "DELETE x-oada-rev");
  assert.ok(rev > put.rev, `DELETE should bump the rev (${put.rev} -> ${rev})`);
  await rejectsWith(oada.get({ path: `${path}/gone` }), 404, "GET of the deleted key");
  const { data } = await oada.get({ path });
  assert.deepEqual(data, { keep: 1 }, "only the deleted key is gone");
  return `DELETE key -> 204 rev ${rev}`;
};

cases.delete_link = async (oada) => {
  const target = await newResource(oada, { t: 1 });
  const path = `${BASE}/unlink/link`;
  await oada.put({ path, data: { _id: target } });
  const through = await oada.get({ path });
  assert.equal(through.data.t, 1, "GET through the link reaches the target");
  const response = await oada.delete({ path });
  assert.equal(response.status, 204, "DELETE of a link");
  await rejectsWith(oada.get({ path }), 404, "GET of the removed link");
  const kept = await oada.get({ path: `/${target}` });
  assert.equal(kept.data.t, 1, "the link target survives");
  return `unlinked ${target}; target still readable`;
};

cases.delete_resource = async (oada) => {
  const target = await newResource(oada, { t: 1 });
  const response = await oada.delete({ path: `/${target}` });
  assert.equal(response.status, 204, "DELETE /resources/<id>");
  await rejectsWith(oada.get({ path: `/${target}` }), MISSING_RESOURCE_STATUS, "GET of the deleted resource");
  return `deleted ${target}`;
};

cases.rev_propagation = async (oada) => {
  const child = await newResource(oada, { c: 0 });
  const other = await newResource(oada, { u: 0 });
  const parent = await newResource(oada, {});
  await oada.put({ path: `/${parent}`, data: { child: { _id: child, _rev: 0 }, other: { _id: other } } });
  const before = (await oada.get({ path: `/${parent}` })).data;
  assert.equal(before.child._rev, 1, "the server rewrites a versioned link's _rev to the target's rev");
  assert.deepEqual(before.other, { _id: other }, "an unversioned link is stored as {_id}");

  const { changes } = await oada.watch({ path: `/${parent}`, type: "tree" });
  try {
    // The unversioned write first: if it propagated, its change would arrive
    // before the versioned one, and the check below would see it.
    await oada.put({ path: `/${other}`, data: { u: 1 } });
    const childRev = assertWriteResponse(await oada.put({ path: `/${child}`, data: { c: 1 } }), "child PUT").rev;
    const { change, seen } = await nextMatching(
      changes,
      (array) => array[0]?.body?.child?._rev === childRev,
      `the parent's change for child rev ${childRev}`,
    );
    assert.deepEqual(seen, [], "no parent change before the versioned one (unversioned links do not propagate)");
    const [root, nested] = change;
    assert.equal(root.resource_id, parent);
    assert.equal(root.path, "");
    assert.equal(root.type, "merge");
    assert.ok(Number.isInteger(root.body._rev), "parent change has an integer _rev");
    assert.ok(nested, `the change array should carry the child's change: ${JSON.stringify(change)}`);
    assert.equal(nested.resource_id, child);
    assert.equal(nested.path, "/child");
    assert.equal(nested.body.c, 1);
    assert.equal(nested.body._rev, childRev);

    const after = (await oada.get({ path: `/${parent}` })).data;
    assert.equal(after._rev, root.body._rev, "parent rev after the change");
    assert.equal(after.child._rev, childRev, "versioned link carries the child's new rev");
    return `parent ${before._rev} -> ${after._rev} on child rev ${childRev}`;
  } finally {
    await closeQuietly(changes);
  }
};

cases.rev_propagation_deep = async (oada) => {
  // top -> middle -> bottom, both versioned: one write to bottom bumps both,
  // and top's change array nests the others by path (protocol §4.1).
  const bottom = await newResource(oada, { x: 0 });
  const middle = await newResource(oada, { bottom: { _id: bottom, _rev: 0 } });
  const top = await newResource(oada, { middle: { _id: middle, _rev: 0 } });
  const { changes } = await oada.watch({ path: `/${top}`, type: "tree" });
  try {
    const bottomRev = assertWriteResponse(await oada.put({ path: `/${bottom}`, data: { x: 1 } }), "PUT bottom").rev;
    const { change } = await nextMatching(
      changes,
      (array) => array.some((c) => c.resource_id === bottom),
      "top's change carrying bottom's write",
    );
    assert.deepEqual(
      change.map((c) => [c.resource_id, c.path, c.type]),
      [
        [top, "", "merge"],
        [middle, "/middle", "merge"],
        [bottom, "/middle/bottom", "merge"],
      ],
      "nested change array sorted by depth",
    );
    assert.equal(change[2].body._rev, bottomRev);
    assert.equal(change[1].body.bottom._rev, bottomRev, "middle's change sets its link rev");
    assert.equal(change[0].body.middle._rev, change[1].body._rev, "top's change sets its link rev to middle's new rev");
    const topNow = (await oada.get({ path: `/${top}` })).data;
    assert.equal(topNow._rev, change[0].body._rev);
    const through = (await oada.get({ path: `/${top}/middle/bottom/x` })).data;
    assert.equal(through, 1, "readable through both links");
    return `bottom rev ${bottomRev} -> top rev ${topNow._rev}`;
  } finally {
    await closeQuietly(changes);
  }
};

cases.ensure_create = async (oada) => {
  const path = `${BASE}/ensured`;
  const response = await oada.ensure({ path, data: { made: true }, tree: ENSURE_TREE });
  assert.equal(response.status, 201, "ensure of a missing path writes it (201)");
  const { data } = await oada.get({ path });
  assert.equal(data._type, TEST_TYPE, "ensure created a resource with the tree's type");
  assert.equal(data.made, true);
  const parent = (await oada.get({ path: BASE })).data;
  assert.equal(parent.ensured._id, data._id, "linked from the parent");
  assert.ok("_rev" in parent.ensured, "versioned link as the tree says");
  return `ensured ${path} -> ${data._id}`;
};

cases.ensure_noop = async (oada) => {
  const path = `${BASE}/ensured-noop`;
  await oada.ensure({ path, data: { n: 1 }, tree: ENSURE_TREE });
  const before = await oada.head({ path });
  const response = await oada.ensure({ path, data: { n: 2 }, tree: ENSURE_TREE });
  assert.equal(response.status, 200, "ensure of an existing path only HEADs it");
  const after = await oada.head({ path });
  assert.equal(after.headers["x-oada-rev"], before.headers["x-oada-rev"], "no write on an existing path");
  const { data } = await oada.get({ path });
  assert.equal(data.n, 1, "the existing data is untouched");
  return `second ensure -> 200, rev stays ${after.headers["x-oada-rev"]}`;
};

function serviceName(name) {
  return `conformance-${name}-${RUN}-${MODE}`;
}

cases.tree_put = async (oada) => {
  const svc = serviceName("tree");
  const root = `/bookmarks/services/${svc}`;
  const first = await oada.put({ path: `${root}/jobs/pending`, data: {}, tree: JOBS_TREE });
  assert.equal(first.status, 201, "tree PUT status");

  const services = (await oada.get({ path: "/bookmarks/services" })).data;
  assert.equal(services._type, SERVICES_TYPE, "services _type");
  const service = (await oada.get({ path: root })).data;
  assert.equal(service._type, SERVICE_TYPE, "service _type");
  assertVersionedLink(services[svc], service, "services -> service is a versioned link");
  const jobs = (await oada.get({ path: `${root}/jobs` })).data;
  assert.equal(jobs._type, JOBS_TYPE, "jobs _type");
  assert.deepEqual(service.jobs, { _id: jobs._id }, "service -> jobs is an unversioned link");
  const pending = (await oada.get({ path: `${root}/jobs/pending` })).data;
  assert.equal(pending._type, JOBS_TYPE, "pending _type");
  assert.deepEqual(jobs.pending, { _id: pending._id }, "jobs -> pending is an unversioned link");

  // A second tree PUT that must link into the existing jobs resource with
  // If-Match and create versioned success and day-index resources.
  const job = await newResource(oada, { service: svc, type: "conformance" }, JOBS_TYPE);
  const day = `${root}/jobs/success/day-index/2026-01-01`;
  const second = await oada.put({ path: day, data: { [keyOf(job)]: { _id: job, _rev: 0 } }, tree: JOBS_TREE });
  assert.equal(second.status, 201, "second tree PUT status");
  const jobs2 = (await oada.get({ path: `${root}/jobs` })).data;
  const success = (await oada.get({ path: `${root}/jobs/success` })).data;
  assert.equal(success._type, JOBS_TYPE, "success _type");
  assertVersionedLink(jobs2.success, success, "jobs -> success is a versioned link");
  const index = (await oada.get({ path: day })).data;
  assert.equal(index._type, JOBS_TYPE, "day-index entry _type");
  assertVersionedLink(success["day-index"]["2026-01-01"], index, "day-index link is versioned");
  assert.deepEqual(index[keyOf(job)], { _id: job, _rev: 1 }, "job link rewritten to the job's rev");
  const through = (await oada.get({ path: `${day}/${keyOf(job)}` })).data;
  assert.equal(through.service, svc, "the job is readable through the tree");
  return `created ${root}/jobs/{pending,success/day-index/2026-01-01}`;
};

cases.tree_put_race = async () => {
  // Two tree PUTs that both find the service missing: both create their own
  // service resource and race to link it with If-Match on the same ETag. The
  // loser must get 412 (the client then retries and links into the winner),
  // or one subtree would be orphaned.
  const busy = await connect({ domain: URL_, token: TOKEN, connection: MODE, concurrency: 10 });
  try {
    const svc = serviceName("race");
    const root = `/bookmarks/services/${svc}`;
    await busy.ensure({ path: "/bookmarks/services", data: {}, tree: JOBS_TREE });
    const branches = ["pending", "success", "failure"];
    await Promise.all(
      branches.map((branch) => busy.put({ path: `${root}/jobs/${branch}`, data: { branch }, tree: JOBS_TREE })),
    );
    const jobs = (await busy.get({ path: `${root}/jobs` })).data;
    for (const branch of branches) {
      assert.ok(jobs[branch]?._id, `jobs/${branch} linked after the race: ${JSON.stringify(jobs)}`);
      const { data } = await busy.get({ path: `${root}/jobs/${branch}` });
      assert.equal(data.branch, branch, `the data written under ${branch} survived`);
    }
    return `3 racing tree PUTs all landed under one ${root}/jobs`;
  } finally {
    await busy.disconnect();
  }
};

cases.tree_get = async (oada) => {
  const svc = serviceName("treeget");
  const root = `/bookmarks/services/${svc}`;
  await oada.put({ path: `${root}/jobs/pending`, data: { note: "p" }, tree: JOBS_TREE });
  await oada.put({ path: `${root}/jobs/failure/day-index/2026-02-02`, data: { note: "f" }, tree: JOBS_TREE });
  const response = await oada.get({ path: root, tree: JOBS_TREE });
  assert.equal(response.status, 200);
  const { data } = response;
  assert.equal(data._type, SERVICE_TYPE);
  assert.equal(data.jobs?._type, JOBS_TYPE, `jobs should be fetched and spliced in: ${JSON.stringify(data.jobs)}`);
  assert.equal(data.jobs.pending?._type, JOBS_TYPE, "pending spliced in");
  assert.equal(data.jobs.pending.note, "p");
  assert.equal(data.jobs.failure?._type, JOBS_TYPE, "failure spliced in");
  assert.equal(data.jobs.failure["day-index"]["2026-02-02"]?.note, "f", "day-index entry spliced in");
  return `tree GET ${root} -> jobs/{pending,failure/day-index}`;
};

cases.watch = async (oada) => {
  const id = await newResource(oada, { n: 0 });
  const response = await oada.watch({ path: `/${id}` });
  assert.equal(response.status, 200, "watch response status");
  const { changes } = response;
  try {
    const put = assertWriteResponse(await oada.put({ path: `/${id}`, data: { n: 1 } }), "PUT").rev;
    const { change } = await nextMatching(changes, (c) => c.path === "" && c.body?.n === 1, "the change with n=1");
    assert.equal(change.resource_id, id);
    assert.equal(change.type, "merge");
    assert.equal(change.body._rev, put, "change _rev is the write's rev");

    const sub = await oada.watch({ path: `/${id}/n` });
    try {
      await oada.put({ path: `/${id}/m`, data: { deep: true } });
      const { change: whole } = await nextMatching(
        sub.changes,
        (c) => c.body?.m?.deep === true,
        "a change elsewhere in the resource on a sub-path watch",
      );
      assert.equal(whole.resource_id, id, "a watch on a sub path covers the whole resource");
    } finally {
      await closeQuietly(sub.changes);
    }

    await oada.delete({ path: `/${id}/m` });
    const { change: removal } = await nextMatching(changes, (c) => c.type === "delete", "the key delete change");
    assert.equal(removal.body.m, null, "a key delete change sets the key to null");
    assert.ok(Number.isInteger(removal.body._rev), "a key delete change has an integer _rev");
    return `change at rev ${put} delivered; sub-path watch and delete change ok`;
  } finally {
    await closeQuietly(changes);
  }
};

cases.watch_rev_resume = async (oada) => {
  const id = await newResource(oada, { n: 0 });
  const start = Number((await oada.head({ path: `/${id}` })).headers["x-oada-rev"]);
  for (const n of [1, 2, 3]) {
    await oada.put({ path: `/${id}`, data: { n } });
  }
  const { changes } = await oada.watch({ path: `/${id}`, rev: start });
  try {
    const got = [];
    while (got.length < 3) {
      const { change } = await nextMatching(changes, () => true, `replayed change ${got.length + 1} of 3`);
      got.push(change);
    }
    assert.deepEqual(
      got.map((c) => [c.body._rev, c.body.n]),
      [
        [start + 1, 1],
        [start + 2, 2],
        [start + 3, 3],
      ],
      "replay delivers exactly the missed revs, in order",
    );
    await oada.put({ path: `/${id}`, data: { n: 4 } });
    const { change: live } = await nextMatching(changes, () => true, "the live change after the replay");
    assert.deepEqual([live.body._rev, live.body.n], [start + 4, 4], "the next change is the live one (no duplicates)");
    return `replayed revs ${start + 1}..${start + 3}, then live ${start + 4}`;
  } finally {
    await closeQuietly(changes);
  }
};

cases.unwatch = async (oada) => {
  const id = await newResource(oada, { n: 0 });
  const first = await oada.watch({ path: `/${id}` });
  await oada.put({ path: `/${id}`, data: { n: 1 } });
  // The iterator must have started (it sends unwatch from its finally).
  await nextMatching(first.changes, (c) => c.body?.n === 1, "the change with n=1");
  // Closing the iterator sends unwatch and waits for the server's answer.
  await closeWatch(first.changes);
  const after = await first.changes.next();
  assert.equal(after.done, true, "a closed watch yields nothing more");

  // The connection and the resource's notifications still work afterwards.
  const second = await oada.watch({ path: `/${id}` });
  try {
    await oada.put({ path: `/${id}`, data: { n: 2 } });
    const { change, seen } = await nextMatching(second.changes, (c) => c.body?.n === 2, "a change on a new watch after unwatch");
    assert.deepEqual(seen, [], "the new watch starts after the unwatch");
    assert.equal(change.resource_id, id);
  } finally {
    await closeQuietly(second.changes);
  }
  const reply = await withTimeout(oada.unwatch("conformance-unknown-watch"), 5_000, "unwatch of an unknown id");
  assert.equal(reply.status, 200, "unwatch of an unknown id answers 200");
  return "unwatch answered; a new watch on the same resource works";
};

cases.watch_persist = async (oada) => {
  // persist: {name} keeps the watch's progress in a resource linked from
  // <path>/_meta/watchPersists/<name>: links inside _meta, writes through
  // them, and scalar PUT bodies (protocol §4.4).
  const id = await newResource(oada, { n: 0 });
  const name = `conformance-${RUN}`;
  const persistPath = `/${id}/_meta/watchPersists/${name}`;
  const { changes } = await oada.watch({ path: `/${id}`, persist: { name } });
  try {
    const record = (await oada.get({ path: persistPath })).data;
    assert.match(record?._id ?? "", /^resources\//, `the persist record is a linked resource: ${JSON.stringify(record)}`);
    assert.ok(Number.isInteger(record.rev), "it holds the rev the watch started from");
    const meta = (await oada.get({ path: `/${id}/_meta` })).data;
    assert.deepEqual(meta.watchPersists[name], { _id: record._id }, "linked from the watched resource's _meta");

    const { changes: recordChanges } = await oada.watch({ path: `/${record._id}` });
    try {
      await oada.put({ path: `/${id}`, data: { n: 1 } });
      await nextMatching(changes, (c) => c.body?.n === 1, "the change with n=1");
      // The client writes its progress when asked for the next change.
      const pending = changes.next();
      const { change: saved } = await nextMatching(
        recordChanges,
        (c) => c.type === "merge" && "rev" in (c.body ?? {}),
        "the client's progress write through the _meta link",
      );
      assert.ok(Number.isInteger(saved.body.rev), `progress is a rev number: ${JSON.stringify(saved.body)}`);
      await oada.put({ path: `/${id}`, data: { n: 2 } });
      const next = await withTimeout(pending, 5_000, "the change with n=2");
      assert.equal(next.value?.body?.n, 2);
    } finally {
      await closeQuietly(recordChanges);
    }
    const through = (await oada.get({ path: `${persistPath}/rev` })).data;
    assert.ok(Number.isInteger(through), `GET through the _meta link reads the rev: ${JSON.stringify(through)}`);
    return `progress kept in ${record._id} via ${persistPath}`;
  } finally {
    await closeQuietly(changes);
  }
};

cases.get_watch = async (oada) => {
  const id = await newResource(oada, { n: 0 });
  const response = await oada.watch({ path: `/${id}`, initialMethod: "get" });
  try {
    assert.equal(response.status, 200, "get-watch status");
    assert.equal(response.data?._id, id, `get-watch answers with the resource: ${JSON.stringify(response.data)}`);
    assert.equal(response.data.n, 0);
    await oada.put({ path: `/${id}`, data: { n: 1 } });
    await nextMatching(response.changes, (c) => c.body?.n === 1, "the change after a get-watch");
  } finally {
    await closeQuietly(response.changes);
  }
  const resumed = await oada.watch({ path: `/${id}`, initialMethod: "get", rev: 1 });
  try {
    assert.equal(resumed.status, 200, "get-watch with rev status");
    if (!REFERENCE) {
      // The reference server's resumed answer carries no data; ours does.
      assert.equal(resumed.data?.n, 1, `get-watch with rev also answers with the resource: ${JSON.stringify(resumed.data)}`);
    }
    const { change } = await nextMatching(resumed.changes, () => true, "the replayed change");
    assert.equal(change.body._rev, 2);
  } finally {
    await closeQuietly(resumed.changes);
  }
  return "get-watch answers with data, with and without rev";
};

cases.watch_resource_delete = async (oada) => {
  const id = await newResource(oada, { n: 0 });
  const { changes } = await oada.watch({ path: `/${id}`, type: "tree" });
  try {
    await oada.delete({ path: `/${id}` });
    const { change } = await nextMatching(changes, () => true, "the whole-resource delete change");
    assert.deepEqual(change, [{ resource_id: id, path: "", body: null, type: "delete" }]);
  } finally {
    // The server drops watches of a deleted resource; the unwatch still gets an answer.
    await closeWatch(changes);
  }
  return "delete change delivered; unwatch of the dropped watch answered";
};

cases.concurrent_writes = async () => {
  // 10 requests in flight on one connection: replies must be matched to
  // their requests, and every write must get its own rev.
  const busy = await connect({ domain: URL_, token: TOKEN, connection: MODE, concurrency: 10 });
  try {
    const id = await newResource(busy, {});
    const responses = await Promise.all(
      Array.from({ length: 30 }, (_, i) => busy.put({ path: `/${id}/k${i}`, data: { i } })),
    );
    const revs = responses.map((r, i) => {
      const w = assertWriteResponse(r, `PUT k${i}`);
      assert.equal(w.location, `/${id}/k${i}`, `reply ${i} belongs to request ${i}`);
      return w.rev;
    });
    assert.deepEqual([...revs].sort((a, b) => a - b), Array.from({ length: 30 }, (_, i) => i + 2), "30 distinct consecutive revs");
    const reads = await Promise.all(Array.from({ length: 30 }, (_, i) => busy.get({ path: `/${id}/k${i}` })));
    reads.forEach((r, i) => assert.deepEqual(r.data, { i }, `read ${i} answers its own path`));
    return "30 concurrent PUTs and GETs matched, revs 2..31";
  } finally {
    await busy.disconnect();
  }
};

cases.large_body = async (oada) => {
  // About 4 MiB of JSON in one request and one response (one WebSocket frame in ws mode).
  const id = await newResource(oada, {});
  const big = { rows: Array.from({ length: 40_000 }, (_, i) => ({ i, pad: "x".repeat(80) })) };
  const w = assertWriteResponse(await oada.put({ path: `/${id}/big`, data: big }), "large PUT");
  const { data } = await oada.get({ path: `/${id}/big` });
  assert.equal(data.rows.length, 40_000);
  assert.deepEqual(data.rows[39_999], { i: 39_999, pad: "x".repeat(80) });
  return `~${Math.round(JSON.stringify(big).length / 1024)} KiB written at rev ${w.rev} and read back`;
};

cases.too_large = async (oada) => {
  // A body over the server's limit is refused with 413 for that request only
  // (over a WebSocket too: the reference server takes frames up to 100 MiB),
  // and the connection goes on serving.
  const id = await newResource(oada, {});
  const seen = [];
  for (const extra of [512 * 1024, 3 * 1024 * 1024]) {
    const size = MAX_BODY_BYTES + extra;
    const data = { pad: "x".repeat(size) };
    const error = await rejectsWith(
      oada.put({ path: `/${id}/big`, data, timeout: 10_000 }),
      413,
      `PUT of ${size} bytes (limit ${MAX_BODY_BYTES})`,
    );
    seen.push(`${size} bytes -> 413 (${error.message})`);
  }
  const after = await oada.get({ path: `/${id}` });
  assert.equal(after.status, 200, "the connection still serves after a refused body");
  assert.equal(after.data.big, undefined, "nothing was written");
  return seen.join("; ");
};

cases.binary = async (oada) => {
  // Non-JSON content types are stored as raw bytes (protocol §2.1). Over a
  // WebSocket they cannot be read back (only JSON travels in frames).
  const id = `resources/conformance-binary-${RUN}-${MODE}`;
  const bytes = new Uint8Array(Array.from({ length: 3000 }, (_, i) => (i * 7) % 256));
  if (MODE === "http") {
    const put = await oada.put({ path: `/${id}`, data: bytes, contentType: "application/octet-stream" });
    assertWriteResponse(put, "binary PUT");
  } else {
    // The ws client cannot send bytes; write them over plain HTTP.
    const put = await fetch(new URL(`/${id}`, URL_), {
      method: "PUT",
      body: bytes,
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/octet-stream" },
    });
    assert.equal(put.status, 201, "binary PUT over HTTP");
  }
  if (MODE === "ws") {
    const error = await rejectsWith(oada.get({ path: `/${id}` }), 400, "GET of a binary resource over a WebSocket");
    return `binary GET over ws -> 400 (${error.message})`;
  }
  const response = await oada.get({ path: `/${id}` });
  assert.equal(response.headers["content-type"], "application/octet-stream");
  assert.ok(response.data instanceof Uint8Array, `binary body should come back as bytes, got ${typeof response.data}`);
  assert.deepEqual(Array.from(response.data), Array.from(bytes), "the same bytes come back");
  const meta = (await oada.get({ path: `/${id}/_meta` })).data;
  assert.equal(meta._type, "application/octet-stream", "_meta._type of the binary resource");
  return `${bytes.length} bytes stored and read back`;
};

cases.not_found = async (oada) => {
  await rejectsWith(oada.get({ path: `${BASE}/does-not-exist` }), 404, "GET of a missing key");
  await rejectsWith(oada.head({ path: `${BASE}/does-not-exist/deeper` }), 404, "HEAD of a missing path");
  const missing = `/resources/conformance-missing-${RUN}`;
  await rejectsWith(oada.get({ path: missing }), MISSING_RESOURCE_STATUS, "GET of a missing resource");
  const error = await rejectsWith(oada.get({ path: `${missing}/x` }), MISSING_RESOURCE_STATUS, "GET under a missing resource");
  assert.equal(error.status, MISSING_RESOURCE_STATUS);
  await rejectsWith(oada.watch({ path: `${BASE}/does-not-exist` }), 404, "watch of a missing path");
  return `404 for missing key, path and watch, ${MISSING_RESOURCE_STATUS} for a missing resource`;
};

cases.bad_token = async () => {
  const bad = await connect({ domain: URL_, token: "not-a-valid-token", connection: MODE });
  try {
    await rejectsWith(bad.get({ path: "/bookmarks" }), 401, "GET with a bad token");
    await rejectsWith(bad.put({ path: "/bookmarks/x", data: { a: 1 } }), 401, "PUT with a bad token");
    await rejectsWith(bad.watch({ path: "/bookmarks" }), 401, "watch with a bad token");
  } finally {
    await bad.disconnect();
  }
  return "bad token -> 401 on GET, PUT and watch";
};

cases.other_user = async (oada) => {
  assert.ok(OTHER_TOKEN, "needs OADA_OTHER_TOKEN, a token of a second user");
  const mine = await newResource(oada, { secret: 1 });
  const other = await connect({ domain: URL_, token: OTHER_TOKEN, connection: MODE });
  try {
    const theirs = (await other.get({ path: "/bookmarks" })).data;
    const own = (await oada.get({ path: "/bookmarks" })).data;
    assert.notEqual(theirs._id, own._id, "each user has their own bookmarks");
    await rejectsWith(other.get({ path: `/${mine}` }), 403, "GET of another user's resource");
    await rejectsWith(other.put({ path: `/${mine}`, data: { secret: 2 } }), 403, "PUT to another user's resource");
    await rejectsWith(other.watch({ path: `/${mine}` }), 403, "watch of another user's resource");
    const { data } = await oada.get({ path: `/${mine}` });
    assert.equal(data.secret, 1, "the refused write changed nothing");
    return "another user's GET, PUT and watch -> 403";
  } finally {
    await other.disconnect();
  }
};

cases.if_match = async (oada) => {
  const id = await newResource(oada, { v: 0 });
  const head = await oada.head({ path: `/${id}` });
  const rev = Number(head.headers["x-oada-rev"]);
  assert.equal(head.headers.etag, etagOf(id, rev));
  await rejectsWith(
    oada.put({ path: `/${id}`, data: { v: 1 }, headers: { "if-match": etagOf(id, rev + 5) } }),
    412,
    "PUT with a stale If-Match",
  );
  const unchanged = await oada.head({ path: `/${id}` });
  assert.equal(unchanged.headers["x-oada-rev"], `${rev}`, "a failed precondition writes nothing");
  const ok = await oada.put({ path: `/${id}`, data: { v: 2 }, etagIfMatch: head.headers.etag });
  assert.equal(assertWriteResponse(ok, "PUT with the current ETag").rev, rev + 1);
  return `stale ETag -> 412; current ETag -> 201 rev ${rev + 1}`;
};

cases.jobs_request = async (oada) => {
  const svc = serviceName("jobs");
  const pendingPath = `/bookmarks/services/${svc}/jobs/pending`;
  await oada.ensure({ path: pendingPath, data: {}, tree: JOBS_TREE });
  const { changes } = await oada.watch({ path: pendingPath });

  // Play the job service: wait for the next job in pending, check it, finish it.
  async function serveOne(config, final) {
    const { change } = await nextMatching(
      changes,
      (c) => c.type === "merge" && Object.entries(c.body ?? {}).some(([k, v]) => !k.startsWith("_") && v?._id),
      "a job to appear in pending",
    );
    const [key, link] = Object.entries(change.body).find(([k, v]) => !k.startsWith("_") && v?._id);
    const job = (await oada.get({ path: `/${link._id}` })).data;
    assert.equal(job.service, svc);
    assert.equal(job.type, "conformance");
    assert.deepEqual(job.config, config);
    await oada.post({
      path: `/${link._id}/updates`,
      data: { status: "started", time: new Date().toISOString() },
      contentType: JOB_TYPE,
    });
    await oada.put({ path: `/${link._id}`, data: final });
    await oada.delete({ path: `${pendingPath}/${key}` });
    return link._id;
  }

  try {
    const succeeding = doJob(oada, { service: svc, type: "conformance", config: { x: 1 } });
    const okId = await serveOne({ x: 1 }, { status: "success", result: { answer: 42 } });
    const done = await withTimeout(succeeding, CASE_TIMEOUT_MS / 3, "doJob to resolve");
    assert.equal(done.status, "success");
    assert.deepEqual(done.result, { answer: 42 });

    const failing = doJob(oada, { service: svc, type: "conformance", config: { x: 2 } });
    // Keep the rejection handled while the service plays its part.
    const outcome = failing.then(
      () => assert.fail("doJob should reject for a failed job"),
      (error) => error,
    );
    const failedId = await serveOne({ x: 2 }, { status: "failure", result: { name: "Error", message: "boom" } });
    const error = await withTimeout(outcome, CASE_TIMEOUT_MS / 3, "doJob to reject");
    assert.equal(error?.message, "boom", "doJob rejects with the job's serialised error");
    return `doJob resolved for ${okId}, rejected for ${failedId}`;
  } finally {
    await closeQuietly(changes);
  }
};

// ----------------------------------------------------------------------------

// doJob starts its request without awaiting it; a failure there must be
// reported by its case, not crash the remaining ones.
logUnhandledRejections();

const oada = await runCases(cases, {
  connect: () => connect({ domain: URL_, token: TOKEN, connection: MODE }),
  timeoutMs: CASE_TIMEOUT_MS,
});
await withTimeout(oada?.disconnect() ?? Promise.resolve(), 5_000, "disconnect").catch(() => {});
// Open sockets (reconnecting WebSocket, keep-alive agent) must not keep the
// process alive once every case has reported.
process.exit(0);

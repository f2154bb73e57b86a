// Drive the official @oada/client 5.3.0 from tests: one command per run, JSON lines out.
//
//   node oada.mjs <domain> <token> <connection> put   <path> <json data> [json tree]
//   node oada.mjs <domain> <token> <connection> get   <path> [json tree]
//   node oada.mjs <domain> <token> <connection> watch <path> <count> [rev]
//
// `watch` prints {"ready": true} once the watch is open, then one line per
// change, and exits after <count> changes.
import { pathToFileURL } from "node:url";
import path from "node:path";

const modules =
  process.env.OADA_NODE_MODULES ??
  path.resolve(path.dirname(new URL(import.meta.url).pathname), "../../../conformance/node_modules");
const { connect } = await import(
  pathToFileURL(path.join(modules, "@oada/client/dist/index.js")).href
);

const [domain, token, connection, command, target, ...rest] = process.argv.slice(2);
const out = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);

const oada = await connect({ domain, token, connection });
try {
  if (command === "put") {
    const data = JSON.parse(rest[0]);
    const tree = rest[1] ? JSON.parse(rest[1]) : undefined;
    const response = await oada.put({ path: target, data, tree });
    out({ status: response.status, headers: response.headers });
  } else if (command === "get") {
    const tree = rest[0] ? JSON.parse(rest[0]) : undefined;
    const response = await oada.get({ path: target, tree });
    out({ status: response.status, data: response.data });
  } else if (command === "watch") {
    const count = Number(rest[0]);
    const rev = rest[1] ? Number(rest[1]) : undefined;
    const { changes } = await oada.watch({ path: target, rev, type: "single" });
    out({ ready: true });
    let seen = 0;
    for await (const change of changes) {
      out(change);
      seen += 1;
      if (seen >= count) break;
    }
  } else {
    throw new Error(`unknown command ${command}`);
  }
} finally {
  await oada.disconnect();
}

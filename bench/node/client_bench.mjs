// The official @oada/client 5.3.0 side of bench/client.py.
//
//   node client_bench.mjs <domain> <token> <connection> <n> <concurrency> <resource path>
//
// Times n sequential PUTs, n sequential GETs, then n concurrent PUTs and GETs
// (the client's own concurrency limit set to <concurrency>) and prints one
// JSON object of seconds per phase.
import { pathToFileURL } from "node:url";
import path from "node:path";

const modules =
  process.env.OADA_NODE_MODULES ??
  path.resolve(path.dirname(new URL(import.meta.url).pathname), "../../conformance/node_modules");
const { connect } = await import(
  pathToFileURL(path.join(modules, "@oada/client/dist/index.js")).href
);

const [domain, token, connection, nText, concurrencyText, base] = process.argv.slice(2);
const n = Number(nText);
const concurrency = Number(concurrencyText);
const oada = await connect({ domain, token, connection, concurrency });

const timed = async (fn) => {
  const start = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - start) / 1e9;
};

const result = {};
try {
  await oada.put({ path: base, data: { ready: true }, contentType: "application/json" });
  result.seq_put = await timed(async () => {
    for (let i = 0; i < n; i++) {
      await oada.put({ path: `${base}/seq`, data: { i }, contentType: "application/json" });
    }
  });
  result.seq_get = await timed(async () => {
    for (let i = 0; i < n; i++) {
      await oada.get({ path: `${base}/seq` });
    }
  });
  result.conc_put = await timed(async () => {
    await Promise.all(
      Array.from({ length: n }, (_, i) =>
        oada.put({ path: `${base}/c${i % 10}`, data: { i }, contentType: "application/json" }),
      ),
    );
  });
  result.conc_get = await timed(async () => {
    await Promise.all(Array.from({ length: n }, (_, i) => oada.get({ path: `${base}/c${i % 10}` })));
  });
} finally {
  await oada.disconnect();
}
process.stdout.write(`${JSON.stringify(result)}\n`);

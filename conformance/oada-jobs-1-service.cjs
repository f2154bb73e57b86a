// Runs the original @oada/jobs 1.0.4 Service (npm alias `oada-jobs-1`) with
// two workers until its stdin closes, so that tests can post jobs to it
// from Python:
//   "echo"  returns {echo: <job config>}
//   "fail"  throws Error("boom")
//
// Environment:
//   OADA_URL      server origin, https://127.0.0.1:<port> (this package
//                 speaks only wss://)
//   OADA_TOKEN    bearer token of the service
//   NODE_EXTRA_CA_CERTS  the server's (self-signed) certificate, PEM file
//   SERVICE       the service's name (/bookmarks/services/<SERVICE>)
//
// stdout: {"event":"ready"} once Service.start() resolved. Errors go to
// stderr and exit with status 1.

"use strict";

const { Service } = require("oada-jobs-1");

const URL_ = process.env.OADA_URL ?? "https://127.0.0.1:8443";
const TOKEN = process.env.OADA_TOKEN ?? "god";
const SERVICE = process.env.SERVICE ?? "conformance-original-service";

function fail(what, error) {
  process.stderr.write(`${what}: ${error?.stack ?? JSON.stringify(error)}\n`);
  process.exit(1);
}

// This package has no error handler on its socket: a connection failure is
// an uncaught exception.
process.on("uncaughtException", (error) => fail("uncaught exception", error));
process.on("unhandledRejection", (error) => fail("unhandled rejection", error));

async function main() {
  const service = new Service(SERVICE, URL_, TOKEN, 10);
  service.on("echo", 10_000, async (job) => ({ echo: job.config }));
  service.on("fail", 10_000, async () => {
    throw new Error("boom");
  });
  await service.start();
  process.stdout.write(`${JSON.stringify({ event: "ready" })}\n`);
}

// The test ends the service by closing stdin.
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();

main().catch((error) => fail("could not start the @oada/jobs 1.0.4 service", error));

// Makes one call of any kind through a grpc-websockets client and prints what its user sees, as JSON:
//
//   node ws-call.mjs CLIENT BASE_URL DESCRIPTOR_SET SPEC_JSON
//
// CLIENT is nice-grpc-web or improbable (the ./CLIENT-ws-client.mjs adapters), both with their
// WebsocketTransport. SPEC_JSON:
//   method      Unary, ServerStream, ClientStream or Bidi of accept.v1.Probe (any method of the
//               schema; `service` and `kind` as in call.mjs for one it lacks)
//   requests    the request messages in protobuf JSON (bytes as base64); unary and server-streaming
//               calls send the first
//   headers     {name: value} custom request metadata
//   pingPong    request n+1 is handed to the client only once reply n has arrived: a gateway that
//               held replies back until the request stream ended would never finish the call
//   timeoutMs   the script aborts the call after this long (status "aborted", code null)
//   afterHeaders  request 0 is handed to the client only once the response headers have arrived
//               (recorded as the event "headers"): a gateway that held them back until the first
//               reply would never finish a call whose server answers only requests
// Prints {client, code, message, headers, trailers, messages, events, elapsedMs}; `events` records
// "send n" when request n is handed to the client, "message n" when reply n arrives, "end CODE".
import { performance } from "node:perf_hooks";
import { SERVICE, fromJson, loadProbe, resolveMethod, toJson } from "./probe.mjs";

const [clientName, baseUrl, descriptorSet, specJson] = process.argv.slice(2);
if (!specJson) {
  console.error("usage: node ws-call.mjs CLIENT BASE_URL DESCRIPTOR_SET SPEC_JSON");
  process.exit(2);
}
const spec = JSON.parse(specJson);
const probe = loadProbe(descriptorSet);
const { makeClient, description } = await import(`./${clientName}-ws-client.mjs`);
const client = makeClient(baseUrl);

const method = resolveMethod(probe, spec.service ?? SERVICE, spec.method, spec.kind);
const inputs = (spec.requests ?? [{}]).map((json) => fromJson(method.input, json));
const events = [];
const messages = [];

// Resolved when reply n has arrived: what a ping-pong request stream waits for.
const arrived = [];
function replyArrived(n) {
  if (!arrived[n]) {
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    arrived[n] = { promise, resolve };
  }
  return arrived[n];
}

let headersArrived;
const headers = new Promise((resolve) => (headersArrived = resolve));

async function* requests() {
  for (let n = 0; n < inputs.length; n++) {
    if (spec.afterHeaders && n === 0) await headers;
    if (spec.pingPong && n > 0) await replyArrived(n - 1).promise;
    events.push(`send ${n}`);
    yield inputs[n];
  }
}

const abort = new AbortController();
const timer = spec.timeoutMs ? setTimeout(() => abort.abort(), spec.timeoutMs) : null;
const started = performance.now();
const result = await client.call(method, requests(), {
  headers: spec.headers ?? {},
  signal: abort.signal,
  onHeaders() {
    if (spec.afterHeaders) events.push("headers");
    headersArrived();
  },
  onMessage(reply) {
    const n = messages.length;
    messages.push(toJson(method.output, reply, { alwaysEmitImplicit: true }));
    events.push(`message ${n}`);
    replyArrived(n).resolve();
  },
});
const elapsedMs = performance.now() - started;
if (timer) clearTimeout(timer);
events.push(`end ${result.code}`);

process.stdout.write(JSON.stringify({ client: description, ...result, messages, events, elapsedMs }) + "\n", () =>
  process.exit(0),
);

// Makes one call through a gRPC-Web client and prints what its user would see, as JSON:
//
//   node call.mjs CLIENT BASE_URL DESCRIPTOR_SET SPEC_JSON
//
// CLIENT is connect, grpc-web or protobuf-ts (the ./CLIENT-client.mjs adapters). SPEC_JSON:
//   service, method   the path to call (default service accept.v1.Probe); a method the schema
//                     lacks is sent as `kind` (unary or server_streaming) with CallRequest/CallReply
//   request           the request message in protobuf JSON (bytes as base64)
//   headers           {name: value} custom request metadata
//   binaryHeaders     {name-bin: base64 of the raw bytes}: each client encodes them its own way
//   timeoutMs         the call's deadline
//   releaseKey        after each reply, call Release(releaseKey) through the same client; a
//                     server stream with wait_release only goes on once the reply was delivered
//   releaseOnHeaders  when the client reports the response headers, call Release(releaseOnHeaders)
//                     (connect and protobuf-ts; grpc-web reports metadata only at the end): a call
//                     with wait_release_first then goes on only if the headers came before any reply
// Prints {code, message, headers, trailers, messages, events, elapsedMs, ...}.
import { performance } from "node:perf_hooks";
import { SERVICE, binaryHeadersOf, create, fromJson, loadProbe, resolveMethod, toJson } from "./probe.mjs";

const [clientName, baseUrl, descriptorSet, specJson] = process.argv.slice(2);
if (!specJson) {
  console.error("usage: node call.mjs CLIENT BASE_URL DESCRIPTOR_SET SPEC_JSON");
  process.exit(2);
}
const spec = JSON.parse(specJson);
const probe = loadProbe(descriptorSet);
const { makeClient, description } = await import(`./${clientName}-client.mjs`);
const client = makeClient(baseUrl);

const method = resolveMethod(probe, spec.service ?? SERVICE, spec.method, spec.kind);
const input = fromJson(method.input, spec.request ?? {});
const binaryHeaders = binaryHeadersOf(spec.binaryHeaders);
const releaseMethod = resolveMethod(probe, SERVICE, "Release");

const events = [];
const messages = [];
const releases = [];

function release(index, name = spec.releaseKey) {
  const key = create(probe.Key, { key: name });
  const noop = { headers: {}, binaryHeaders: {}, timeoutMs: 10000, onMessage: () => {} };
  return client.call(releaseMethod, key, noop).then((result) => {
    events.push(result.code === 0 ? `released ${index}` : `release ${index} failed: ${result.code} ${result.message}`);
  });
}

const started = performance.now();
const result = await client.call(method, input, {
  headers: spec.headers ?? {},
  binaryHeaders,
  timeoutMs: spec.timeoutMs,
  onMessage(reply) {
    const index = messages.length;
    messages.push(toJson(method.output, reply, { alwaysEmitImplicit: true }));
    events.push(`message ${index}`);
    if (spec.releaseKey) releases.push(release(index));
  },
  onHeaders() {
    if (!spec.releaseOnHeaders) return;
    events.push("headers");
    releases.push(release("after headers", spec.releaseOnHeaders));
  },
});
const elapsedMs = performance.now() - started;
events.push(`end ${result.code}`);
await Promise.all(releases);

process.stdout.write(JSON.stringify({ client: description, ...result, messages, events, elapsedMs }) + "\n", () =>
  process.exit(0),
);

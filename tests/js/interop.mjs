// The gRPC-Web interop cases (grpc/grpc-web doc/interop-test-descriptions.md) through one client:
// several calls of grpc.testing.TestService in one Node process, and what the client's user saw of
// each, as JSON.
//
//   node interop.mjs CLIENT BASE_URL DESCRIPTOR_SET < CALLS_JSON
//
// CLIENT is connect, grpc-web or protobuf-ts (the ./CLIENT-client.mjs adapters, as for call.mjs).
// DESCRIPTOR_SET is the interop.binpb that tests/support/interop_server.py writes. CALLS_JSON, on
// standard input (a large_unary request is too big for an argument), is a list of:
//   name              echoed back, to tell the answers apart
//   service, method   e.g. grpc.testing.TestService / UnaryCall (the schema must have it)
//   request           the request message in protobuf JSON (bytes as base64)
//   headers           {name: value} custom request metadata
//   binaryHeaders     {name-bin: base64 of the raw bytes}: each client encodes them its own way
//   timeoutMs         the call's deadline
// The calls run one after the other. Prints one JSON list, in the same order, of
// {name, client, code, message, headers, trailers, messages, elapsedMs, headersMs, ...}: messages in
// protobuf JSON, headers and trailers as the client exposes them (null when it did not report them),
// headersMs when the client reported the headers (absent for grpc-web: it reports them at the end).
import { text } from "node:stream/consumers";
import { performance } from "node:perf_hooks";
import { binaryHeadersOf, findMethod, fromJson, loadRegistry, toJson } from "./probe.mjs";

const [clientName, baseUrl, descriptorSet] = process.argv.slice(2);
if (!descriptorSet) {
  console.error("usage: node interop.mjs CLIENT BASE_URL DESCRIPTOR_SET < CALLS_JSON");
  process.exit(2);
}
const calls = JSON.parse(await text(process.stdin));
const registry = loadRegistry(descriptorSet);
const { makeClient, description } = await import(`./${clientName}-client.mjs`);
const client = makeClient(baseUrl);

const results = [];
for (const spec of calls) {
  const method = findMethod(registry, spec.service, spec.method);
  const messages = [];
  const started = performance.now();
  let headersMs; // when the client reported the response headers (connect and protobuf-ts report them as they come)
  const result = await client.call(method, fromJson(method.input, spec.request ?? {}), {
    headers: spec.headers ?? {},
    binaryHeaders: binaryHeadersOf(spec.binaryHeaders),
    timeoutMs: spec.timeoutMs,
    onMessage: (reply) => messages.push(toJson(method.output, reply, { alwaysEmitImplicit: true })),
    onHeaders: () => (headersMs ??= performance.now() - started),
  });
  const elapsedMs = performance.now() - started;
  results.push({ name: spec.name, client: description, ...result, messages, elapsedMs, headersMs });
}

process.stdout.write(JSON.stringify(results) + "\n", () => process.exit(0));

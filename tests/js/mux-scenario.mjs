// Drives the compiled shell SDK (shell-web/sdk/dist/mux.js, upf-mux.v1) in Node, with `ws` as its
// WebSocket, and prints what its user sees as JSON:
//
//   node mux-scenario.mjs SCENARIO BASE_URL DESCRIPTOR_SET SPEC_JSON
//
// SCENARIO:
//   concurrent  spec.calls = [{kind, method, request | requests}], all started at once on one socket
//   pingpong    a bidi call; request n+1 goes out only once reply n has arrived (spec.count)
//   cancel      spec.request on ServerStream held by the probe; aborted after the first reply, then
//               one more unary call on the same socket
//   deadline    a unary call with spec.request and spec.timeoutMs
//   headersFirst  spec.request on ServerStream, held by the probe after its headers (waitReleaseFirst)
//               until the scenario, once the headers have arrived, calls Release on the same socket
//   bidiHeadersFirst  a Bidi call with `x-headers-first` metadata (the probe sends its headers before
//               reading anything) whose request iterable yields its one message only once the
//               headers have arrived; spec.timeoutMs
// Every call reports {code, message, replies, headers, trailers}; `sockets` counts the WebSockets made.
import { performance } from "node:perf_hooks";
import WebSocket from "ws";
import { MuxClient, MuxError } from "../../shell-web/sdk/dist/mux.js";
import { fromBinary, fromJson, loadProbe, toBinary, toJson } from "./probe.mjs";

const [scenario, baseUrl, descriptorSet, specJson] = process.argv.slice(2);
if (!specJson) {
  console.error("usage: node mux-scenario.mjs SCENARIO BASE_URL DESCRIPTOR_SET SPEC_JSON");
  process.exit(2);
}
const spec = JSON.parse(specJson);
const probe = loadProbe(descriptorSet);

let sockets = 0;
class CountedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    sockets += 1;
  }
}

function method(name) {
  const descriptor = probe.service.methods.find((m) => m.name === name);
  return {
    path: `/${probe.service.typeName}/${name}`,
    serialize: (message) => toBinary(descriptor.input, fromJson(descriptor.input, message)),
    deserialize: (bytes) => toJson(descriptor.output, fromBinary(descriptor.output, bytes), { alwaysEmitImplicit: true }),
  };
}

async function outcome(run) {
  const seen = { headers: null, trailers: null };
  const options = { onHeader: (h) => (seen.headers = h), onTrailer: (t) => (seen.trailers = t) };
  const replies = [];
  try {
    await run(options, (reply) => replies.push(reply));
    return { code: 0, message: "", replies, ...seen };
  } catch (error) {
    if (error instanceof MuxError) return { code: error.code, message: error.details, replies, ...seen };
    return { code: null, message: `${error.name}: ${error.message}`, replies, ...seen };
  }
}

function call(client, { kind, method: name, request, requests, metadata }, extra = {}) {
  const m = method(name);
  return outcome(async (seen, onReply) => {
    const options = { ...seen, ...extra, ...(metadata ? { metadata } : {}) };
    if (kind === "unary") onReply(await client.unary(m, request, options));
    else if (kind === "clientStream") onReply(await client.clientStream(m, requests, options));
    else {
      const stream = kind === "serverStream" ? client.serverStream(m, request, options) : client.bidi(m, requests, options);
      for await (const reply of stream) onReply(reply);
    }
  });
}

const client = await MuxClient.connect(baseUrl.replace(/^http/, "ws") + "/api/mux", { WebSocket: CountedWebSocket });
const started = performance.now();
let result;

if (scenario === "concurrent") {
  const calls = await Promise.all(spec.calls.map((c) => call(client, c)));
  result = { calls };
} else if (scenario === "pingpong") {
  const events = [];
  const arrived = [];
  const replyArrived = (n) => {
    if (!arrived[n]) {
      let resolve;
      const promise = new Promise((r) => (resolve = r));
      arrived[n] = { promise, resolve };
    }
    return arrived[n];
  };
  async function* requests() {
    for (let n = 0; n < spec.count; n++) {
      if (n > 0) await replyArrived(n - 1).promise;
      events.push(`send ${n}`);
      yield { payload: Buffer.from(`ping ${n}`).toString("base64") };
    }
  }
  const m = method("Bidi");
  const done = await outcome(async (options, onReply) => {
    for await (const reply of client.bidi(m, requests(), options)) {
      events.push(`message ${reply.index}`);
      onReply(reply);
      replyArrived(reply.index).resolve();
    }
  });
  result = { ...done, events };
} else if (scenario === "cancel") {
  const abort = new AbortController();
  const m = method("ServerStream");
  const cancelled = await outcome(async (options, onReply) => {
    for await (const reply of client.serverStream(m, spec.request, { ...options, signal: abort.signal })) {
      onReply(reply);
      abort.abort();
    }
  });
  const after = await call(client, { kind: "unary", method: "Unary", request: { payload: "YWZ0ZXI=" } });
  result = { cancelled, after, activeCalls: client.activeCalls };
} else if (scenario === "headersFirst") {
  // The probe sends its headers, then holds its replies until Release(key), which this scenario
  // asks for (on the same socket) only once the headers have arrived.
  const events = [];
  const m = method("ServerStream");
  const done = await outcome(async (options, onReply) => {
    const onHeader = (h) => {
      options.onHeader(h);
      events.push("headers");
      client.unary(method("Release"), { key: spec.request.key }).then(() => events.push("released"));
    };
    for await (const reply of client.serverStream(m, spec.request, { ...options, onHeader, timeoutMs: spec.timeoutMs })) {
      events.push(`message ${reply.index}`);
      onReply(reply);
    }
  });
  result = { ...done, events };
} else if (scenario === "bidiHeadersFirst") {
  const events = [];
  let headersArrived;
  const arrived = new Promise((resolve) => (headersArrived = resolve));
  async function* requests() {
    await arrived;
    events.push("send 0");
    yield { payload: Buffer.from("after the headers").toString("base64") };
  }
  const done = await outcome(async (options, onReply) => {
    const onHeader = (h) => {
      options.onHeader(h);
      events.push("headers");
      headersArrived();
    };
    const callOptions = { ...options, onHeader, metadata: { "x-headers-first": "yes" }, timeoutMs: spec.timeoutMs };
    for await (const reply of client.bidi(method("Bidi"), requests(), callOptions)) {
      events.push(`message ${reply.index}`);
      onReply(reply);
    }
  });
  result = { ...done, events };
} else if (scenario === "deadline") {
  result = await call(client, { kind: "unary", method: "Unary", request: spec.request }, { timeoutMs: spec.timeoutMs });
} else {
  throw new Error(`unknown scenario ${scenario}`);
}

result = { ...result, sockets, elapsedMs: performance.now() - started };
client.close();
process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(0));

// One MuxClient of the compiled shell SDK (shell-web/sdk/dist/mux.js) for a whole test, driven by
// commands, so that the test can stop and start gateways between them:
//
//   node mux-session.mjs MUX_URL DESCRIPTOR_SET OPTIONS_JSON
//
// OPTIONS_JSON: ConnectOptions (connectTimeoutMs, reconnect), and `lazy: true` for `new MuxClient`
// instead of MuxClient.connect. Commands are JSON lines on stdin, run one after another; each is
// answered with one JSON line on stdout:
//   {op: "call", name, kind, method, request | requests, streamed?, timeoutMs?, abortAfterMs?}
//        starts a call and answers at once: {started}; `streamed: true` gives the client the
//        requests as an async iterable (an array otherwise)
//   {op: "replies", name, count}   once the call has that many replies, or has ended: {replies, ended}
//   {op: "wait", name}             once the call has ended: {code, message, replies, elapsedMs}
//   {op: "goaway"}                 once a socket has received a GOAWAY: {lastStreamId, reason}
//   {op: "sockets"}                the sockets made so far: [{opened, goaway, closeCode}]
//   {op: "block", untilFile, calls}  answers {blocking: true}, then holds the event loop (no frame
//                                  is read meanwhile) until the file `untilFile` exists, at most
//                                  30 s, and starts the `calls` ([call]) right after
//   {op: "repeat", call, everyMs, forMs | untilOk}
//        the call made again and again, each awaited: {results: [{code, message, elapsedMs}], sockets}
//        (sockets: how many were made meanwhile); untilOk stops at the first OK
// Codes are gRPC status codes (0 OK); `sockets` counts the WebSockets made, whether they opened or not.
import { performance } from "node:perf_hooks";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";
import { MuxClient, MuxError } from "../../shell-web/sdk/dist/mux.js";
import { fromBinary, fromJson, loadProbe, toBinary, toJson } from "./probe.mjs";

const [url, descriptorSet, optionsJson] = process.argv.slice(2);
if (!optionsJson) {
  console.error("usage: node mux-session.mjs MUX_URL DESCRIPTOR_SET OPTIONS_JSON");
  process.exit(2);
}
const { lazy, ...options } = JSON.parse(optionsJson);
const probe = loadProbe(descriptorSet);

const GOAWAY = 0x09;
const sockets = [];
const goaways = [];

/** The WebSocket the client is given: it records what happens to each socket, without changing it. */
class WatchedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    const record = { opened: false, goaway: false, closeCode: null };
    sockets.push(record);
    this.addEventListener("open", () => (record.opened = true));
    this.addEventListener("close", (event) => (record.closeCode = event.code));
    this.addEventListener("message", (event) => {
      const bytes = Buffer.from(event.data);
      for (let offset = 0; offset + 10 <= bytes.length; offset += 10 + bytes.readUInt32BE(offset + 6)) {
        if (bytes[offset] === GOAWAY) {
          record.goaway = true;
          goaways.push({
            lastStreamId: bytes.readUInt32BE(offset + 10),
            reason: bytes.subarray(offset + 16, offset + 10 + bytes.readUInt32BE(offset + 6)).toString(),
          });
        }
      }
    });
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

const clientOptions = { ...options, WebSocket: WatchedWebSocket };
const client = lazy ? new MuxClient(url, clientOptions) : await MuxClient.connect(url, clientOptions);
const calls = new Map();

/** Starts a call; its record fills in as replies come and when it ends. */
function start({ kind, method: name, request, requests: list, streamed, timeoutMs, abortAfterMs }) {
  const m = method(name);
  const requests = streamed ? (async function* () { yield* list; })() : list;
  const record = { replies: [], ended: false, outcome: null };
  const callOptions = {};
  if (timeoutMs !== undefined) callOptions.timeoutMs = timeoutMs;
  if (abortAfterMs !== undefined) {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), abortAfterMs);
    callOptions.signal = controller.signal;
  }
  const started = performance.now();
  const finish = (code, message) => {
    record.ended = true;
    record.outcome = { code, message, replies: record.replies, elapsedMs: performance.now() - started };
  };
  record.done = (async () => {
    try {
      if (kind === "unary") record.replies.push(await client.unary(m, request, callOptions));
      else if (kind === "clientStream") record.replies.push(await client.clientStream(m, requests, callOptions));
      else {
        const stream =
          kind === "serverStream" ? client.serverStream(m, request, callOptions) : client.bidi(m, requests, callOptions);
        for await (const reply of stream) record.replies.push(reply);
      }
      finish(0, "");
    } catch (error) {
      if (error instanceof MuxError) finish(error.code, error.details);
      else finish(null, `${error.name}: ${error.message}`);
    }
  })();
  return record;
}

/** Until `predicate` holds; the test on the other end bounds the wait. */
async function until(predicate) {
  while (!predicate()) await sleep(5);
}

async function handle(command) {
  switch (command.op) {
    case "call":
      calls.set(command.name, start(command));
      return { started: command.name };
    case "replies": {
      const record = calls.get(command.name);
      await until(() => record.replies.length >= command.count || record.ended);
      return { replies: record.replies.length, ended: record.ended };
    }
    case "wait": {
      const record = calls.get(command.name);
      await record.done;
      return record.outcome;
    }
    case "goaway":
      await until(() => goaways.length > 0);
      return goaways[0];
    case "sockets":
      return sockets;
    case "block":
      // After the answer has gone: stdout is a pipe, written synchronously on Linux.
      setImmediate(() => {
        const end = performance.now() + 30_000;
        while (!existsSync(command.untilFile) && performance.now() < end);
        for (const call of command.calls) calls.set(call.name, start(call));
      });
      return { blocking: true };
    case "repeat": {
      const before = sockets.length;
      const began = performance.now();
      const results = [];
      while (command.untilOk ? !results.some((r) => r.code === 0) : performance.now() - began < command.forMs) {
        const record = start(command.call);
        await record.done;
        results.push({ code: record.outcome.code, message: record.outcome.message, elapsedMs: record.outcome.elapsedMs });
        await sleep(command.everyMs);
      }
      return { results, sockets: sockets.length - before };
    }
    default:
      throw new Error(`unknown command ${command.op}`);
  }
}

for await (const line of createInterface({ input: process.stdin })) {
  const answer = await handle(JSON.parse(line));
  process.stdout.write(JSON.stringify(answer) + "\n");
}
client.close();

// nice-grpc-web with its WebsocketTransport (grpc-websockets; in Node, isomorphic-ws resolves to `ws`).
// The service definition is nice-grpc's generic one, built from the runtime descriptor: no codegen.
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { ClientError, Metadata, WebsocketTransport, createChannel, createClient } from "nice-grpc-web";

export const description = "nice-grpc-web WebsocketTransport";

const STREAMING_REQUESTS = new Set(["client_streaming", "bidi_streaming"]);
const STREAMING_REPLIES = new Set(["server_streaming", "bidi_streaming"]);

function definitionOf(method) {
  return {
    call: {
      path: `/${method.parent.typeName}/${method.name}`,
      requestStream: STREAMING_REQUESTS.has(method.methodKind),
      responseStream: STREAMING_REPLIES.has(method.methodKind),
      requestSerialize: (message) => toBinary(method.input, message),
      requestDeserialize: (bytes) => fromBinary(method.input, bytes),
      responseSerialize: (message) => toBinary(method.output, message),
      responseDeserialize: (bytes) => fromBinary(method.output, bytes),
      options: {},
    },
  };
}

function plain(metadata) {
  const result = {};
  for (const [key, values] of metadata) {
    const value = values[values.length - 1];
    result[key] = typeof value === "string" ? value : Buffer.from(value).toString("base64");
  }
  return result;
}

async function first(iterable) {
  for await (const item of iterable) return item;
  throw new Error("no request message to send");
}

export function makeClient(baseUrl) {
  const channel = createChannel(baseUrl, WebsocketTransport());

  async function call(method, requests, { headers, signal, onHeaders, onMessage }) {
    const client = createClient(definitionOf(method), channel);
    const seen = { headers: null, trailers: null };
    const options = {
      metadata: Metadata(headers),
      signal,
      onHeader: (h) => {
        seen.headers = plain(h);
        onHeaders();
      },
      onTrailer: (t) => (seen.trailers = plain(t)),
    };
    const requestStream = STREAMING_REQUESTS.has(method.methodKind);
    const request = requestStream ? requests : await first(requests);
    try {
      if (STREAMING_REPLIES.has(method.methodKind)) {
        for await (const reply of client.call(request, options)) onMessage(reply);
      } else {
        onMessage(await client.call(request, options));
      }
      return { code: 0, message: "", ...seen };
    } catch (e) {
      if (e instanceof ClientError) return { code: e.code, message: e.details, ...seen };
      if (signal.aborted) return { code: null, message: "aborted", ...seen };
      return { code: null, message: `${e.name}: ${e.message}`, ...seen };
    }
  }

  return { call };
}

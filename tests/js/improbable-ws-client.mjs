// @improbable-eng/grpc-web's own client with its WebsocketTransport, the original grpc-websockets
// implementation. It expects the browser's global WebSocket; in Node that is the `ws` package's.
// Its MethodDefinition wants google-protobuf style classes: requests get `serializeBinary` and the
// reply type `deserializeBinary`, both from @bufbuild/protobuf and the runtime descriptor.
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import improbable from "@improbable-eng/grpc-web";
import { WebSocket } from "ws";

globalThis.WebSocket ??= WebSocket;
const { grpc } = improbable;

export const description = "@improbable-eng/grpc-web WebsocketTransport";

const STREAMING_REQUESTS = new Set(["client_streaming", "bidi_streaming"]);
const STREAMING_REPLIES = new Set(["server_streaming", "bidi_streaming"]);

function definitionOf(method) {
  return {
    methodName: method.name,
    service: { serviceName: method.parent.typeName },
    requestStream: STREAMING_REQUESTS.has(method.methodKind),
    responseStream: STREAMING_REPLIES.has(method.methodKind),
    requestType: {},
    responseType: { deserializeBinary: (bytes) => ({ message: fromBinary(method.output, bytes) }) },
  };
}

function plain(metadata) {
  const result = {};
  metadata.forEach((key, values) => (result[key] = values[values.length - 1]));
  return result;
}

export function makeClient(baseUrl) {
  const transport = grpc.WebsocketTransport();

  function call(method, requests, { headers, signal, onHeaders, onMessage }) {
    return new Promise((resolve) => {
      const seen = { headers: null, trailers: null };
      const client = grpc.client(definitionOf(method), { host: baseUrl, transport });
      client.onHeaders((h) => {
        seen.headers = plain(h);
        onHeaders();
      });
      client.onMessage((reply) => onMessage(reply.message));
      client.onEnd((code, message, trailers) => {
        seen.trailers = plain(trailers);
        resolve({ code, message, ...seen });
      });
      signal.addEventListener("abort", () => {
        client.close();
        resolve({ code: null, message: "aborted", ...seen });
      });
      client.start(new grpc.Metadata(headers));
      (async () => {
        for await (const request of requests) {
          client.send({ serializeBinary: () => toBinary(method.input, request) });
          if (!STREAMING_REQUESTS.has(method.methodKind)) break;
        }
        client.finishSend();
      })();
    });
  }

  return { call };
}

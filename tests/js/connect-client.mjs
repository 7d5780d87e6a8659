// @connectrpc/connect-node's gRPC-Web transport (binary format, HTTP/1.1) with a client made by
// @connectrpc/connect createClient from the runtime service descriptor.
import { ConnectError, createClient, encodeBinaryHeader } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import { kindOf } from "./probe.mjs";

export const description = "@connectrpc/connect-node createGrpcWebTransport (binary)";

export function makeClient(baseUrl) {
  return clientOver(createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }));
}

// The adapter over any connect-es transport (connect-json-client.mjs and connect-proto-client.mjs
// use it with createConnectTransport).
export function clientOver(transport) {
  async function call(method, input, { headers, binaryHeaders, timeoutMs, onMessage, onHeaders }) {
    const client = createClient(method.parent, transport);
    const rpc = client[method.localName];
    const requestHeaders = new Headers(headers);
    for (const [key, bytes] of Object.entries(binaryHeaders)) {
      requestHeaders.set(key, encodeBinaryHeader(bytes));
    }
    const seen = { headers: null, trailers: null };
    const options = {
      headers: requestHeaders,
      timeoutMs,
      onHeader: (h) => {
        seen.headers = Object.fromEntries(h);
        onHeaders?.();
      },
      onTrailer: (t) => (seen.trailers = Object.fromEntries(t)),
    };
    try {
      if (kindOf(method) === "unary") {
        onMessage(await rpc(input, options));
      } else {
        for await (const reply of rpc(input, options)) onMessage(reply);
      }
      return { code: 0, message: "", ...seen };
    } catch (e) {
      const error = ConnectError.from(e);
      return {
        code: error.code,
        message: error.rawMessage,
        shown: error.message,
        ...seen,
        errorMetadata: Object.fromEntries(error.metadata),
      };
    }
  }

  return { call };
}

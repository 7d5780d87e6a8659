// @connectrpc/connect-node's Connect transport (json, HTTP/1.1): the Connect protocol itself, not
// gRPC-Web, against the gateway's Connect routes.
import { createConnectTransport } from "@connectrpc/connect-node";
import { clientOver } from "./connect-client.mjs";

export const description = "@connectrpc/connect-node createConnectTransport (json)";

export function makeClient(baseUrl) {
  return clientOver(createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false }));
}

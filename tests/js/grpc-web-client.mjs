// The official grpc-web runtime (the one protoc-gen-grpc-web stubs call) in text mode, without
// generated stubs: GrpcWebClientBase + MethodDescriptor, with xhr2 as the XMLHttpRequest that
// Node lacks (as grpc/grpc-web's own interop client does in Node).
import { StringDecoder } from "node:string_decoder";
import XHR2 from "xhr2";
import { fromBinary, kindOf, toBinary } from "./probe.mjs";

/**
 * xhr2 0.2.1 fills responseText only once the response has ended, so grpc-web would see every
 * message of a server stream at the end. Browsers expose the text received so far while LOADING
 * and fire readystatechange for each chunk (XHR standard, "process response body chunk"), which
 * is what grpc-web's streaming reader relies on; this subclass does the same. The grpc-web
 * runtime itself is used unchanged.
 */
class XMLHttpRequest extends XHR2 {
  _onHttpResponseData(response, data) {
    if (this._response !== response || !["", "text"].includes(this.responseType)) {
      return super._onHttpResponseData(response, data);
    }
    if (this.readyState !== XHR2.LOADING) {
      this._chunkDecoder = new StringDecoder("utf8");
      this.responseText = "";
    }
    this._responseParts.push(data);
    this._loadedBytes += data.length;
    this.responseText += this._chunkDecoder.write(data);
    this._setReadyState(XHR2.LOADING);
    this._dispatchProgress("progress");
  }
}

globalThis.XMLHttpRequest = XMLHttpRequest;
const { GrpcWebClientBase, MethodDescriptor } = (await import("grpc-web")).default;

export const description = "grpc-web GrpcWebClientBase (format: text) over xhr2";

// What protoc-gen-js classes offer grpc-web: serializeBinary / deserializeBinary.
function messageClass(schema) {
  return class {
    constructor(value) {
      this.value = value;
    }
    serializeBinary() {
      return toBinary(schema, this.value);
    }
    static deserializeBinary(bytes) {
      return new this(fromBinary(schema, bytes));
    }
  };
}

export function makeClient(baseUrl) {
  // grpc-web refuses messages above 4 MiB by default, as grpcio does: lifted (0 = no limit) so that
  // the limit a large response meets is the proxy's (interop_cases.py large_response_5mib).
  const client = new GrpcWebClientBase({ format: "text", maxReceiveMessageSize: 0 });

  function call(method, input, { headers, binaryHeaders, timeoutMs, onMessage }) {
    const Request = messageClass(method.input);
    const Response = messageClass(method.output);
    const path = `/${method.parent.typeName}/${method.name}`;
    const kind = kindOf(method);
    const descriptor = new MethodDescriptor(
      path,
      kind,
      Request,
      Response,
      (request) => request.serializeBinary(),
      (bytes) => Response.deserializeBinary(bytes),
    );
    // grpc-web sends metadata values as they are: -bin values are the caller's to base64.
    const metadata = { ...headers };
    for (const [key, bytes] of Object.entries(binaryHeaders)) {
      metadata[key] = Buffer.from(bytes).toString("base64");
    }
    if (timeoutMs !== undefined) metadata.deadline = String(Date.now() + timeoutMs);
    const seen = { headers: null, trailers: null };
    const url = baseUrl.replace(/\/$/, "") + path;

    return new Promise((resolve) => {
      let settled = false;
      const finish = (outcome) => {
        if (!settled) {
          settled = true;
          resolve({ ...outcome, ...seen });
        }
      };
      const failed = (err) =>
        finish({ code: err.code, message: err.message, errorMetadata: { ...err.metadata } });
      let stream;
      if (kind === "unary") {
        let status = null;
        let reply = null;
        const done = () => {
          if (status && reply) {
            onMessage(reply.value);
            finish({ code: status.code, message: status.details });
          }
        };
        stream = client.rpcCall(url, new Request(input), metadata, descriptor, (err, response) => {
          if (err) return failed(err);
          reply = response;
          done();
        });
        stream.on("status", (s) => {
          seen.trailers = { ...s.metadata };
          status = s;
          done();
        });
      } else {
        let status = null;
        stream = client.serverStreaming(url, new Request(input), metadata, descriptor);
        stream.on("data", (response) => onMessage(response.value));
        stream.on("status", (s) => {
          seen.trailers = { ...s.metadata };
          status = s;
        });
        stream.on("error", failed);
        stream.on("end", () => finish(status ? { code: status.code, message: status.details } : { code: 0, message: "" }));
      }
      stream.on("metadata", (m) => (seen.headers = { ...m }));
    });
  }

  return { call };
}

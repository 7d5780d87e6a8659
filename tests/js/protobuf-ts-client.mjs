// @protobuf-ts/grpcweb-transport GrpcWebFetchTransport in text mode over Node's fetch: the
// strictest response parser (exact content type, one grpc-status, premature EOF). Its MethodInfo
// only needs I.toBinary and O.fromBinary, here from @bufbuild/protobuf.
import { GrpcStatusCode, GrpcWebFetchTransport } from "@protobuf-ts/grpcweb-transport";
import { RpcError } from "@protobuf-ts/runtime-rpc";
import { fromBinary, kindOf, toBinary } from "./probe.mjs";

export const description = "@protobuf-ts/grpcweb-transport GrpcWebFetchTransport (format: text)";

function methodInfo(method) {
  const kind = kindOf(method);
  return {
    service: { typeName: method.parent.typeName, methods: [], options: {} },
    name: method.name,
    localName: method.localName,
    I: { typeName: method.input.typeName, toBinary: (m) => toBinary(method.input, m) },
    O: { typeName: method.output.typeName, fromBinary: (b) => fromBinary(method.output, b) },
    serverStreaming: kind === "server_streaming",
    clientStreaming: false,
    options: {},
  };
}

export function makeClient(baseUrl) {
  const transport = new GrpcWebFetchTransport({ baseUrl, format: "text" });

  async function call(method, input, { headers, binaryHeaders, timeoutMs, onMessage, onHeaders }) {
    const meta = { ...headers };
    for (const [key, bytes] of Object.entries(binaryHeaders)) {
      meta[key] = Buffer.from(bytes).toString("base64");
    }
    const options = transport.mergeOptions({ meta, timeout: timeoutMs });
    const info = methodInfo(method);
    const seen = { headers: null, trailers: null };
    try {
      let rpc;
      if (info.serverStreaming) {
        rpc = transport.serverStreaming(info, input, options);
        rpc.headers.then((h) => ((seen.headers = { ...h }), onHeaders?.()), () => {});
        for await (const reply of rpc.responses) onMessage(reply);
      } else {
        rpc = transport.unary(info, input, options);
        rpc.headers.then((h) => ((seen.headers = { ...h }), onHeaders?.()), () => {});
        onMessage(await rpc.response);
      }
      const status = await rpc.status;
      seen.trailers = { ...(await rpc.trailers) };
      return { code: GrpcStatusCode[status.code], message: status.detail, ...seen };
    } catch (e) {
      if (!(e instanceof RpcError)) throw e;
      return { code: GrpcStatusCode[e.code], message: e.message, errorMetadata: { ...e.meta }, ...seen };
    }
  }

  return { call };
}

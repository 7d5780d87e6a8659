// gRPC-Web to the gateway on @connectrpc/connect-web, with the user's token on every call and one
// refresh-and-retry when the gateway answers UNAUTHENTICATED (an access token that expired between
// the check and the call, or was revoked by a logout elsewhere).
import { Code, ConnectError, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

export interface GrpcTransportOptions {
  /** The gateway, e.g. location.origin; calls go to <baseUrl>/<package.Service>/<Method>. */
  baseUrl: string;
  /** The token to send (the shell's useAuth().getToken refreshes it before it expires). */
  getAuthToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** A new token after UNAUTHENTICATED (useAuth().refresh); the call is retried once with it. */
  refreshAuthToken?: () => Promise<string | null | undefined>;
  /** Binary protobuf (default) or JSON on the wire. */
  useBinaryFormat?: boolean;
  interceptors?: Interceptor[];
  fetch?: typeof globalThis.fetch;
}

/** A connect Transport for generated clients: `createClient(OrderService, createGrpcTransport(...))`. */
export function createGrpcTransport(options: GrpcTransportOptions): Transport {
  const auth: Interceptor = (next) => async (request) => {
    const token = await options.getAuthToken?.();
    if (token) request.header.set("authorization", `Bearer ${token}`);
    try {
      return await next(request);
    } catch (error) {
      // Only a unary call is sent again: its one message is still at hand, a stream's may not be.
      const refresh = options.refreshAuthToken;
      if (refresh === undefined || request.stream || ConnectError.from(error).code !== Code.Unauthenticated) {
        throw error;
      }
      const fresh = await refresh();
      if (!fresh) throw error;
      request.header.set("authorization", `Bearer ${fresh}`);
      return await next(request);
    }
  };
  return createGrpcWebTransport({
    baseUrl: options.baseUrl,
    useBinaryFormat: options.useBinaryFormat ?? true,
    interceptors: [auth, ...(options.interceptors ?? [])],
    ...(options.fetch !== undefined ? { fetch: options.fetch } : {}),
  });
}

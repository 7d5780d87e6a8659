import { useMemo } from "react";
import type { Transport } from "@connectrpc/connect";
import { usePlatform } from "./hooks.js";
import { createGrpcTransport } from "./transport.js";

export { createGrpcTransport, type GrpcTransportOptions } from "./transport.js";

/** A gRPC-Web transport to the shell's gateway, with the signed-in user's token (and its refresh). */
export function useGrpcTransport(): Transport {
  const { gatewayUrl, auth } = usePlatform();
  return useMemo(
    () =>
      createGrpcTransport({
        baseUrl: gatewayUrl,
        getAuthToken: () => auth.getToken(),
        refreshAuthToken: () => auth.refresh(),
      }),
    [gatewayUrl, auth],
  );
}

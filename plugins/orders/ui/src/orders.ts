// What both modules share: the client, the status machine as the backend enforces it
// (plugins/orders/model.py TRANSITIONS), and how money and errors read to a person.
import { useEffect, useMemo, useRef, useState } from "react";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { useGrpcTransport } from "@upf/shell-sdk/grpc";
import { OrderStatus, Orders } from "./gen/upf/orders/v1/orders_pb";

export type OrdersClient = Client<typeof Orders>;

/** upf.orders.v1.Orders over gRPC-Web through the gateway, with the signed-in user's token. */
export function useOrdersClient(): OrdersClient {
  const transport = useGrpcTransport();
  return useMemo(() => createClient(Orders, transport), [transport]);
}

export const STATUSES = [
  OrderStatus.PENDING,
  OrderStatus.CONFIRMED,
  OrderStatus.SHIPPED,
  OrderStatus.DELIVERED,
  OrderStatus.CANCELLED,
] as const;

export const STATUS_LABEL: Record<OrderStatus, string> = {
  [OrderStatus.UNSPECIFIED]: "Any status",
  [OrderStatus.PENDING]: "Pending",
  [OrderStatus.CONFIRMED]: "Confirmed",
  [OrderStatus.SHIPPED]: "Shipped",
  [OrderStatus.DELIVERED]: "Delivered",
  [OrderStatus.CANCELLED]: "Cancelled",
};

// Where each status may go next; the server checks it again (FAILED_PRECONDITION), this only keeps
// the page from offering moves that would be refused.
export const NEXT: Record<OrderStatus, OrderStatus[]> = {
  [OrderStatus.UNSPECIFIED]: [],
  [OrderStatus.PENDING]: [OrderStatus.CONFIRMED, OrderStatus.CANCELLED],
  [OrderStatus.CONFIRMED]: [OrderStatus.SHIPPED, OrderStatus.CANCELLED],
  [OrderStatus.SHIPPED]: [OrderStatus.DELIVERED],
  [OrderStatus.DELIVERED]: [],
  [OrderStatus.CANCELLED]: [],
};

// The verb on the button that moves an order there.
export const ACTION: Record<OrderStatus, string> = {
  [OrderStatus.UNSPECIFIED]: "",
  [OrderStatus.PENDING]: "",
  [OrderStatus.CONFIRMED]: "Confirm",
  [OrderStatus.SHIPPED]: "Ship",
  [OrderStatus.DELIVERED]: "Mark delivered",
  [OrderStatus.CANCELLED]: "Cancel",
};

export function money(minor: bigint, currency: string): string {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(Number(minor) / 100);
  } catch {
    return `${(Number(minor) / 100).toFixed(2)} ${currency}`;
  }
}

/** "12.50" -> 1250n; null when it is not an amount with at most two decimals. */
export function parseMinor(text: string): bigint | null {
  const match = /^\s*(\d{1,10})(?:[.,](\d{1,2}))?\s*$/.exec(text);
  if (!match) return null;
  return BigInt(match[1]) * 100n + BigInt((match[2] ?? "0").padEnd(2, "0"));
}

/** A failed call in words a person can act on (the server's message names the field or transition). */
export function explain(error: unknown): string {
  const e = ConnectError.from(error);
  switch (e.code) {
    case Code.Unavailable:
      return `The orders service is not reachable right now (${e.rawMessage}). Try again in a moment.`;
    case Code.PermissionDenied:
      return "You are not allowed to do this: ask for the orders:write permission.";
    case Code.Unauthenticated:
      return "Your session has ended: sign in again.";
    case Code.InvalidArgument:
    case Code.FailedPrecondition:
    case Code.NotFound:
    case Code.Aborted:
      return e.rawMessage;
    default:
      return `Something went wrong (${Code[e.code] ?? e.code}): ${e.rawMessage}`;
  }
}

/**
 * Calls `onChange` once the WatchOrders stream is on its way (so a change cannot fall between a
 * first load and the watch), then at every order created or updated, anywhere. The stream is opened
 * again, backing off, when it ends or fails (the plugin restarted, say). `live`: the server answered.
 */
export function useOrderChanges(client: OrdersClient, onChange: () => void): { live: boolean; error: string | null } {
  const [live, setLive] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const latest = useRef(onChange);
  latest.current = onChange;
  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    (async () => {
      let retry = 500;
      while (!signal.aborted) {
        try {
          const onHeader = () => (setLive(true), setError(null), (retry = 500));
          const stream = client.watchOrders({}, { signal, onHeader });
          latest.current();
          for await (const _change of stream) latest.current();
        } catch (e) {
          if (signal.aborted) return;
          setError(explain(e));
        }
        setLive(false);
        await new Promise((resolve) => setTimeout(resolve, retry));
        retry = Math.min(retry * 2, 10_000);
      }
    })();
    return () => controller.abort();
  }, [client]);
  return { live, error };
}

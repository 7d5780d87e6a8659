// The orders page: the list (status filter, keyset paging), a form that creates an order, and the
// status changes the order's current status allows. It shares the page it shows as the `orders`
// state ({items, totalCount}) and emits `order.created`, both declared in the plugin's manifest.
import { useCallback, useEffect, useRef, useState } from "react";
import { useAuth, useEventBus, useSetSharedState } from "@upf/shell-sdk";
import { OrderStatus, type Order } from "./gen/upf/orders/v1/orders_pb";
import { NEXT, STATUSES, STATUS_LABEL, ACTION, explain, money, useOrderChanges, useOrdersClient } from "./orders";
import { CreateOrderForm } from "./CreateOrderForm";
import "./orders.css";

const PAGE_SIZE = 10;

export interface OrdersState {
  items: { id: string; customerId: string; status: string; totalMinor: number; currency: string }[];
  totalCount: number;
}

interface Listing {
  page: number; // the page these orders are (the buttons may already ask for another)
  orders: Order[];
  totalCount: number;
  nextPageToken: string;
}

export default function OrderDashboard() {
  const client = useOrdersClient();
  const { hasPermission } = useAuth();
  const canWrite = hasPermission("orders:write");
  const setShared = useSetSharedState<OrdersState>("orders");
  const bus = useEventBus();

  const [status, setStatus] = useState<OrderStatus>(OrderStatus.UNSPECIFIED);
  // Tokens of the pages before this one (keyset paging has no "page 3": we walk back the way we came).
  const [tokens, setTokens] = useState<string[]>([""]);
  const [listing, setListing] = useState<Listing | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState("");
  const [busy, setBusy] = useState<string | null>(null); // the order whose status is being changed
  const [rowError, setRowError] = useState<{ id: string; message: string } | null>(null);
  const generation = useRef(0);
  const pageToken = tokens[tokens.length - 1];
  const requestedPage = tokens.length;

  const load = useCallback(async () => {
    const mine = ++generation.current; // an older answer arriving late must not replace a newer one
    setLoading(true);
    try {
      const r = await client.listOrders({ status, pageSize: PAGE_SIZE, pageToken });
      if (mine !== generation.current) return;
      setListing({
        page: requestedPage, orders: r.orders, totalCount: Number(r.totalCount), nextPageToken: r.nextPageToken,
      });
      setError(null);
      setShared({
        items: r.orders.map((o) => ({
          id: o.id, customerId: o.customerId, status: OrderStatus[o.status], totalMinor: Number(o.totalMinor),
          currency: o.currency,
        })),
        totalCount: Number(r.totalCount),
      });
    } catch (e) {
      if (mine === generation.current) setError(explain(e));
    } finally {
      if (mine === generation.current) setLoading(false);
    }
  }, [client, status, pageToken, requestedPage, setShared]);

  useEffect(() => void load(), [load]);
  // Orders created or moved elsewhere (another tab, another plugin, a service) show up here too.
  const watch = useOrderChanges(client, () => void load());

  async function move(order: Order, to: OrderStatus) {
    setBusy(order.id);
    setRowError(null);
    try {
      const r = await client.updateOrderStatus({ id: order.id, status: to, expectedVersion: order.version });
      setNotice(`Order ${short(order.id)} is now ${STATUS_LABEL[r.order!.status]}.`);
      await load();
    } catch (e) {
      setRowError({ id: order.id, message: explain(e) });
    } finally {
      setBusy(null);
    }
  }

  function created(order: Order) {
    setNotice(`Order ${short(order.id)} created for ${order.customerId}.`);
    bus.emit("order.created", { orderId: order.id, customerId: order.customerId });
    // Back to the first page of every status, where the new order is.
    setStatus(OrderStatus.UNSPECIFIED);
    setTokens([""]);
    void load();
  }

  const page = listing?.page ?? 1;
  const pages = listing ? Math.max(1, Math.ceil(listing.totalCount / PAGE_SIZE)) : 1;
  return (
    <div className="orders-page">
      <header className="orders-header">
        <h1 id="orders-title">Orders</h1>
        <p className="muted">
          Create orders and move them along: pending → confirmed → shipped → delivered, or cancelled before shipping.
        </p>
      </header>

      <p className="sr-only" role="status" aria-live="polite" data-testid="orders-notice">
        {notice}
      </p>
      {notice && (
        <p className="banner orders-success" data-testid="orders-notice-visible">
          {notice}
        </p>
      )}

      <section className="card orders-list" aria-labelledby="orders-list-title" aria-busy={loading}>
        <div className="orders-toolbar">
          <h2 id="orders-list-title">All orders</h2>
          <label htmlFor="orders-status-filter">Status</label>
          <select
            id="orders-status-filter"
            value={status}
            onChange={(e) => (setStatus(Number(e.target.value) as OrderStatus), setTokens([""]))}
          >
            <option value={OrderStatus.UNSPECIFIED}>{STATUS_LABEL[OrderStatus.UNSPECIFIED]}</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {STATUS_LABEL[s]}
              </option>
            ))}
          </select>
          <span className="muted small orders-live">{watch.live ? "Live" : "Connecting…"}</span>
        </div>

        {error && (
          <div className="banner error" role="alert" data-testid="orders-error">
            <p>Could not load the orders. {error}</p>
            <button type="button" onClick={() => void load()}>
              Try again
            </button>
          </div>
        )}
        {listing === null && loading && !error && (
          <p className="loading" role="status">
            <span className="spinner" aria-hidden="true" /> Loading orders…
          </p>
        )}
        {listing && listing.orders.length === 0 && !error && (
          <p className="orders-empty" data-testid="orders-empty">
            {status === OrderStatus.UNSPECIFIED
              ? "No orders yet. Create the first one with the form below."
              : `No ${STATUS_LABEL[status].toLowerCase()} orders.`}
          </p>
        )}
        {listing && listing.orders.length > 0 && (
          <div className="orders-table-wrap">
            <table className="orders-table" data-testid="orders-table">
              <caption className="sr-only">
                Orders, newest first{status ? `, ${STATUS_LABEL[status].toLowerCase()} only` : ""}; page {page} of{" "}
                {pages}
              </caption>
              <thead>
                <tr>
                  <th scope="col">Order</th>
                  <th scope="col">Customer</th>
                  <th scope="col">Items</th>
                  <th scope="col" className="num">
                    Total
                  </th>
                  <th scope="col">Status</th>
                  <th scope="col">Created</th>
                  <th scope="col">Change status</th>
                </tr>
              </thead>
              <tbody>
                {listing.orders.map((order) => (
                  <tr key={order.id} data-order-id={order.id} data-customer={order.customerId}>
                    <th scope="row">
                      <code title={order.id}>{short(order.id)}</code>
                    </th>
                    <td>{order.customerId}</td>
                    <td>{order.items.map((i) => `${i.quantity} × ${i.name || i.productId}`).join(", ")}</td>
                    <td className="num">{money(order.totalMinor, order.currency)}</td>
                    <td>
                      <span className={`orders-status status-${OrderStatus[order.status].toLowerCase()}`}>
                        {STATUS_LABEL[order.status]}
                      </span>
                    </td>
                    <td>
                      <time dateTime={new Date(Number(order.createdAtMs)).toISOString()}>
                        {new Date(Number(order.createdAtMs)).toLocaleString()}
                      </time>
                    </td>
                    <td>
                      <div className="orders-actions">
                        {NEXT[order.status].length === 0 && <span className="muted small">Final</span>}
                        {NEXT[order.status].map((to) => (
                          <button
                            key={to}
                            type="button"
                            className={to === OrderStatus.CANCELLED ? "orders-danger" : ""}
                            disabled={!canWrite || busy === order.id}
                            aria-label={`${ACTION[to]} order ${short(order.id)}`}
                            onClick={() => void move(order, to)}
                          >
                            {ACTION[to]}
                          </button>
                        ))}
                      </div>
                      {rowError?.id === order.id && (
                        <p className="error small" role="alert">
                          {rowError.message}
                        </p>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        {listing && listing.totalCount > 0 && (
          <nav className="orders-paging" aria-label="Pages of orders">
            <button type="button" disabled={page === 1 || loading} onClick={() => setTokens((t) => t.slice(0, -1))}>
              Previous
            </button>
            <span data-testid="orders-page">
              Page {page} of {pages} · {listing.totalCount} {listing.totalCount === 1 ? "order" : "orders"}
            </span>
            <button
              type="button"
              disabled={!listing.nextPageToken || loading}
              onClick={() => setTokens((t) => [...t, listing.nextPageToken])}
            >
              Next
            </button>
          </nav>
        )}
      </section>

      <section className="card orders-create" aria-labelledby="orders-create-title">
        <h2 id="orders-create-title">New order</h2>
        {canWrite ? (
          <CreateOrderForm client={client} onCreated={created} />
        ) : (
          <p className="muted">You can see orders but not create them: that needs the orders:write permission.</p>
        )}
      </section>
    </div>
  );
}

/** ord_0190a1b2c3d4e5f6 -> ord_…e5f6a7: enough to tell orders apart in a list. */
function short(id: string): string {
  return id.length > 14 ? `${id.slice(0, 4)}…${id.slice(-6)}` : id;
}

// The dashboard widget: how many orders are in each status, kept current by WatchOrders (the
// server stream, over gRPC-Web). Each change re-counts with ListOrders' total_count, so the numbers
// are the server's, never a local tally that could drift.
import { useCallback, useEffect, useRef, useState } from "react";
import { OrderStatus } from "./gen/upf/orders/v1/orders_pb";
import { STATUSES, STATUS_LABEL, explain, useOrderChanges, useOrdersClient } from "./orders";
import "./orders.css";

type Counts = Record<number, number>;

export default function OrderWidget() {
  const client = useOrdersClient();
  const [counts, setCounts] = useState<Counts | null>(null);
  const [error, setError] = useState<string | null>(null);
  const queue = useRef<Promise<void>>(Promise.resolve());
  const mounted = useRef(true);
  useEffect(() => () => void (mounted.current = false), []);

  const recount = useCallback(() => {
    // One count at a time, in order: a burst of changes ends with the newest totals shown.
    queue.current = queue.current.then(async () => {
      try {
        const totals = await Promise.all(
          STATUSES.map((status) => client.listOrders({ status, pageSize: 1 }).then((r) => Number(r.totalCount))),
        );
        if (!mounted.current) return;
        setCounts(Object.fromEntries(STATUSES.map((status, i) => [status, totals[i]])));
        setError(null);
      } catch (e) {
        if (mounted.current) setError(explain(e));
      }
    });
  }, [client]);
  const watch = useOrderChanges(client, recount);

  const total = counts ? Object.values(counts).reduce((a, b) => a + b, 0) : 0;
  const problem = error ?? watch.error;
  return (
    <section className="orders-widget" aria-labelledby="orders-widget-title" data-testid="order-widget">
      <h3 id="orders-widget-title">Orders by status</h3>
      {counts === null && !problem && (
        <p className="loading" role="status">
          <span className="spinner" aria-hidden="true" /> Counting orders…
        </p>
      )}
      {problem && (
        <p className="error small" role="alert">
          {problem}
        </p>
      )}
      {counts && (
        <>
          <dl className="orders-counts">
            {STATUSES.map((status) => (
              <div key={status} className={`orders-count status-${OrderStatus[status].toLowerCase()}`}>
                <dt>{STATUS_LABEL[status]}</dt>
                <dd data-testid={`count-${OrderStatus[status].toLowerCase()}`}>{counts[status]}</dd>
              </div>
            ))}
          </dl>
          <p className="muted small" aria-live="polite">
            <span data-testid="orders-total">{total}</span> {total === 1 ? "order" : "orders"} in all
            {watch.live ? " · updating live" : " · reconnecting…"}
          </p>
        </>
      )}
    </section>
  );
}

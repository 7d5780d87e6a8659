// The form that creates an order: a customer and one or more items (product id, quantity, price).
// Mistakes are said next to the field (aria-invalid + aria-describedby) before anything is sent;
// what the server still refuses is shown above the button.
import { useId, useRef, useState, type FormEvent } from "react";
import type { Order } from "./gen/upf/orders/v1/orders_pb";
import { explain, parseMinor, type OrdersClient } from "./orders";

interface Row {
  key: number;
  productId: string;
  quantity: string;
  price: string;
}

type Problems = Record<string, string>;

const blank = (key: number): Row => ({ key, productId: "", quantity: "1", price: "" });

export function CreateOrderForm({ client, onCreated }: { client: OrdersClient; onCreated: (order: Order) => void }) {
  const id = useId();
  const [customer, setCustomer] = useState("");
  const [rows, setRows] = useState<Row[]>([blank(0)]);
  const [problems, setProblems] = useState<Problems>({});
  const [error, setError] = useState<string | null>(null);
  const [sending, setSending] = useState(false);
  const nextKey = useRef(1);
  // One request id per order being written: a retry after a lost answer does not make a second order.
  const requestId = useRef(crypto.randomUUID());
  const form = useRef<HTMLFormElement>(null);

  function update(key: number, change: Partial<Row>) {
    setRows((all) => all.map((r) => (r.key === key ? { ...r, ...change } : r)));
  }

  function check(): Problems {
    const found: Problems = {};
    if (!customer.trim()) found.customer = "Enter the customer's id.";
    rows.forEach((r, i) => {
      if (!r.productId.trim()) found[`product-${i}`] = "Enter a product id.";
      const q = Number(r.quantity);
      if (!Number.isInteger(q) || q < 1 || q > 1_000_000) found[`quantity-${i}`] = "A whole number from 1.";
      if (parseMinor(r.price) === null) found[`price-${i}`] = "A price such as 12.50.";
    });
    return found;
  }

  async function submit(event: FormEvent) {
    event.preventDefault();
    const found = check();
    setProblems(found);
    setError(null);
    if (Object.keys(found).length > 0) {
      // Focus the first field that needs fixing, so keyboard and screen-reader users land on it.
      const first = Object.keys(found)[0];
      form.current?.querySelector<HTMLElement>(`#${CSS.escape(`${id}-${first}`)}`)?.focus();
      return;
    }
    setSending(true);
    try {
      const r = await client.createOrder({
        requestId: requestId.current,
        customerId: customer.trim(),
        items: rows.map((row) => ({
          productId: row.productId.trim(),
          quantity: Number(row.quantity),
          unitPriceMinor: parseMinor(row.price)!,
        })),
      });
      requestId.current = crypto.randomUUID();
      setCustomer("");
      setRows([blank(nextKey.current++)]);
      onCreated(r.order!);
    } catch (e) {
      setError(explain(e));
    } finally {
      setSending(false);
    }
  }

  const field = (name: string) => ({
    id: `${id}-${name}`,
    "aria-invalid": problems[name] ? true : undefined,
    "aria-describedby": problems[name] ? `${id}-${name}-problem` : undefined,
  });
  const problem = (name: string) =>
    problems[name] && (
      <span id={`${id}-${name}-problem`} className="error small orders-problem">
        {problems[name]}
      </span>
    );

  return (
    <form ref={form} onSubmit={submit} noValidate className="orders-form" data-testid="create-order">
      <div className="orders-field">
        <label htmlFor={`${id}-customer`}>Customer</label>
        <input
          {...field("customer")}
          name="customer"
          autoComplete="off"
          value={customer}
          onChange={(e) => setCustomer(e.target.value)}
        />
        {problem("customer")}
      </div>
      <fieldset className="orders-items">
        <legend>Items</legend>
        {rows.map((row, i) => (
          <div className="orders-item" key={row.key} role="group" aria-label={`Item ${i + 1}`}>
            <div className="orders-field">
              <label htmlFor={`${id}-product-${i}`}>Product id</label>
              <input
                {...field(`product-${i}`)}
                name={`product-${i}`}
                value={row.productId}
                onChange={(e) => update(row.key, { productId: e.target.value })}
              />
              {problem(`product-${i}`)}
            </div>
            <div className="orders-field narrow">
              <label htmlFor={`${id}-quantity-${i}`}>Quantity</label>
              <input
                {...field(`quantity-${i}`)}
                name={`quantity-${i}`}
                type="number"
                min={1}
                step={1}
                inputMode="numeric"
                value={row.quantity}
                onChange={(e) => update(row.key, { quantity: e.target.value })}
              />
              {problem(`quantity-${i}`)}
            </div>
            <div className="orders-field narrow">
              <label htmlFor={`${id}-price-${i}`}>Unit price (EUR)</label>
              <input
                {...field(`price-${i}`)}
                name={`price-${i}`}
                inputMode="decimal"
                placeholder="0.00"
                value={row.price}
                onChange={(e) => update(row.key, { price: e.target.value })}
              />
              {problem(`price-${i}`)}
            </div>
            {rows.length > 1 && (
              <button
                type="button"
                className="ghost orders-remove"
                aria-label={`Remove item ${i + 1}`}
                onClick={() => setRows((all) => all.filter((r) => r.key !== row.key))}
              >
                Remove
              </button>
            )}
          </div>
        ))}
        <button type="button" onClick={() => setRows((all) => [...all, blank(nextKey.current++)])}>
          Add an item
        </button>
      </fieldset>
      {error && (
        <p className="banner error" role="alert" data-testid="create-error">
          {error}
        </p>
      )}
      <button type="submit" className="primary" disabled={sending}>
        {sending ? "Creating…" : "Create order"}
      </button>
    </form>
  );
}

// One plugin's module in the shell, isolated: loaded at run time, behind its own error boundary.
// A plugin that is down, fails to load or throws shows a fallback with a retry; nothing else breaks.
import { Component, Suspense, lazy, useEffect, useMemo, useRef, useState, type ErrorInfo, type ReactNode } from "react";
import { PluginContext } from "@upf/shell-sdk";
import { availability, type PluginEntry } from "./api";
import { loadComponent } from "./loader";
import { navigate } from "./router";

interface Props {
  plugin: PluginEntry;
  module: string;
  kind: "page" | "widget";
  title: string;
}

export function PluginSlot({ plugin, module, kind, title }: Props) {
  const state = availability(plugin.status);
  const [attempt, setAttempt] = useState(0);
  // Coming back from down loads the remote afresh: the plugin may have been redeployed.
  const wasDown = useRef(state === "down");
  useEffect(() => {
    if (state !== "down" && wasDown.current) setAttempt((a) => a + 1);
    wasDown.current = state === "down";
  }, [state]);
  const scope = useMemo(() => ({ id: plugin.id, name: plugin.name ?? plugin.id }), [plugin.id, plugin.name]);
  const entry = plugin.ui.remoteEntry;
  const Remote = useMemo(
    () => lazy(() => loadComponent(plugin, module).then((component) => ({ default: component }))),
    // eslint-disable-next-line react-hooks/exhaustive-deps -- a new entry or attempt is a new load
    [plugin.id, entry, module, attempt],
  );
  const name = plugin.name ?? plugin.id;
  if (state === "down") {
    return (
      <Fallback kind={kind} title={`${title} is unavailable`} testid="plugin-unavailable"
        detail={`${name} is not running${plugin.status.reason ? ` (${plugin.status.reason})` : ""}. This page comes back by itself when it is.`} />
    );
  }
  return (
    <PluginContext.Provider value={scope}>
      <Boundary key={attempt} kind={kind} title={title} name={name} onRetry={() => setAttempt((a) => a + 1)}>
        <Suspense fallback={<Loading kind={kind} title={title} />}>
          <div className={`plugin-${kind}`} data-plugin-root={plugin.id}>
            <Remote />
          </div>
        </Suspense>
      </Boundary>
    </PluginContext.Provider>
  );
}

function Loading({ kind, title }: { kind: string; title: string }) {
  return (
    <div className={`loading ${kind}`} role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" /> Loading {title}…
    </div>
  );
}

function Fallback(props: { kind: string; title: string; detail: string; onRetry?: () => void; testid: string }) {
  const Heading = props.kind === "page" ? "h1" : "h3";
  return (
    <section className={`fallback ${props.kind}`} data-testid={props.testid}>
      <Heading tabIndex={-1}>{props.title}</Heading>
      <p>{props.detail}</p>
      {props.onRetry ? (
        <button type="button" onClick={props.onRetry}>Try again</button>
      ) : (
        props.kind === "page" && (
          <p><a href="/" onClick={(e) => (e.preventDefault(), navigate("/"))}>Back to the dashboard</a></p>
        )
      )}
    </section>
  );
}

interface BoundaryProps {
  kind: string;
  title: string;
  name: string;
  onRetry: () => void;
  children: ReactNode;
}

class Boundary extends Component<BoundaryProps, { error: Error | null }> {
  override state: { error: Error | null } = { error: null };

  static getDerivedStateFromError(error: Error) {
    return { error };
  }

  override componentDidCatch(error: Error, info: ErrorInfo) {
    console.error(`plugin ${this.props.name} failed`, error, info.componentStack);
  }

  override render() {
    const { error } = this.state;
    if (error === null) return this.props.children;
    return (
      <Fallback kind={this.props.kind} title={`${this.props.title} could not be shown`} testid="plugin-error"
        detail={`${error.message}. The rest of UPF keeps working.`} onRetry={this.props.onRetry} />
    );
  }
}

// The shell: auth gate, layout, navigation from the manifests, the dashboard and plugin pages.
import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { MuxClient, PlatformContext, type Platform, type ThemeMode } from "@upf/shell-sdk";
import { AuthSession } from "./auth";
import { EventBus, StateBridge, type Refusal } from "./bridge";
import { applyMode, initialMode } from "./theme";
import { LoginPage } from "./LoginPage";
import { ShellLayout } from "./ShellLayout";

const BASE = ""; // same origin as the gateway that served the shell

export interface Toast extends Refusal {
  id: number;
}

export function App() {
  const [toasts, setToasts] = useState<Toast[]>([]);
  const nextToast = useRef(0);
  const report = useCallback((refusal: Refusal) => {
    const id = ++nextToast.current;
    setToasts((list) => [...list.slice(-3), { ...refusal, id }]);
    setTimeout(() => setToasts((list) => list.filter((t) => t.id !== id)), 8_000);
  }, []);
  const session = useMemo(() => new AuthSession(BASE), []);
  const bridge = useMemo(() => new StateBridge(report), [report]);
  const bus = useMemo(() => new EventBus(report), [report]);
  const user = useSyncExternalStore(session.subscribe, () => session.user);
  const [restoring, setRestoring] = useState(true);
  const [mode, setMode] = useState<ThemeMode>(initialMode);
  const tokens = useMemo(() => applyMode(mode), [mode]);

  useEffect(() => {
    void session.restore().finally(() => setRestoring(false));
  }, [session]);

  const mux = useRef<MuxClient | null>(null);
  const platform = useMemo<Platform>(
    () => ({
      gatewayUrl: location.origin,
      auth: session,
      state: bridge,
      events: bus,
      theme: { mode, setMode, tokens },
      mux: () => (mux.current ??= new MuxClient(`${location.origin.replace(/^http/, "ws")}/api/mux`)),
    }),
    [session, bridge, bus, mode, tokens],
  );

  let body;
  if (restoring) body = <p className="boot" role="status">Loading UPF…</p>;
  else if (user === null) body = <LoginPage session={session} />;
  else body = <ShellLayout user={user} bridge={bridge} bus={bus} />;
  return (
    <PlatformContext.Provider value={platform}>
      {body}
      <div className="toasts" role="status" aria-live="polite">
        {toasts.map((toast) => (
          <div className="toast" key={toast.id} data-testid="refusal">
            <div>
              <strong>Refused</strong>
              <p>{toast.message}</p>
            </div>
            <button type="button" className="link close" aria-label="Dismiss"
              onClick={() => setToasts((l) => l.filter((t) => t.id !== toast.id))}>×</button>
          </div>
        ))}
      </div>
    </PlatformContext.Provider>
  );
}

// React hooks for plugin UIs. They read the Platform the shell provides; the SDK is a federation
// shared singleton, so a remote's hooks and the shell's contexts are the same objects.
import { useCallback, useContext, useEffect, useRef, useState, useSyncExternalStore } from "react";
import type { Method, RequestMetadata } from "./mux.js";
import {
  PlatformContext,
  PluginContext,
  BridgeRefusal,
  type AuthApi,
  type EventHandler,
  type Platform,
  type PluginScope,
  type ThemeApi,
} from "./platform.js";

/** The Platform; throws outside the shell (a remote rendered on its own). */
export function usePlatform(): Platform {
  const platform = useContext(PlatformContext);
  if (platform === null) throw new Error("@upf/shell-sdk: no UPF shell around this component (PlatformContext)");
  return platform;
}

/** The plugin this component belongs to, as the shell loaded it. */
export function usePlugin(): PluginScope {
  const plugin = useContext(PluginContext);
  if (plugin === null) throw new Error("@upf/shell-sdk: this component is not inside a plugin's scope");
  return plugin;
}

/** The value of a shared state key (undefined until someone writes it); re-renders on change. */
export function useSharedState<T>(key: string): T | undefined {
  const { state } = usePlatform();
  const subscribe = useCallback((listener: () => void) => state.subscribe(key, listener), [state, key]);
  return useSyncExternalStore(subscribe, () => state.get(key) as T | undefined);
}

export type SetSharedState<T> = (value: T | ((previous: T | undefined) => T)) => void;

/**
 * A setter for a shared state key, writing as the enclosing plugin. It throws BridgeRefusal when the
 * plugin is not one of the key's declared writers (manifest ui.sharedState[].writers). `pluginId`
 * is accepted for the seed's form (useSetSharedState('orders', 'orders-plugin')): it must be the
 * enclosing plugin's id, or the write is refused.
 */
export function useSetSharedState<T>(key: string, pluginId?: string): SetSharedState<T> {
  const { state } = usePlatform();
  const plugin = usePlugin();
  return useCallback(
    (value) => {
      if (pluginId !== undefined && pluginId !== plugin.id) {
        throw new BridgeRefusal(`plugin "${plugin.id}" cannot write as "${pluginId}"`, plugin.id, key);
      }
      const next =
        typeof value === "function" ? (value as (p: T | undefined) => T)(state.get(key) as T | undefined) : value;
      state.set(plugin.id, key, next);
    },
    [state, plugin.id, key, pluginId],
  );
}

export interface PluginEventBus {
  /** Emits as the enclosing plugin; BridgeRefusal unless the event is in its manifest's ui.events. */
  emit(event: string, payload?: unknown): void;
  on<T = unknown>(event: string, handler: EventHandler<T>): () => void;
}

export function useEventBus(): PluginEventBus {
  const { events } = usePlatform();
  const plugin = usePlugin();
  return {
    emit: (event, payload) => events.emit(plugin.id, event, payload),
    on: (event, handler) => events.on(event, handler),
  };
}

/** Calls `handler` for each `event` while the component is mounted (the latest handler is used). */
export function useEvent<T = unknown>(event: string, handler: EventHandler<T>): void {
  const { events } = usePlatform();
  const latest = useRef(handler);
  latest.current = handler;
  useEffect(() => events.on<T>(event, (payload, meta) => latest.current(payload, meta)), [events, event]);
}

/** The signed-in user, their permissions, a fresh token and logout. */
export function useAuth(): AuthApi {
  return usePlatform().auth;
}

/** The theme: mode (light/dark), its setter and the CSS tokens. */
export function useTheme(): ThemeApi {
  return usePlatform().theme;
}

export interface UseWebSocketOptions<I, O> {
  /** The server-streaming method to call over the shell's upf-mux.v1 socket. */
  method: Method<I, O>;
  request: I;
  onMessage(message: O): void;
  onError?(error: unknown): void;
  /** Default true; false closes the stream. */
  enabled?: boolean;
  metadata?: RequestMetadata;
}

export type WebSocketStatus = "connecting" | "open" | "closed" | "error";

/**
 * A server stream over the shell's one WebSocket (upf-mux.v1), with the user's token, open while
 * the component is mounted and `enabled`; the returned status says where it stands.
 */
export function useWebSocket<I, O>(options: UseWebSocketOptions<I, O>): WebSocketStatus {
  const platform = usePlatform();
  const [status, setStatus] = useState<WebSocketStatus>("connecting");
  const latest = useRef(options);
  latest.current = options;
  const enabled = options.enabled ?? true;
  useEffect(() => {
    if (!enabled) {
      setStatus("closed");
      return;
    }
    const controller = new AbortController();
    setStatus("connecting");
    void (async () => {
      try {
        const token = await platform.auth.getToken();
        const metadata: RequestMetadata = { ...latest.current.metadata };
        if (token !== null) metadata["authorization"] = `Bearer ${token}`;
        const stream = platform.mux().serverStream(latest.current.method, latest.current.request, {
          metadata,
          signal: controller.signal,
          onHeader: () => setStatus("open"),
        });
        for await (const message of stream) {
          setStatus("open");
          latest.current.onMessage(message);
        }
        setStatus("closed");
      } catch (error) {
        if (controller.signal.aborted) return;
        setStatus("error");
        latest.current.onError?.(error);
      }
    })();
    return () => controller.abort();
  }, [platform, enabled, options.method]);
  return status;
}

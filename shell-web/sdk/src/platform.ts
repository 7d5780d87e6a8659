// What the shell gives every plugin UI: shared state, an event bus, the signed-in user, the theme and
// the gateway's transports. The shell builds one Platform and provides it with <PlatformContext>;
// each plugin's subtree is wrapped in <PluginContext> with the plugin's id, which is how the bridge
// knows who writes or emits (a plugin never names itself).
import { createContext } from "react";
import type { MuxClient } from "./mux.js";

export interface UpfUser {
  /** The token's subject. */
  id: string;
  username: string;
  name?: string;
  email?: string;
  roles: string[];
  permissions: string[];
}

export interface AuthApi {
  user: UpfUser | null;
  /** A valid access token (refreshed first when it is about to expire), or null when signed out. */
  getToken(): Promise<string | null>;
  /** Refresh now (after an UNAUTHENTICATED answer); the new token, or null when the session ended. */
  refresh(): Promise<string | null>;
  hasPermission(permission: string): boolean;
  logout(): Promise<void>;
}

/** A write or an emit the shell refused: the plugin is not a declared writer or emitter. */
export class BridgeRefusal extends Error {
  constructor(
    message: string,
    readonly pluginId: string,
    readonly key: string,
  ) {
    super(message);
    this.name = "BridgeRefusal";
  }
}

export interface SharedStateBridge {
  get(key: string): unknown;
  /** Calls `listener` after each change of `key`; returns the unsubscribe function. */
  subscribe(key: string, listener: () => void): () => void;
  /** Throws BridgeRefusal unless `pluginId` is a declared writer of `key`. */
  set(pluginId: string, key: string, value: unknown): void;
}

export type EventHandler<T = unknown> = (payload: T, meta: { event: string; source: string }) => void;

export interface EventBusApi {
  /** Throws BridgeRefusal unless `pluginId` declared `event` in its manifest's ui.events. */
  emit(pluginId: string, event: string, payload?: unknown): void;
  on<T = unknown>(event: string, handler: EventHandler<T>): () => void;
}

export type ThemeMode = "light" | "dark";

export interface ThemeApi {
  mode: ThemeMode;
  setMode(mode: ThemeMode): void;
  /** CSS custom properties (e.g. --upf-color-primary) set on the document: use var(--upf-...) in styles. */
  tokens: Readonly<Record<string, string>>;
}

export interface Platform {
  /** The gateway's origin, e.g. http://127.0.0.1:8080 (the page's own origin in the shell). */
  gatewayUrl: string;
  auth: AuthApi;
  state: SharedStateBridge;
  events: EventBusApi;
  theme: ThemeApi;
  /** The shell's one upf-mux.v1 client (opened on first use). */
  mux(): MuxClient;
}

export const PlatformContext = createContext<Platform | null>(null);
PlatformContext.displayName = "UpfPlatform";

export interface PluginScope {
  id: string;
  name: string;
}

export const PluginContext = createContext<PluginScope | null>(null);
PluginContext.displayName = "UpfPlugin";

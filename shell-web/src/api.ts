// The shapes of /api/manifests (gateway/upstream/registry_routes.py) as the shell reads them.
export interface NavigationEntry {
  path: string;
  title: string;
  icon?: string;
  module?: string;
  order?: number;
  requiredPermission?: string;
}

export interface SharedStateDecl {
  name: string;
  readonly?: boolean;
  writers?: string[];
  schema?: unknown;
}

export interface UiModule {
  name: string;
  type?: "page" | "widget" | "hook";
  path?: string;
}

export interface PluginStatus {
  health: "HEALTHY" | "DEGRADED" | "UNHEALTHY" | "UNKNOWN" | string;
  phase: string;
  instances: number;
  ready: number;
  reason?: string;
}

export interface PluginEntry {
  id: string;
  version: string;
  name?: string;
  description?: string;
  ui: {
    remoteEntry: string;
    remoteName?: string;
    exposedModules: string[];
    modules?: Array<UiModule | string>;
    navigation?: NavigationEntry[];
    sharedState?: SharedStateDecl[];
    events?: Array<{ name: string; description?: string }>;
  };
  status: PluginStatus;
}

export interface ManifestsDocument {
  plugins: PluginEntry[];
  stale: boolean;
}

export type Availability = "ok" | "degraded" | "down";

/** DEGRADED still works (marked); anything not serving is down (greyed out, not clickable). */
export function availability(status: PluginStatus): Availability {
  if (status.ready > 0 && status.health === "HEALTHY") return "ok";
  if (status.ready > 0 && status.health === "DEGRADED") return "degraded";
  return "down";
}

export function remoteName(plugin: PluginEntry): string {
  return plugin.ui.remoteName ?? plugin.id.replace(/-/g, "_");
}

export function modulesOf(plugin: PluginEntry): UiModule[] {
  return (plugin.ui.modules ?? plugin.ui.exposedModules).map((m) => (typeof m === "string" ? { name: m } : m));
}

/** The gateway's error body ({"code", "message"}) as a sentence, or the HTTP status. */
export async function errorText(response: Response): Promise<string> {
  try {
    const body = (await response.json()) as { message?: string };
    if (body.message) return body.message;
  } catch {
    /* not JSON */
  }
  return `${response.status} ${response.statusText}`.trim();
}

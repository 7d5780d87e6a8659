// The plugin loader: registers each plugin's remote with the federation runtime as the manifests
// name it, and loads exposed modules with a deadline and bounded retries. A failed remote is
// registered again (force) before the next attempt, so a plugin that comes back is loaded afresh.
import { loadRemote, registerRemotes } from "@module-federation/enhanced/runtime";
import type { ComponentType } from "react";
import { remoteName, type PluginEntry } from "./api";

const TIMEOUT_MS = 10_000;
const RETRY_DELAYS_MS = [300, 1_000];

const registered = new Map<string, string>(); // remote name -> entry URL

export function registerPlugins(plugins: PluginEntry[]): void {
  const fresh = plugins.filter((p) => registered.get(remoteName(p)) !== p.ui.remoteEntry);
  if (fresh.length === 0) return;
  for (const plugin of fresh) {
    const force = registered.has(remoteName(plugin)); // the entry moved (a new version)
    registerRemotes([{ name: remoteName(plugin), entry: plugin.ui.remoteEntry }], { force });
    registered.set(remoteName(plugin), plugin.ui.remoteEntry);
  }
}

export class PluginLoadError extends Error {
  constructor(
    message: string,
    readonly pluginId: string,
  ) {
    super(message);
    this.name = "PluginLoadError";
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms / 1000} s`)), ms);
    promise.then(
      (value) => (clearTimeout(timer), resolve(value)),
      (error) => (clearTimeout(timer), reject(error)),
    );
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export interface LoadTiming {
  plugin: string;
  module: string;
  ms: number;
  attempts: number;
}

/** Load timings, for the shell's own measurements (window.__upfLoads in the browser tests). */
export const loadTimings: LoadTiming[] = [];
(globalThis as { __upfLoads?: LoadTiming[] }).__upfLoads = loadTimings;

/** The component an exposed module exports (its default export, or its only function export). */
export async function loadComponent(plugin: PluginEntry, module: string): Promise<ComponentType> {
  const name = remoteName(plugin);
  const id = `${name}/${module.replace(/^\.\//, "")}`;
  // Children render (and start loading) before their parent's effects run: register here too.
  registerPlugins([plugin]);
  const started = performance.now(); // the whole load, retries included
  let lastError: unknown;
  for (let attempt = 0; attempt <= RETRY_DELAYS_MS.length; attempt++) {
    if (attempt > 0) {
      await sleep(RETRY_DELAYS_MS[attempt - 1]!);
      registerRemotes([{ name, entry: plugin.ui.remoteEntry }], { force: true });
    }
    try {
      const exports = await withTimeout(loadRemote<Record<string, unknown>>(id), TIMEOUT_MS, `loading ${id}`);
      const component = pick(exports);
      if (component === null) throw new Error(`${module} of ${plugin.id} exports no React component`);
      loadTimings.push({ plugin: plugin.id, module, ms: performance.now() - started, attempts: attempt + 1 });
      return component;
    } catch (error) {
      lastError = error;
    }
  }
  const reason = lastError instanceof Error ? lastError.message : String(lastError);
  throw new PluginLoadError(`${plugin.name ?? plugin.id} could not be loaded: ${reason}`, plugin.id);
}

function pick(exports: Record<string, unknown> | null | undefined): ComponentType | null {
  if (exports == null) return null;
  if (typeof exports === "function") return exports as ComponentType;
  if (typeof exports.default === "function") return exports.default as ComponentType;
  const functions = Object.values(exports).filter((v) => typeof v === "function");
  return functions.length === 1 ? (functions[0] as ComponentType) : null;
}

// The SDK's gRPC-Web part and the protobuf runtime are shared with plugins but never used by the
// shell itself. Referencing them here (without calling) is what makes the federation runtime
// provide them: they stay lazy chunks, fetched only when a plugin that imports them loads.
export const provideGrpc = (): Promise<unknown[]> =>
  Promise.all([
    import("@upf/shell-sdk/grpc"),
    import("@bufbuild/protobuf"),
    import("@bufbuild/protobuf/codegenv2"),
    import("@connectrpc/connect"),
  ]);
(globalThis as { __upfProvideGrpc?: typeof provideGrpc }).__upfProvideGrpc = provideGrpc;

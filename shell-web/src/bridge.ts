// The state bridge and the event bus: the manifests say who may write which shared key and who may
// emit which event; everything else is refused here, whatever a plugin's code does.
import { BridgeRefusal, type EventBusApi, type EventHandler, type SharedStateBridge } from "@upf/shell-sdk";
import type { PluginEntry } from "./api";

export interface Refusal {
  pluginId: string;
  key: string;
  message: string;
}

type Report = (refusal: Refusal) => void;

interface KeyRule {
  owner: string;
  writers: Set<string>;
}

export class StateBridge implements SharedStateBridge {
  private values = new Map<string, unknown>();
  private listeners = new Map<string, Set<() => void>>();
  private rules = new Map<string, KeyRule>();

  constructor(private readonly report: Report) {}

  /** The rules from the manifests. The first plugin (by id) to declare a key owns it. */
  declare(plugins: PluginEntry[]): void {
    const rules = new Map<string, KeyRule>();
    for (const plugin of [...plugins].sort((a, b) => a.id.localeCompare(b.id))) {
      for (const state of plugin.ui.sharedState ?? []) {
        const known = rules.get(state.name);
        if (known !== undefined) {
          console.warn(`shared state "${state.name}": declared by ${known.owner} and ${plugin.id}; ${known.owner} owns it`);
          continue;
        }
        const writers = state.readonly ? [] : (state.writers ?? []);
        rules.set(state.name, { owner: plugin.id, writers: new Set([plugin.id, ...writers]) });
      }
    }
    this.rules = rules;
  }

  get(key: string): unknown {
    return this.values.get(key);
  }

  subscribe(key: string, listener: () => void): () => void {
    let set = this.listeners.get(key);
    if (set === undefined) this.listeners.set(key, (set = new Set()));
    set.add(listener);
    return () => set!.delete(listener);
  }

  set(pluginId: string, key: string, value: unknown): void {
    const rule = this.rules.get(key);
    let message: string | null = null;
    if (rule === undefined) {
      message = `"${pluginId}" cannot change shared state "${key}": no plugin declares it`;
    } else if (!rule.writers.has(pluginId)) {
      message = `"${pluginId}" cannot change shared state "${key}": it belongs to ${rule.owner} (writers: ${[...rule.writers].join(", ")})`;
    }
    if (message !== null) {
      this.report({ pluginId, key, message });
      throw new BridgeRefusal(message, pluginId, key);
    }
    this.values.set(key, value);
    for (const listener of this.listeners.get(key) ?? []) listener();
  }
}

export class EventBus implements EventBusApi {
  private handlers = new Map<string, Set<EventHandler>>();
  private emitters = new Map<string, Set<string>>(); // plugin id -> the events it declared

  constructor(private readonly report: Report) {}

  declare(plugins: PluginEntry[]): void {
    this.emitters = new Map(plugins.map((p) => [p.id, new Set((p.ui.events ?? []).map((e) => e.name))]));
  }

  emit(pluginId: string, event: string, payload?: unknown): void {
    if (!this.emitters.get(pluginId)?.has(event)) {
      const message = `"${pluginId}" cannot emit "${event}": it is not in its manifest's ui.events`;
      this.report({ pluginId, key: event, message });
      throw new BridgeRefusal(message, pluginId, event);
    }
    for (const handler of this.handlers.get(event) ?? []) {
      try {
        handler(payload, { event, source: pluginId });
      } catch (error) {
        console.error(`handler of ${event} failed`, error); // one listener's bug is not the emitter's
      }
    }
  }

  on<T>(event: string, handler: EventHandler<T>): () => void {
    let set = this.handlers.get(event);
    if (set === undefined) this.handlers.set(event, (set = new Set()));
    set.add(handler as EventHandler);
    return () => set!.delete(handler as EventHandler);
  }
}

import { useAuth } from "@upf/shell-sdk";
import { availability, modulesOf, type PluginEntry } from "./api";
import { PluginSlot } from "./PluginSlot";
import { navigate } from "./router";

const byName = (a: PluginEntry, b: PluginEntry) => (a.name ?? a.id).localeCompare(b.name ?? b.id);

const STATUS_TEXT = { ok: "Running", degraded: "Degraded", down: "Unavailable" } as const;

export function Dashboard({ plugins }: { plugins: PluginEntry[] | null }) {
  const { user } = useAuth();
  const widgets = (plugins ?? []).flatMap((plugin) =>
    modulesOf(plugin)
      .filter((m) => m.type === "widget")
      .map((m) => ({ plugin, module: m.name })),
  );
  return (
    <section className="dashboard" aria-labelledby="dashboard-title">
      <h1 id="dashboard-title" tabIndex={-1}>Dashboard</h1>
      <p className="muted">Welcome{user ? `, ${user.name ?? user.username}` : ""}.</p>
      {plugins === null ? (
        <div className="grid" aria-busy="true">
          <div className="card skeleton" role="status">Loading plugins…</div>
        </div>
      ) : plugins.length === 0 ? (
        <div className="empty card" data-testid="no-plugins">
          <h2>No plugins yet</h2>
          <p>When a plugin with a UI registers, it appears here and in the navigation, without a reload.</p>
        </div>
      ) : (
        <>
          <h2>Plugins</h2>
          <ul className="grid plugins" aria-label="Plugins">
            {[...plugins].sort(byName).map((plugin) => {
              const state = availability(plugin.status);
              const first = plugin.ui.navigation?.find((n) => !n.path.includes(":"));
              return (
                <li key={plugin.id} className={`card plugin-card ${state}`} data-plugin-card={plugin.id}>
                  <div className="card-head">
                    <h3>{plugin.name ?? plugin.id}</h3>
                    <span className={`pill ${state}`}>{STATUS_TEXT[state]}</span>
                  </div>
                  <p className="muted small">{plugin.id} · v{plugin.version}</p>
                  {plugin.description && <p>{plugin.description}</p>}
                  {first && state !== "down" && (
                    <a href={first.path} onClick={(e) => (e.preventDefault(), navigate(first.path))}>
                      Open {first.title}
                    </a>
                  )}
                </li>
              );
            })}
          </ul>
          {widgets.length > 0 && (
            <>
              <h2>Widgets</h2>
              <div className="grid widgets">
                {widgets.map(({ plugin, module }) => (
                  <div className="card widget" key={`${plugin.id}${module}`}>
                    <PluginSlot plugin={plugin} module={module} kind="widget" title={plugin.name ?? plugin.id} />
                  </div>
                ))}
              </div>
            </>
          )}
        </>
      )}
    </section>
  );
}

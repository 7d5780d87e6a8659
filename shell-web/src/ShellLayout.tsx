// The signed-in shell: header, navigation built from the manifests, and the routed page.
import { useEffect, useMemo, useRef } from "react";
import { useAuth, useTheme, type UpfUser } from "@upf/shell-sdk";
import { availability, type NavigationEntry, type PluginEntry } from "./api";
import type { EventBus, StateBridge } from "./bridge";
import { Icon } from "./icons";
import { registerPlugins } from "./loader";
import { useManifests } from "./manifests";
import { PluginSlot } from "./PluginSlot";
import { Dashboard } from "./Dashboard";
import { match, navigate, usePath } from "./router";

export interface Route {
  plugin: PluginEntry;
  entry: NavigationEntry;
  children: Route[];
}

/** Navigation routes, sorted (order, then title), nested by path prefix, without param routes in the menu. */
function buildNavigation(plugins: PluginEntry[], allowed: (p?: string) => boolean): Route[] {
  const flat = plugins
    .flatMap((plugin) => (plugin.ui.navigation ?? []).map((entry) => ({ plugin, entry, children: [] as Route[] })))
    .filter((r) => !r.entry.path.includes(":") && allowed(r.entry.requiredPermission))
    .sort((a, b) => (a.entry.order ?? 0) - (b.entry.order ?? 0) || a.entry.title.localeCompare(b.entry.title));
  const roots: Route[] = [];
  for (const route of flat) {
    const parent = flat.find((p) => p !== route && route.entry.path.startsWith(`${p.entry.path.replace(/\/$/, "")}/`));
    (parent ? parent.children : roots).push(route);
  }
  return roots;
}

export function ShellLayout({ user, bridge, bus }: { user: UpfUser; bridge: StateBridge; bus: EventBus }) {
  const auth = useAuth();
  const theme = useTheme();
  const path = usePath();
  const { document: manifests, error } = useManifests("", auth.getToken);
  const plugins = useMemo(() => manifests?.plugins ?? [], [manifests]);

  // The manifests' rules apply before any plugin renders (and could write or emit): declared
  // during this render, not in an effect, which would run after the plugins' own.
  useMemo(() => {
    bridge.declare(plugins);
    bus.declare(plugins);
    registerPlugins(plugins);
  }, [plugins, bridge, bus]);

  const navigation = useMemo(
    () => buildNavigation(plugins, (p) => p === undefined || auth.hasPermission(p)),
    [plugins, auth],
  );

  // Which plugin page the path shows (param routes included; permissions checked again here).
  const routed = useMemo(() => {
    for (const plugin of plugins) {
      for (const entry of plugin.ui.navigation ?? []) {
        const params = match(entry.path, path);
        if (params !== null) return { plugin, entry, params };
      }
    }
    return null;
  }, [plugins, path]);

  const main = useRef<HTMLElement>(null);
  const firstRender = useRef(true);
  useEffect(() => {
    // Keyboard and screen-reader users land on the new page's content, not back at the top.
    // The main region, not its heading: a plugin's page may still be loading.
    if (firstRender.current) firstRender.current = false;
    else main.current?.focus();
  }, [path]);

  let page;
  if (path === "/" || path === "") {
    page = <Dashboard plugins={manifests === null ? null : plugins} />;
  } else if (manifests === null) {
    page = <p role="status" className="muted">Loading plugins…</p>;
  } else if (routed === null) {
    page = (
      <section className="empty">
        <h1 tabIndex={-1}>Page not found</h1>
        <p>No plugin serves <code>{path}</code>. It may have been removed, or the address is mistyped.</p>
        <p><a href="/" onClick={(e) => (e.preventDefault(), navigate("/"))}>Back to the dashboard</a></p>
      </section>
    );
  } else if (routed.entry.requiredPermission && !auth.hasPermission(routed.entry.requiredPermission)) {
    page = (
      <section className="empty">
        <h1 tabIndex={-1}>Not allowed</h1>
        <p>This page needs the permission <code>{routed.entry.requiredPermission}</code>, which your account does not have.</p>
      </section>
    );
  } else {
    page = (
      <PluginSlot key={`${routed.plugin.id}${routed.entry.path}`} plugin={routed.plugin}
        module={routed.entry.module ?? routed.plugin.ui.exposedModules[0] ?? "./App"} kind="page"
        title={routed.entry.title} />
    );
  }

  useEffect(() => {
    document.title = routed ? `${routed.entry.title} · UPF` : path === "/" ? "Dashboard · UPF" : "UPF";
  }, [routed, path]);

  return (
    <div className="shell">
      <a className="skip" href="#content">Skip to content</a>
      <header className="topbar">
        <a className="brand" href="/" onClick={(e) => (e.preventDefault(), navigate("/"))}>
          <span className="logo" aria-hidden="true">◆</span> UPF
        </a>
        <div className="topbar-right">
          <button type="button" className="icon-button" aria-pressed={theme.mode === "dark"}
            onClick={() => theme.setMode(theme.mode === "dark" ? "light" : "dark")} title="Dark theme">
            <Icon name={theme.mode === "dark" ? "sun" : "moon"} />
            <span className="sr-only">Dark theme</span>
          </button>
          <span className="user" data-testid="user">{user.name ?? user.username}</span>
          <button type="button" className="ghost" onClick={() => void auth.logout().then(() => navigate("/", true))}>
            <Icon name="logout" /> Sign out
          </button>
        </div>
      </header>
      <nav className="sidebar" aria-label="Main">
        <ul>
          <li>
            <NavLink path="/" title="Dashboard" icon="home" current={path === "/"} />
          </li>
        </ul>
        <h2 className="nav-heading" id="nav-plugins">Plugins</h2>
        {manifests === null ? (
          <p className="muted nav-empty" role="status">Loading…</p>
        ) : navigation.length === 0 ? (
          <p className="muted nav-empty">No plugin pages yet.</p>
        ) : (
          <ul aria-labelledby="nav-plugins">
            {navigation.map((route) => (
              <NavItem key={`${route.plugin.id}${route.entry.path}`} route={route} path={path} />
            ))}
          </ul>
        )}
      </nav>
      <main id="content" ref={main} className="content" tabIndex={-1}>
        {error !== null && <p className="banner error" role="alert">{error}</p>}
        {manifests?.stale && (
          <p className="banner warning" role="status">
            The plugin registry cannot be reached: showing the last known plugins.
          </p>
        )}
        {page}
      </main>
    </div>
  );
}

function NavItem({ route, path }: { route: Route; path: string }) {
  const state = availability(route.plugin.status);
  return (
    <li>
      <NavLink path={route.entry.path} title={route.entry.title} icon={route.entry.icon} state={state}
        plugin={route.plugin} current={match(route.entry.path, path) !== null} />
      {route.children.length > 0 && (
        <ul>
          {route.children.map((child) => (
            <NavItem key={`${child.plugin.id}${child.entry.path}`} route={child} path={path} />
          ))}
        </ul>
      )}
    </li>
  );
}

function NavLink(props: {
  path: string;
  title: string;
  icon?: string | undefined;
  current: boolean;
  state?: "ok" | "degraded" | "down";
  plugin?: PluginEntry;
}) {
  const state = props.state ?? "ok";
  const reason = props.plugin?.status.reason;
  if (state === "down") {
    // Not a link while its plugin is down: nothing to open. Still readable, and says why.
    return (
      <span className="nav-link down" role="link" aria-disabled="true" data-plugin={props.plugin?.id}
        data-status={state} title={`Unavailable${reason ? `: ${reason}` : ""}`}>
        <Icon name={props.icon} /> <span>{props.title}</span>
        <span className="pill down">Unavailable</span>
      </span>
    );
  }
  return (
    <a className={`nav-link ${state}`} href={props.path} data-plugin={props.plugin?.id} data-status={state}
      aria-current={props.current ? "page" : undefined}
      onClick={(e) => {
        if (e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
        e.preventDefault();
        navigate(props.path);
      }}>
      <Icon name={props.icon} /> <span>{props.title}</span>
      {state === "degraded" && (
        <span className="pill degraded" title={reason ?? "Degraded"}>Degraded</span>
      )}
    </a>
  );
}

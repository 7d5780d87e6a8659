// Design tokens, as CSS custom properties on <html>: plugins style with var(--upf-...) and follow
// light/dark without knowing which is on.
import type { ThemeMode } from "@upf/shell-sdk";

export const TOKENS: Record<ThemeMode, Record<string, string>> = {
  light: {
    "--upf-color-bg": "#f6f7f9",
    "--upf-color-surface": "#ffffff",
    "--upf-color-surface-2": "#eef0f4",
    "--upf-color-text": "#1b1f24",
    "--upf-color-muted": "#57606a",
    "--upf-color-border": "#d0d7de",
    "--upf-color-primary": "#2358c4",
    "--upf-color-on-primary": "#ffffff",
    "--upf-color-danger": "#b42318",
    "--upf-color-warning": "#8a5a00",
    "--upf-color-warning-bg": "#fff4d6",
    "--upf-color-success": "#1a7f37",
    "--upf-color-focus": "#2358c4",
  },
  dark: {
    "--upf-color-bg": "#0f1216",
    "--upf-color-surface": "#171b21",
    "--upf-color-surface-2": "#20262e",
    "--upf-color-text": "#e6e9ee",
    "--upf-color-muted": "#a3acb9",
    "--upf-color-border": "#343c47",
    "--upf-color-primary": "#7aa7ff",
    "--upf-color-on-primary": "#0b1220",
    "--upf-color-danger": "#ff8a80",
    "--upf-color-warning": "#f5c453",
    "--upf-color-warning-bg": "#3a2f12",
    "--upf-color-success": "#6fd68a",
    "--upf-color-focus": "#7aa7ff",
  },
};

export const SHARED_TOKENS: Record<string, string> = {
  "--upf-radius": "8px",
  "--upf-space-1": "4px",
  "--upf-space-2": "8px",
  "--upf-space-3": "16px",
  "--upf-space-4": "24px",
  "--upf-font": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
  "--upf-font-mono": "ui-monospace, SFMono-Regular, Menlo, monospace",
};

const KEY = "upf.theme";

export function initialMode(): ThemeMode {
  const kept = localStorage.getItem(KEY);
  if (kept === "light" || kept === "dark") return kept;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

export function applyMode(mode: ThemeMode): Record<string, string> {
  const tokens = { ...SHARED_TOKENS, ...TOKENS[mode] };
  const root = document.documentElement;
  for (const [name, value] of Object.entries(tokens)) root.style.setProperty(name, value);
  root.dataset.theme = mode;
  root.style.colorScheme = mode;
  localStorage.setItem(KEY, mode);
  return tokens;
}

// The plugins as the gateway sees them, kept current by polling /api/manifests with If-None-Match:
// an unchanged list costs a 304 and no parse. Status changes show within one interval.
import { useEffect, useState } from "react";
import type { ManifestsDocument } from "./api";
import { errorText } from "./api";

const INTERVAL_MS = 1_000;

export interface ManifestsState {
  document: ManifestsDocument | null;
  error: string | null;
}

/** `getToken`: sent along, so the list still loads where /api/manifests is not a public path. */
export function useManifests(base: string, getToken: () => Promise<string | null>): ManifestsState {
  const [state, setState] = useState<ManifestsState>({ document: null, error: null });
  useEffect(() => {
    let etag: string | null = null;
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const poll = async () => {
      try {
        const headers: Record<string, string> = {};
        if (etag) headers["if-none-match"] = etag;
        const token = await getToken();
        if (token) headers["authorization"] = `Bearer ${token}`;
        const response = await fetch(`${base}/api/manifests`, { headers, cache: "no-store" });
        if (response.status === 304) {
          setState((s) => (s.error === null ? s : { ...s, error: null }));
        } else if (response.ok) {
          etag = response.headers.get("etag");
          const document = (await response.json()) as ManifestsDocument;
          if (!stopped) setState({ document, error: null });
        } else if (!stopped) {
          const error = await errorText(response);
          setState((s) => ({ ...s, error: `The plugin list could not be read: ${error}` }));
        }
      } catch {
        if (!stopped) setState((s) => ({ ...s, error: "The gateway cannot be reached; retrying." }));
      }
      if (!stopped) timer = setTimeout(poll, document.hidden ? INTERVAL_MS * 5 : INTERVAL_MS);
    };
    void poll();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [base, getToken]);
  return state;
}

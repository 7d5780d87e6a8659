// The auth context: login against POST /api/auth/login, a refresh before the access token expires
// (POST /api/auth/refresh), logout (POST /api/auth/logout), and the user from GET /api/auth/me.
// Tokens live in sessionStorage: a reload keeps the session, a closed tab ends it.
import type { AuthApi, UpfUser } from "@upf/shell-sdk";
import { errorText } from "./api";

interface Tokens {
  accessToken: string;
  refreshToken: string;
  expiresAt: number; // ms since epoch
}

const STORAGE_KEY = "upf.session";
const REFRESH_MARGIN_MS = 30_000; // refresh this long before expiry, or at 80% of a short life

function permits(granted: string[], required: string): boolean {
  // The platform's rule (common/auth/permissions.py): equal, "*", or "area:*" covering "area:<action>"
  // (not "area:" itself: an empty action is none of the area's).
  return granted.some((p) => p === required || p === "*" || (p.endsWith(":*") && required.length > p.length - 1 && required.startsWith(p.slice(0, -1))));
}

export class AuthSession implements AuthApi {
  user: UpfUser | null = null;
  private tokens: Tokens | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private refreshing: Promise<string | null> | null = null;
  private listeners = new Set<() => void>();

  constructor(private readonly base: string) {}

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  private changed(): void {
    for (const listener of this.listeners) listener();
  }

  /** Picks up a session kept in sessionStorage; false when there is none (or it cannot be refreshed). */
  async restore(): Promise<boolean> {
    const kept = sessionStorage.getItem(STORAGE_KEY);
    if (kept === null) return false;
    try {
      this.tokens = JSON.parse(kept) as Tokens;
    } catch {
      sessionStorage.removeItem(STORAGE_KEY);
      return false;
    }
    // The kept token may be close to expiry: refresh first when it is, and keep refreshing after.
    const left = this.tokens.expiresAt - Date.now();
    if (left < REFRESH_MARGIN_MS) {
      if ((await this.refresh()) === null) return false;
    } else {
      this.timer = setTimeout(() => void this.refresh(), left - REFRESH_MARGIN_MS);
    }
    return this.loadUser();
  }

  async login(username: string, password: string): Promise<void> {
    const response = await fetch(`${this.base}/api/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username, password }),
    });
    if (response.status === 401) throw new Error("Wrong username or password.");
    if (!response.ok) throw new Error(`Sign-in failed: ${await errorText(response)}`);
    this.store(await response.json());
    if (!(await this.loadUser())) throw new Error("Signed in, but the gateway did not say who you are.");
  }

  private store(answer: { accessToken: string; refreshToken: string; expiresIn: number }): void {
    this.tokens = {
      accessToken: answer.accessToken,
      refreshToken: answer.refreshToken,
      expiresAt: Date.now() + answer.expiresIn * 1000,
    };
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(this.tokens));
    clearTimeout(this.timer);
    const life = answer.expiresIn * 1000;
    const delay = life > 2 * REFRESH_MARGIN_MS ? life - REFRESH_MARGIN_MS : life * 0.8;
    this.timer = setTimeout(() => void this.refresh(), Math.max(delay, 1_000));
  }

  private async loadUser(): Promise<boolean> {
    const token = this.tokens?.accessToken;
    if (!token) return false;
    const response = await fetch(`${this.base}/api/auth/me`, { headers: { authorization: `Bearer ${token}` } });
    if (!response.ok) {
      this.clear();
      return false;
    }
    const me = (await response.json()) as {
      userId: string;
      username?: string;
      name?: string;
      email?: string;
      roles?: string[];
      permissions?: string[];
    };
    this.user = {
      id: me.userId,
      username: me.username ?? me.userId,
      roles: me.roles ?? [],
      permissions: me.permissions ?? [],
      ...(me.name ? { name: me.name } : {}),
      ...(me.email ? { email: me.email } : {}),
    };
    this.changed();
    return true;
  }

  getToken = async (): Promise<string | null> => {
    if (this.tokens === null) return null;
    if (this.tokens.expiresAt - Date.now() < 5_000) return this.refresh();
    return this.tokens.accessToken;
  };

  refresh = (): Promise<string | null> => {
    // One refresh at a time: a refresh token is spent by its use.
    this.refreshing ??= this.doRefresh().finally(() => (this.refreshing = null));
    return this.refreshing;
  };

  private async doRefresh(): Promise<string | null> {
    const refreshToken = this.tokens?.refreshToken;
    if (!refreshToken) return null;
    try {
      const response = await fetch(`${this.base}/api/auth/refresh`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ refreshToken }),
      });
      // Signed out (or in again) while this refresh was under way: its answer belongs to no session.
      if (this.tokens?.refreshToken !== refreshToken) return null;
      if (!response.ok) {
        this.clear();
        return null;
      }
      const answer = await response.json();
      if (this.tokens?.refreshToken !== refreshToken) return null;
      this.store(answer);
      return this.tokens!.accessToken;
    } catch {
      return this.tokens?.accessToken ?? null; // the gateway is unreachable: keep the session, try later
    }
  }

  hasPermission = (permission: string): boolean => permits(this.user?.permissions ?? [], permission);

  logout = async (): Promise<void> => {
    // A refresh under way would spend the refresh token and bring a new one: let it land, so that the
    // session ended at the auth plugin is the current one.
    await this.refreshing;
    const tokens = this.tokens;
    this.clear();
    if (tokens !== null) {
      await fetch(`${this.base}/api/auth/logout`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${tokens.accessToken}` },
        body: JSON.stringify({ refreshToken: tokens.refreshToken }),
      }).catch(() => undefined);
    }
  };

  private clear(): void {
    clearTimeout(this.timer);
    this.tokens = null;
    this.user = null;
    sessionStorage.removeItem(STORAGE_KEY);
    this.changed();
  }
}

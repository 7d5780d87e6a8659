import { useEffect, useRef, useState, type FormEvent } from "react";
import type { AuthSession } from "./auth";

export function LoginPage({ session }: { session: AuthSession }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const first = useRef<HTMLInputElement>(null);
  useEffect(() => {
    document.title = "Sign in · UPF";
    first.current?.focus();
  }, []);

  async function submit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    setBusy(true);
    setError(null);
    try {
      await session.login(String(form.get("username") ?? ""), String(form.get("password") ?? ""));
    } catch (e) {
      setError(e instanceof Error ? e.message : "Sign-in failed.");
      setBusy(false);
    }
  }

  return (
    <main className="login">
      <form className="card login-card" onSubmit={submit} aria-labelledby="login-title" noValidate>
        <h1 id="login-title">Sign in to UPF</h1>
        <p className="muted">Your plugins, in one place.</p>
        <label htmlFor="username">Username</label>
        <input id="username" name="username" autoComplete="username" required ref={first} />
        <label htmlFor="password">Password</label>
        <input id="password" name="password" type="password" autoComplete="current-password" required />
        {error !== null && (
          <p className="error" role="alert" id="login-error">
            {error}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy} aria-busy={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </main>
  );
}

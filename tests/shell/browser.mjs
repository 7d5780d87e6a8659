// Chromium (Debian's /usr/bin/chromium) driven by playwright-core, one JSON command per line on
// stdin, one JSON answer per line on stdout (tests/support/node.py NodeSession). No browser is
// downloaded: playwright-core and axe-core come from shell-web/node_modules.
//
//   node browser.mjs BASE_URL ARTIFACTS_DIR
import { createRequire } from "node:module";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.resolve(here, "../../shell-web/package.json"));
const { chromium } = require("playwright-core");
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const [base, artifacts] = process.argv.slice(2);
const profile = mkdtempSync(path.join(tmpdir(), "upf-chromium-"));
// A fresh profile (--user-data-dir, which playwright takes as launchPersistentContext's first argument).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1280, height: 800 },
  baseURL: base,
});
const page = context.pages()[0] ?? (await context.newPage());
const logs = [];
const scripts = new Set();
const requests = {}; // "METHOD /path" -> count
page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
page.on("request", (r) => {
  const key = `${r.method()} ${new URL(r.url()).pathname}`;
  requests[key] = (requests[key] ?? 0) + 1;
});
page.on("response", (r) => {
  if (r.request().resourceType() === "script") scripts.add(new URL(r.url()).pathname);
});

const ops = {
  goto: async ({ path: p }) => (await page.goto(p, { waitUntil: "domcontentloaded" }), null),
  fill: async ({ selector, value }) => (await page.fill(selector, value), null),
  click: async ({ selector }) => (await page.click(selector), null),
  select: async ({ selector, value }) => (await page.selectOption(selector, value), null),
  press: async ({ key }) => (await page.keyboard.press(key), null),
  wait: async ({ selector, state = "visible", ms = 10_000 }) =>
    (await page.waitForSelector(selector, { state, timeout: ms }), null),
  text: async ({ selector }) => page.textContent(selector),
  count: async ({ selector }) => page.locator(selector).count(),
  attr: async ({ selector, name }) => page.getAttribute(selector, name),
  focused: async () => page.evaluate(() => document.activeElement?.textContent?.trim() ?? null),
  eval: async ({ expr }) => page.evaluate(expr),
  screenshot: async ({ name }) => {
    const file = path.join(artifacts, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    return file;
  },
  // The dashboard's first render after pressing Sign in: its heading and its plugin cards shown.
  loginTimed: async ({ username, password }) => {
    await page.fill("#username", username);
    await page.fill("#password", password);
    const started = Date.now();
    await page.click("button[type=submit]");
    await page.waitForSelector("#dashboard-title", { timeout: 10_000 });
    await page.waitForSelector("[data-plugin-card]", { timeout: 10_000 });
    return Date.now() - started;
  },
  axe: async () => {
    if (!(await page.evaluate(() => "axe" in window))) await page.addScriptTag({ content: axeSource });
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
    return result.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5),
    }));
  },
  scripts: async () => [...scripts],
  requests: async () => requests,
  logs: async () => logs.splice(0),
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const { op, ...args } = JSON.parse(line);
  let answer;
  try {
    answer = { ok: true, value: await ops[op](args) };
  } catch (error) {
    answer = { ok: false, error: String(error?.message ?? error), logs: logs.slice(-20) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
await context.close();
rmSync(profile, { recursive: true, force: true });

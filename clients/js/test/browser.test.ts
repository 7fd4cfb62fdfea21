// One browser test: headless Chromium (Debian's, driven by playwright-core)
// opens a tiny React page using the hooks, and the page updates when webhooks
// are posted to the real server.

import { build } from "esbuild";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { API_TOKEN, membership, org, Server, tick, user } from "./harness.js";

const here = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

let server: Server;
let page: HttpServer;
let browser: Browser;

beforeAll(async () => {
  server = await Server.start();
  await server.post("user.created", user("user_b1", "Brenda"));
  await server.post("organization.created", org("org_b", "Browsers"));
  await server.post("organizationMembership.created", membership("orgmem_b1", "org_b", "user_b1", "org:admin"));
  const bundle = await build({
    entryPoints: [join(here, "browser", "app.tsx")],
    bundle: true,
    format: "esm",
    write: false,
    jsx: "automatic",
    define: { "process.env.NODE_ENV": '"production"' },
    logLevel: "silent",
  });
  const js = bundle.outputFiles[0].text;
  const html = '<!doctype html><meta charset="utf-8"><div id="root"></div><script type="module" src="/app.js"></script>';
  page = createServer((req, res) => {
    const isJs = req.url === "/app.js";
    res.writeHead(200, { "content-type": isJs ? "text/javascript" : "text/html" });
    res.end(isJs ? js : html);
  });
  await new Promise<void>((r) => page.listen(0, "127.0.0.1", r));
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

afterAll(async () => {
  await browser?.close();
  await new Promise((r) => page?.close(r));
  await server?.dispose();
});

it("a React page with useUser and useMemberships updates when webhooks arrive", async () => {
  const tab = await browser.newPage();
  const errors: string[] = [];
  tab.on("pageerror", (e) => errors.push(String(e)));
  const port = (page.address() as AddressInfo).port;
  const hash = new URLSearchParams({ server: server.url, token: API_TOKEN, user: "user_b1", org: "org_b" });
  await tab.goto(`http://127.0.0.1:${port}/#${hash}`);
  await tab.waitForSelector('li[data-id="orgmem_b1"]');
  expect(await tab.textContent("#user")).toBe("Brenda Tester");

  await server.post("user.created", user("user_b2", "Bob"));
  await server.post("organizationMembership.created", membership("orgmem_b2", "org_b", "user_b2"));
  await tab.waitForSelector('li[data-id="orgmem_b2"]');
  expect(await tab.textContent('li[data-id="orgmem_b2"]')).toBe("user_b2 (org:member)");

  await server.post("user.updated", { ...user("user_b1", "Brenda-Renamed"), updated_at: tick() });
  await tab.waitForFunction(() => document.getElementById("user")?.textContent === "Brenda-Renamed Tester");

  await server.post("organizationMembership.deleted", { ...membership("orgmem_b1", "org_b", "user_b1"), updated_at: tick() });
  await tab.waitForSelector('li[data-id="orgmem_b1"]', { state: "detached" });
  expect(errors).toEqual([]);
});

// Starts the real presenced binary for the JavaScript SDK suite and hands out its base URL and
// tokens. One place decides how the server is started, so a TLS-enabled server (a later item)
// plugs in here: `startServer({ args, scheme })` returns whatever base URL it listens on.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const TENANT = "00000000-0000-4000-8000-000000000001";
export const BINARY = process.env.PRESENCED_BIN ?? join(REPO_ROOT, "target", "debug", "presenced");

/**
 * Start `presenced serve` on a free loopback port with a fresh data directory.
 * Resolves to { baseUrl, dataDir, token(options), stop() }; `baseUrl` has no version segment.
 */
export async function startServer({ args = [] } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), "presenced-js-"));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PRESENCED_")));
  const child = spawn(
    BINARY,
    ["serve", "--listen", "127.0.0.1:0", "--data-dir", join(dataDir, "data"), ...args],
    { env: { ...env, PRESENCED_LOG_LEVEL: "warn" }, stdio: ["ignore", "pipe", "inherit"] },
  );
  const baseUrl = await new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error("presenced did not print its listening line in 30 s")), 30_000);
    child.on("exit", (code) => reject(new Error(`presenced exited with ${code} before listening`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const at = line.indexOf("listening on ");
      if (at >= 0) {
        clearTimeout(timer);
        resolvePromise(line.slice(at + "listening on ".length).trim());
      }
    });
  });
  return {
    baseUrl,
    binary: BINARY,
    dataDir: join(dataDir, "data"),
    /** `presenced token`: delegated with `user`, else an application token. */
    token({ user, scopes = [], roles = [], app } = {}) {
      const argv = ["token", "--data-dir", join(dataDir, "data"), "--tenant", TENANT];
      if (user) argv.push("--user", user);
      if (app) argv.push("--app", app);
      for (const s of scopes) argv.push("--scope", s);
      for (const r of roles) argv.push("--role", r);
      return execFileSync(BINARY, argv, { env }).toString().trim();
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

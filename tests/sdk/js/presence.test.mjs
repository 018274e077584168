// Work location, JSON batching, $select and rich-notification validation tokens through the
// official JavaScript SDKs, against the real server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BatchRequestContent, BatchResponseContent } from "@microsoft/microsoft-graph-client";
import { BatchRequestContent as KiotaBatch } from "@microsoft/msgraph-sdk-core";
import { createODataErrorFromDiscriminatorValue } from "@microsoft/msgraph-sdk/models/oDataErrors/index.js";
import jwt from "jsonwebtoken";
import jwksClient from "jwks-rsa";
import { startServer, TENANT } from "./server.mjs";
import { graphClient, kiotaClient } from "./clients.mjs";

let server;
before(async () => {
  server = await startServer({ args: ["--webhook-allow-http", "--webhook-allow-network", "127.0.0.0/8"] });
});
after(async () => {
  await server?.stop();
});

const delegated = (user, scopes = ["Presence.Read.All", "Presence.ReadWrite"]) => server.token({ user, scopes });

test("work location through the Kiota SDK and the graph-client, v1.0 and beta", async () => {
  const me = randomUUID();
  const token = delegated(me);
  const { client } = kiotaClient(server.baseUrl, token);
  const mine = client.users.byUserId(me).presence;

  let read = await mine.get();
  assert.equal(read.workLocation.workLocationType, "unspecified");
  assert.equal(read.workLocation.source, "none");
  assert.equal(read.workLocation.placeId ?? null, null);
  await mine.setAutomaticLocation.post({ workLocationType: "office", placeId: "bldg-4" });
  await mine.setManualLocation.post({ workLocationType: "remote" });
  read = await mine.get();
  assert.equal(read.workLocation.workLocationType, "remote");
  assert.equal(read.workLocation.source, "manual");
  await mine.clearAutomaticLocation.post();
  await mine.clearLocation.post();
  read = await mine.get();
  assert.equal(read.workLocation.source, "none");

  // The graph-client, through /me and /communications/presences on beta.
  const gc = graphClient(server.baseUrl, token);
  await gc.api("/me/presence/setManualLocation").version("beta").post({ workLocationType: "timeOff", placeId: "home" });
  const viaComms = await gc.api(`/communications/presences/${me}`).version("beta").get();
  assert.deepEqual(viaComms.workLocation, { workLocationType: "timeOff", source: "manual", placeId: "home" });
  assert.match(viaComms["@odata.context"], /\/beta\/\$metadata#communications\/presences\/\$entity$/);
  await gc.api(`/communications/presences/${me}/clearLocation`).post();

  // Graph allows these to delegated callers only.
  const app = graphClient(server.baseUrl, server.token({ roles: ["Presence.ReadWrite.All"] }));
  await assert.rejects(
    app.api(`/users/${me}/presence/setManualLocation`).post({ workLocationType: "office" }),
    (e) => e.statusCode === 403 && e.code === "Forbidden",
  );
});

test("$select on a read and on getPresencesByUserId", async () => {
  const user = randomUUID();
  const token = delegated(randomUUID());
  const gc = graphClient(server.baseUrl, token);
  const writer = graphClient(server.baseUrl, server.token({ roles: ["Presence.ReadWrite.All"] }));
  await writer.api(`/users/${user}/presence/setPresence`).post({ sessionId: "s", availability: "Busy", activity: "InACall" });
  const read = await gc.api(`/users/${user}/presence`).select(["availability", "activity"]).get();
  assert.deepEqual(Object.keys(read).sort(), ["@odata.context", "activity", "availability", "id"]);
  assert.match(read["@odata.context"], /presence\(availability,activity\)\/\$entity$/);
  const bulk = await gc.api("/communications/getPresencesByUserId").select("activity").post({ ids: [user] });
  assert.deepEqual(bulk.value, [{ id: user, activity: "InACall" }]);

  const { client } = kiotaClient(server.baseUrl, token);
  const kiota = await client.users.byUserId(user).presence.get({ queryParameters: { select: ["workLocation"] } });
  assert.equal(kiota.id, user);
  assert.equal(kiota.availability, undefined);
  assert.equal(kiota.workLocation.source, "none");
  await assert.rejects(gc.api(`/users/${user}/presence`).select("mood").get(), (e) => e.statusCode === 400);
});

test("a batch of mixed presence calls through the graph-client's batch helper", async () => {
  const me = randomUUID();
  const other = randomUUID();
  const token = delegated(me);
  const gc = graphClient(server.baseUrl, token);
  const url = (path) => `${server.baseUrl}/v1.0${path}`;
  const json = (body) => ({ method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
  const batch = new BatchRequestContent([
    { id: "set", request: new Request(url(`/users/${me}/presence/setPresence`), json({ sessionId: "b", availability: "DoNotDisturb", activity: "Presenting" })) },
    // The graph-client allows parallel, one shared or serial dependencies: serial here.
    { id: "where", request: new Request(url("/me/presence/setManualLocation"), json({ workLocationType: "office", placeId: "hq" })), dependsOn: ["set"] },
    { id: "read", request: new Request(url("/me/presence?$select=availability,workLocation")), dependsOn: ["where"] },
    { id: "bulk", request: new Request(url("/communications/getPresencesByUserId"), json({ ids: [other] })), dependsOn: ["read"] },
    { id: "gone", request: new Request(url("/me/presence/clearPresence"), json({ sessionId: "never-set" })), dependsOn: ["bulk"] },
  ]);
  const answer = new BatchResponseContent(await gc.api("/$batch").post(await batch.getContent()));
  const status = (id) => answer.getResponseById(id).status;
  assert.deepEqual(["set", "where", "read", "bulk", "gone"].map(status), [200, 200, 200, 200, 404]);
  const read = await answer.getResponseById("read").json();
  assert.equal(read.availability, "DoNotDisturb");
  assert.deepEqual(read.workLocation, { workLocationType: "office", source: "manual", placeId: "hq" });
  assert.equal((await answer.getResponseById("bulk").json()).value[0].id, other);
  assert.equal((await answer.getResponseById("gone").json()).error.code, "NotFound");
});

test("a batch of mixed presence calls through the Kiota SDK's batch helper", async () => {
  const me = randomUUID();
  const { client, adapter } = kiotaClient(server.baseUrl, delegated(me), "beta");
  const presence = client.users.byUserId(me).presence;
  const batch = new KiotaBatch(adapter, { XXX: createODataErrorFromDiscriminatorValue });
  // Kiota sends these bodies base64-encoded, without a content type.
  batch.addBatchRequest(presence.setPresence.toPostRequestInformation({ sessionId: "k", availability: "Away", activity: "Away" }), "set");
  batch.addBatchRequest(presence.setAutomaticLocation.toPostRequestInformation({ workLocationType: "remote" }), "where");
  batch.addBatchRequest(presence.toGetRequestInformation(), "read");
  batch.addBatchRequest(client.users.byUserId(me).presence.clearPresence.toPostRequestInformation({ sessionId: "nope" }), "gone");
  const answer = await batch.postAsync();
  const statuses = Object.fromEntries(await answer.getResponsesStatusCodes());
  assert.deepEqual(statuses, { set: 200, where: 200, read: 200, gone: 404 });
  // The Kiota helper reads a step's body only as base64 text; Graph answers JSON bodies as JSON,
  // so the effect is checked by a read.
  const read = await presence.get();
  assert.equal(read.availability, "Away");
  assert.equal(read.workLocation.workLocationType, "remote");
  assert.equal(read.workLocation.source, "automatic");
});

test("a rich notification's validation token verifies against the published keys", async () => {
  // The receiver's certificate (Graph: self-signed is fine).
  const dir = mkdtempSync(join(tmpdir(), "presenced-cert-"));
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=js-receiver", "-days", "1",
    "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"), "-outform", "DER"], { stdio: "ignore" });
  const certificate = readFileSync(join(dir, "cert.pem")).toString("base64");
  rmSync(dir, { recursive: true, force: true });

  const posts = [];
  const receiver = createServer((req, res) => {
    const token = new URL(req.url, "http://x").searchParams.get("validationToken");
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      if (token) {
        res.writeHead(200, { "Content-Type": "text/plain" }).end(token);
      } else {
        posts.push(JSON.parse(body));
        res.writeHead(202).end();
      }
    });
  });
  await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
  try {
    const user = randomUUID();
    const appId = "js-receiver-app";
    const subscriber = graphClient(server.baseUrl, server.token({ user: randomUUID(), scopes: ["Presence.Read.All"], app: appId }));
    const created = await subscriber.api("/subscriptions").post({
      changeType: "updated",
      notificationUrl: `http://127.0.0.1:${receiver.address().port}/notify`,
      resource: `/communications/presences?$filter=id in ('${user}')`,
      expirationDateTime: new Date(Date.now() + 50 * 60_000).toISOString(),
      includeResourceData: true,
      encryptionCertificate: certificate,
      encryptionCertificateId: "js-cert",
      clientState: "js-secret",
    });
    assert.equal(created.applicationId, appId);
    const writer = graphClient(server.baseUrl, server.token({ roles: ["Presence.ReadWrite.All"] }));
    await writer.api(`/users/${user}/presence/setPresence`).post({ sessionId: "s", availability: "Busy", activity: "InACall" });
    for (let i = 0; i < 300 && posts.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(posts.length, 1, "one notification POST");
    const [post] = posts;
    assert.ok(post.value[0].encryptedContent, "a rich notification");
    assert.equal(post.validationTokens.length, 1);

    // Microsoft's sample validation, with the keys fetched from presenced.
    const keys = jwksClient({ jwksUri: `${server.baseUrl}/${TENANT}/discovery/keys` });
    const getKey = (header, callback) => keys.getSigningKey(header.kid, (err, key) => callback(err, key?.getPublicKey()));
    const verify = (options) =>
      new Promise((resolve, reject) =>
        jwt.verify(post.validationTokens[0], getKey, { algorithms: ["RS256"], ...options }, (e, p) => (e ? reject(e) : resolve(p))),
      );
    const claims = await verify({ audience: appId, issuer: `https://sts.windows.net/${TENANT}/` });
    assert.equal(claims.appid, "0bf30f3b-4a52-48df-9a82-234910c4a086");
    await assert.rejects(verify({ audience: "someone-else" }), /audience invalid/);
  } finally {
    receiver.close();
  }
});

test("over HTTPS the graph-client's own auth provider sends the token (no custom middleware)", async () => {
  // A throwaway CA and localhost certificate from `presenced cert`; Node trusts the CA only
  // through NODE_EXTRA_CA_CERTS, read at start, so the client runs in a child process.
  const certs = mkdtempSync(join(tmpdir(), "presenced-js-tls-"));
  execFileSync(server.binary, ["cert", "--out", certs]);
  const tls = await startServer({
    args: ["--tls-cert", join(certs, "cert.pem"), "--tls-key", join(certs, "key.pem")],
  });
  try {
    assert.match(tls.baseUrl, /^https:\/\//);
    const user = randomUUID();
    const token = tls.token({ user, scopes: ["Presence.ReadWrite"] });
    const script = `
      import { Client } from "@microsoft/microsoft-graph-client";
      const client = Client.init({
        authProvider: (done) => done(null, process.env.TOKEN),
        baseUrl: process.env.BASE + "/",
        defaultVersion: "v1.0",
        // The client attaches its token to Graph's hosts and to the custom hosts named here.
        customHosts: new Set([new URL(process.env.BASE).hostname]),
      });
      await client.api("/me/presence/setPresence").post({
        sessionId: "${randomUUID()}", availability: "Busy", activity: "InACall", expirationDuration: "PT7.5M",
      });
      const read = await client.api("/me/presence").get();
      console.log(JSON.stringify(read));
    `;
    const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], {
      cwd: new URL(".", import.meta.url),
      env: {
        ...process.env,
        NODE_EXTRA_CA_CERTS: join(certs, "ca.pem"),
        BASE: tls.baseUrl.replace("127.0.0.1", "localhost"),
        TOKEN: token,
      },
    });
    const read = JSON.parse(out.toString());
    assert.equal(read.availability, "Busy");
    assert.equal(read.id, user);
    assert.match(read["@odata.context"], /^https:\/\/localhost:\d+\/v1\.0\/\$metadata#users/);
  } finally {
    await tls.stop();
    rmSync(certs, { recursive: true, force: true });
  }
});

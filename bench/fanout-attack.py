#!/usr/bin/env python3
"""The fan-out attack of issue 14, measured: what one subscriber can make the server hold.

    bench/fanout-attack.py [--binary target/release/presenced] [--users 10] [--subs-per-user 100]
                           [--targets 100] [--writes 2000]

Subscribers of one application (`--users` delegated users, `--subs-per-user` subscriptions each,
at most the server's per-user and per-app caps) all watch the same `--targets` users and all send
to one endpoint that passes the validation handshake and then answers 503 to every notification.
An application token writes `--writes` setPresence spread over the targets. The script prints the
server's resident memory (VmRSS) and data-directory size at each stage, the deepest notification
queue seen (`presenced_notification_queue_depth`) and the `missed` notices that arrived.

Standard library only; loopback only; everything it starts is stopped when it exits.
"""
import argparse
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

FAILING = {"posts": 0}
LIFECYCLE = []


class Receiver(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if "validationToken" in query:
            token = query["validationToken"][0].encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(token)))
            self.end_headers()
            self.wfile.write(token)
            return
        if self.path.startswith("/lifecycle"):
            LIFECYCLE.extend(json.loads(body).get("value", []))
            self.send_response(202)
        else:
            FAILING["posts"] += 1
            self.send_response(503)
        self.send_header("content-length", "0")
        self.end_headers()


def start_receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def token(binary, data_dir, *args):
    out = subprocess.run([binary, "token", "--data-dir", data_dir, "--tenant", "t1", *args],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def call(base, method, path, tok, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("authorization", "Bearer " + tok)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def disk_mib(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total / (1024 * 1024)


def queue_depth(base, tok):
    _, text = call(base, "GET", "/metrics", tok)
    m = re.search(rb"^presenced_notification_queue_depth (\S+)", text, re.M)
    return float(m.group(1)) if m else 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--binary", default="target/release/presenced")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--subs-per-user", type=int, default=100)
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--writes", type=int, default=2000)
    a = p.parse_args()

    temp = tempfile.mkdtemp(prefix="presenced-fanout-")
    data_dir = os.path.join(temp, "data")
    server = subprocess.Popen(
        [a.binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--rate-limit", "off",
         "--webhook-allow-http", "--webhook-allow-network", "127.0.0.0/8",
         "--webhook-suspend-after", "1h"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        base = server.stdout.readline().strip().removeprefix("listening on ")
        receiver = start_receiver()
        app = token(a.binary, data_dir, "--app", "writer", "--role", "Presence.ReadWrite.All")
        targets = [f"target-{i}" for i in range(a.targets)]
        ids = ",".join(f"'{t}'" for t in targets)
        stages = [("started", rss_mib(server.pid), disk_mib(data_dir))]
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 50 * 60))
        created = 0
        for u in range(a.users):
            sub = token(a.binary, data_dir, "--app", "attacker", "--user", f"attacker-{u}",
                        "--scope", "Presence.Read.All")
            for _ in range(a.subs_per_user):
                status, body = call(base, "POST", "/v1.0/subscriptions", sub, {
                    "changeType": "updated", "notificationUrl": receiver + "/hook",
                    "lifecycleNotificationUrl": receiver + "/lifecycle",
                    "resource": f"/communications/presences?$filter=id in ({ids})",
                    "expirationDateTime": expires, "clientState": "x" * 128})
                if status != 201:
                    sys.exit(f"subscription refused: {status} {body[:200]!r}")
                created += 1
        stages.append((f"{created} subscriptions", rss_mib(server.pid), disk_mib(data_dir)))
        deepest = 0.0
        started = time.time()
        for i in range(a.writes):
            pair = ("Busy", "InACall") if i % 2 else ("Away", "Away")
            status, _ = call(base, "POST", f"/v1.0/users/{targets[i % a.targets]}/presence/setPresence", app,
                             {"sessionId": "s", "availability": pair[0], "activity": pair[1],
                              "expirationDuration": "PT1H"})
            if status != 200:
                sys.exit(f"write failed: {status}")
            if i % 100 == 0:
                deepest = max(deepest, queue_depth(base, app))
        elapsed = time.time() - started
        stages.append((f"after {a.writes} writes", rss_mib(server.pid), disk_mib(data_dir)))
        for _ in range(20):
            time.sleep(1)
            deepest = max(deepest, queue_depth(base, app))
        stages.append(("20 s later", rss_mib(server.pid), disk_mib(data_dir)))
        # Every subscription watches every target: each write is owed to each subscription.
        owed = created * a.writes
        print(f"subscriptions {created} (users {a.users} x {a.subs_per_user}), each watching {a.targets} users")
        print(f"writes {a.writes} in {elapsed:.1f} s; notifications owed {owed:,}; "
              f"POSTs the failing endpoint got {FAILING['posts']:,}")
        print(f"deepest queue {deepest:,.0f}; missed notices {sum(1 for i in LIFECYCLE if i.get('lifecycleEvent') == 'missed')}")
        print("| stage | RSS MiB | data dir MiB |")
        print("|---|---:|---:|")
        for name, rss, disk in stages:
            print(f"| {name} | {rss:.1f} | {disk:.1f} |")
        (_, rss0, disk0), (_, rss1, disk1) = stages[0], stages[1]
        print(f"per subscription: {(rss1 - rss0) * 1024 / created:.1f} KiB of memory, "
              f"{(disk1 - disk0) * 1024 / created:.1f} KiB on disk (watching {a.targets} users)")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()

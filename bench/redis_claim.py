#!/usr/bin/env python3
"""How long one claim call holds Redis, by how many subscriptions there are.

Usage: bench/redis_claim.py [SUBSCRIPTIONS=10000] [NODES=2]

Starts a redis-server of its own (free loopback port, no persistence), loads the backend's function
library, fills the subscriptions' position hash, then walks every subscription as a node's
dispatcher does at each refresh: once in a single call (page = all, as before the claim paged) and
once in pages of 500 (today's default). Redis's own `INFO commandstats` gives the time per call.
Prints one JSON line per page size. Needs redis-server and redis-cli (Debian's packages).
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

LIBRARY = os.path.join(os.path.dirname(__file__), "..", "crates", "presenced", "src", "store", "redis", "functions.lua")
KEY = "bench:{s}:"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    subscriptions = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    nodes = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    port = str(free_port())
    cli = ["redis-cli", "-p", port]
    with tempfile.TemporaryDirectory() as d:
        server = subprocess.Popen(
            ["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                if subprocess.run(cli + ["PING"], capture_output=True).stdout.strip() == b"PONG":
                    break
                time.sleep(0.05)
            subprocess.run(cli + ["FUNCTION", "LOAD", "REPLACE", open(LIBRARY).read()], check=True, capture_output=True)
            fill = "".join(f"HSET {KEY}pos sub-{i:06d} 2.AAAA\n" for i in range(subscriptions))
            subprocess.run(cli, input=fill.encode(), stdout=subprocess.DEVNULL, check=True)
            epochs = [f"node-{n}" for n in range(nodes)]
            for page in (subscriptions, 500):
                subprocess.run(cli + ["DEL", f"{KEY}claim"], capture_output=True)
                subprocess.run(cli + ["CONFIG", "RESETSTAT"], capture_output=True)
                cursor, calls = "0", 0
                while True:
                    args = [KEY, "node-0/1", "1000", "31000", "15000", "node-0", cursor, str(page)] + epochs
                    out = subprocess.run(cli + ["FCALL", "pd_claim", "1"] + args, capture_output=True, text=True).stdout
                    cursor, calls = out.split("\n", 1)[0].strip(), calls + 1
                    if cursor == "0":
                        break
                stats = subprocess.run(cli + ["INFO", "commandstats"], capture_output=True, text=True).stdout
                line = next(l for l in stats.splitlines() if l.startswith("cmdstat_fcall:"))
                fields = dict(f.split("=") for f in line.split(":", 1)[1].split(","))
                print(json.dumps({
                    "subscriptions": subscriptions,
                    "nodes": nodes,
                    "page": page,
                    "calls": calls,
                    "ms_per_call": round(float(fields["usec_per_call"]) / 1000, 2),
                    "ms_per_walk": round(int(fields["usec"]) / 1000, 1),
                }))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()

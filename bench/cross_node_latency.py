#!/usr/bin/env python3
"""How long a change takes to reach a watch stream: write through node A, watch on node B.

Usage: cross_node_latency.py WRITE_URL WATCH_URL TOKEN [COUNT]

Opens one SSE watch stream on WATCH_URL for one user, then COUNT times flips that user's presence
through WRITE_URL and times from sending the write to the stream's event for it (the write's own
round trip included). Prints one JSON line: {"count", "p50_ms", "p99_ms", "max_ms"}. Stdlib only.
"""
import http.client
import json
import sys
import time
import urllib.parse

USER = "latency-probe"


def connect(url):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def events(response):
    """Yield (event, data) from a text/event-stream response."""
    event, data = None, []
    while True:
        line = response.fp.readline()
        if not line:
            return
        line = line.decode().rstrip("\r\n")
        if not line:
            if event:
                yield event, json.loads("\n".join(data)) if data else None
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def main():
    write_url, watch_url, token = sys.argv[1:4]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    writer = connect(write_url)

    def flip(i):
        availability, activity = ("Busy", "InACall") if i % 2 else ("Away", "Away")
        body = json.dumps({"sessionId": "probe", "availability": availability, "activity": activity,
                           "expirationDuration": "PT1H"})
        writer.request("POST", f"/v1.0/users/{USER}/presence/setPresence", body, headers)
        reply = writer.getresponse()
        reply.read()
        if reply.status != 200:
            sys.exit(f"setPresence answered {reply.status}")
        return availability

    flip(0)
    watcher = connect(watch_url)
    watcher.request("POST", "/v1.0/communications/presences/$stream", json.dumps({"ids": [USER]}),
                    {**headers, "Accept": "text/event-stream"})
    stream = events(watcher.getresponse())
    for event, _ in stream:
        if event == "snapshot":
            break
    took = []
    for i in range(1, count + 1):
        started = time.perf_counter()
        want = flip(i)
        for event, data in stream:
            if event == "presence" and data.get("availability") == want:
                took.append((time.perf_counter() - started) * 1000)
                break
    took.sort()
    print(json.dumps({"count": len(took), "p50_ms": round(took[len(took) // 2], 2),
                      "p99_ms": round(took[int(len(took) * 0.99) - 1], 2), "max_ms": round(took[-1], 2)}, separators=(",", ":")))


if __name__ == "__main__":
    main()

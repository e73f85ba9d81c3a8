#!/usr/bin/env python3
"""Many screens fetching the same large file from a release relay at once: RSS and throughput.

    python3 tools/assets-bench.py [--relay target/release/directus-relay] [--size-mib 200]
                                  [--kiosks 100] [--through 32]

A stand-in Directus (plain HTTP on the loopback address, which the relay allows; standard
library only) holds one item whose `image` field references a file of SIZE MiB. The relay,
with [assets] enabled, prefetches it (timed), then:

  disk     KIOSKS curl processes fetch /assets/<id>?token=… at once, from the relay's disk
  through  THROUGH curl processes fetch a variant not cached yet (?width=640) at once: one is
           streamed through from Directus and cached on the way, the others streamed through

For each phase it prints the relay's RSS before, its peak while serving (sampled every 10 ms
from /proc), the bytes served and the aggregate throughput. Nothing leaves 127.0.0.1. The
clients share the machine's cores with the relay: on 2 cores, the figures are a floor.
"""

import argparse
import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

FILE_ID = "aaaaaaaa-0000-4000-8000-00000000b001"
DIRECTUS_TOKEN = "bench-directus-token-0123456789"
KIOSK_TOKEN = "bench-kiosk-token-0123456789"
CHUNK = 1 << 20


def make_file(path, size):
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, CHUNK)
            f.write(block[:n])
            left -= n


def fake_directus(file_path, size):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def json(self, body, status=200):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/server/ping":
                return self.json("pong")
            if path == "/server/info":
                return self.json({"data": {"version": "12.4.0", "websocket": False}})
            if path == "/activity":
                return self.json({"data": []})
            if path.startswith("/collections/"):
                return self.json({"data": {"meta": {"accountability": "all"}}})
            if path.startswith("/items/"):
                return self.json({"data": [{"id": 1, "image": FILE_ID}]})
            if path == "/fields":
                return self.json({"data": [{"collection": "articles", "field": "image", "type": "uuid", "meta": {"special": ["file"]}}]})
            if path == "/relations":
                return self.json({"data": [{"collection": "articles", "field": "image", "related_collection": "directus_files", "meta": {}}]})
            if path == f"/files/{FILE_ID}":
                return self.json({"data": {"filesize": str(size)}})
            if path == f"/assets/{FILE_ID}":
                self.send_response(200)
                self.send_header("content-type", "video/mp4")
                self.send_header("content-length", str(size))
                self.send_header("last-modified", "Sat, 05 Dec 2026 10:00:00 GMT")
                self.end_headers()
                with open(file_path, "rb") as f:
                    shutil.copyfileobj(f, self.wfile, CHUNK)
                return None
            return self.json({"errors": [{"message": "Route doesn't exist."}]}, 404)

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as r:
        return json.load(r)


def phase(name, pid, port, query, clients, size):
    url = f"http://127.0.0.1:{port}/assets/{FILE_ID}?{query}token={KIOSK_TOKEN}"
    before = rss_kib(pid)
    peak = before
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            r = rss_kib(pid)
            if r:
                peak = max(peak, r)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url],
            stdout=subprocess.PIPE,
        )
        for _ in range(clients)
    ]
    results = [p.communicate()[0].decode().split() for p in procs]
    wall = time.monotonic() - start
    stop.set()
    sampler.join()
    codes = {}
    total = 0
    for code, got in results:
        codes[code] = codes.get(code, 0) + 1
        total += int(got)
    complete = sum(1 for code, got in results if code == "200" and int(got) == size)
    row = {
        "phase": name,
        "clients": clients,
        "file_mib": size / 2**20,
        "answers": codes,
        "complete": complete,
        "served_mib": round(total / 2**20),
        "wall_s": round(wall, 2),
        "throughput_mib_s": round(total / 2**20 / wall),
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_rise_mib": round((peak - before) / 1024, 1),
    }
    print(json.dumps(row))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", default="target/release/directus-relay")
    ap.add_argument("--size-mib", type=int, default=200)
    ap.add_argument("--kiosks", type=int, default=100)
    ap.add_argument("--through", type=int, default=32)
    args = ap.parse_args()
    size = args.size_mib << 20
    work = tempfile.mkdtemp(prefix="assets-bench-")
    relay = None
    try:
        file_path = os.path.join(work, "video.bin")
        make_file(file_path, size)
        directus = fake_directus(file_path, size)
        port = free_port()
        config = os.path.join(work, "relay.toml")
        with open(config, "w") as f:
            f.write(f"""
listen = "127.0.0.1:{port}"
state_dir = "{work}/state"
[directus]
url = "http://127.0.0.1:{directus.server_address[1]}"
token = "{DIRECTUS_TOKEN}"
mode = "poll"
poll_interval = "1s"
[assets]
enabled = true
max_bytes = "{2 * args.size_mib + 64}MiB"
[log]
level = "warn"
[[collections]]
name = "articles"
[[clients.tokens]]
name = "bench"
token = "{KIOSK_TOKEN}"
collections = ["articles"]
""")
        os.makedirs(f"{work}/state")
        relay = subprocess.Popen([args.relay, "run", "--config", config])
        start = time.monotonic()
        idle = None
        while True:
            try:
                s = status(port)
                idle = idle or rss_kib(relay.pid)
                if s["assets"] and s["assets"]["referenced_cached"] == 1:
                    break
            except OSError:
                pass
            if time.monotonic() - start > 300:
                sys.exit("the relay did not cache the file within 300 s")
            time.sleep(0.02)
        prefetch = time.monotonic() - start
        print(json.dumps({"phase": "prefetch", "file_mib": args.size_mib, "seconds_from_start": round(prefetch, 2),
                          "rss_idle_mib": round(idle / 1024, 1), "rss_after_mib": round(rss_kib(relay.pid) / 1024, 1)}))
        phase("disk", relay.pid, port, "", args.kiosks, size)
        phase("through", relay.pid, port, "width=640&", args.through, size)
        s = status(port)["assets"]
        print(json.dumps({"phase": "end", "variants": s["variants"], "bytes_mib": round(s["bytes"] / 2**20),
                          "hits": s["hits"], "misses": s["misses"], "rss_mib": round(rss_kib(relay.pid) / 1024, 1)}))
    finally:
        if relay:
            relay.terminate()
            relay.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

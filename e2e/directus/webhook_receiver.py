#!/usr/bin/env python3
"""Tiny webhook receiver for e2e tests: records every request as one JSON line.

    python3 webhook_receiver.py PORT_FILE OUT_FILE [STATUS]

Listens on 127.0.0.1 on a free port, writes that port to PORT_FILE once it listens, and appends
{"t_ms", "method", "path", "headers", "body"} for each request to OUT_FILE. Answers STATUS
(default 200) with {"ok":true}. Stop it with SIGTERM.
"""
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, out_file = sys.argv[1], sys.argv[2]
status = int(sys.argv[3]) if len(sys.argv) > 3 else 200


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        line = json.dumps({
            "t_ms": int(time.time() * 1000),
            "method": self.command,
            "path": self.path,
            "headers": {k: v for k, v in self.headers.items()},
            "body": body,
        })
        with open(out_file, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        reply = b'{"ok":true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _record

    def log_message(self, fmt, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
open(out_file, "a").close()
tmp = port_file + ".tmp"
with open(tmp, "w") as f:
    f.write(str(server.server_address[1]))
os.replace(tmp, port_file)
server.serve_forever()

#!/usr/bin/env python3
"""The storm scenario of tools/bad-days.py against a relay that is already running (the VM's,
through its forwarded port), for release/vm-test.sh: the relay is given ITEMS items of
ITEM_BYTES each by webhooks, then KIOSKS kiosks power on at once, subscribe without `since` and
read slowly (SLOW_READ bytes/s each) for SLOW_SECS, then read the rest at once and close.

    python3 release/vm-storm.py --url http://127.0.0.1:PORT --token TOKEN --secret SECRET

Defaults (smaller than bad-days.py's, to fit qemu's user network): KIOSKS=50, ITEMS=1000,
ITEM_BYTES=4096, SLOW_READ=65536, SLOW_SECS=5. The kiosks are bad-days.py's raw Socket.IO
clients; the memory is watched by the caller (the unit's cgroup). Prints one line of JSON (what
the kiosks got); exits 1 when the webhooks failed or no kiosk connected.
"""

import argparse
import http.client
import importlib.util
import json
import os
import sys
import time
from urllib.parse import urlsplit

spec = importlib.util.spec_from_file_location(
    "bad_days", os.path.join(os.path.dirname(__file__), "..", "tools", "bad-days.py"))
bad_days = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bad_days)
env_int = bad_days.env_int


class RemoteRelay:
    """What bad-days.py's Kiosk and populate need of a relay: its address and webhooks. The
    webhooks share one keep-alive connection (as a Flow's would): a new connection for each of
    a thousand through qemu's user network once left a body stuck for 30 s. A webhook that gets
    no answer is sent again on a new connection (the same create again is a duplicate the relay
    drops) and counted in `retries`."""

    def __init__(self, url, secret):
        u = urlsplit(url)
        self.host, self.port, self.secret = u.hostname, u.port, secret
        self.addr = f"{self.host}:{self.port}"
        self.conn, self.retries = None, 0

    def post(self, body):
        for attempt in range(3):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request("POST", "/hooks/directus", body=json.dumps(body),
                                  headers={"Content-Type": "application/json", "X-Relay-Secret": self.secret})
                response = self.conn.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                self.retries += 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--secret", required=True)
    args = p.parse_args()
    kiosks, items, item_bytes = env_int("KIOSKS", 50), env_int("ITEMS", 1000), env_int("ITEM_BYTES", 4096)
    slow_read, slow_secs = env_int("SLOW_READ", 64 << 10), env_int("SLOW_SECS", 5)
    relay = RemoteRelay(args.url, args.secret)
    t0 = time.time()
    bad_days.populate(relay, items, item_bytes)
    populated = round(time.time() - t0, 1)
    if relay.conn is not None:
        relay.conn.close()
    conns, errors, answered, cut_off, took = bad_days.subscribe_storm(
        relay, kiosks, {"token": args.token, "collections": ["screens"]}, slow_read, slow_secs)
    for k in conns:
        k.close()
    result = {"kiosks": kiosks, "connect_errors": len(errors), "items": items, "item_bytes": item_bytes,
              "snapshot_mib": round(items * item_bytes / bad_days.MIB, 1), "populated_s": populated,
              "webhook_retries": relay.retries,
              "answered": answered, "cut_off_before_answer": cut_off,
              "seconds_to_answer_all": took}
    print(json.dumps(result))
    if errors:
        print("connect errors:", errors[:3], file=sys.stderr)
    # What the kiosks got depends on the host's load as much as on the relay (under emulation a
    # starved VM answers late, and cut-offs are the relay's bounds at work): it is reported, and
    # the caller judges the relay by its restarts, OOM kills and readiness. A storm in which no
    # kiosk even connected tested nothing.
    sys.exit(0 if conns else 1)


if __name__ == "__main__":
    main()

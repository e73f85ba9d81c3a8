#!/usr/bin/env python3
"""A site's bad days against a release relay, each in a fresh relay process, with its RSS.

    python3 tools/bad-days.py [--relay target/release/directus-relay] [SCENARIO ...]

Scenarios (all by default):
  storm        every kiosk powers on at once: KIOSKS kiosks subscribe without `since` to a
               collection of ITEMS items of ITEM_BYTES each and read slowly (SLOW_READ bytes/s
               each) for SLOW_SECS, then read the rest at once and close
  resubscribe  one kiosk sends RESUBSCRIBES subscribes for that snapshot and never reads
  handshakes   HANDSHAKES bare Engine.IO polling handshakes (no namespace, no credentials)
  idle         the relay under a 1,024-descriptor limit; IDLE idle TCP connections and a few
               that send their headers one line a second are held; is /healthz answered and
               can a kiosk connect while they are held, and how many did the relay close?
  screens      SCREENS kiosks connect without a device, close, then connect naming their device
               (known screens) and close: RSS per kiosk with and without a device, and per
               screen remembered once they are all missing
  rooms        ROOM_KIOSKS kiosks subscribe again and again to ROOMS_PER_SUBSCRIBE routed rooms
               (of ROOMS) of a collection of ITEMS items while RATE webhooks/s are posted for
               SECS: how many webhooks are refused (the goal is none)

Each scenario prints start, peak and settled RSS against the README's memory budget for the
relay's limits, and what the relay did (answers, refusals, cut-offs). Raw figures go to
--out/results.jsonl. Standard library only; nothing leaves the loopback address.
"""

import argparse
import base64
import http.client
import json
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1 << 20


def env_int(name, default):
    return int(os.environ.get(name, default))


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Sampler:
    """Samples a process's RSS every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop_flag = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, rss_kib(self.pid) or 0)
            time.sleep(0.05)

    def stop(self):
        self.stop_flag.set()
        self.thread.join()
        return self.peak


class Relay:
    """One relay process with a config of its own, in webhook mode on a port the kernel picks."""

    def __init__(self, binary, out, name, max_clients, extra="", nofile=None, rooms_by=None, clients_extra=""):
        self.dir = os.path.join(out, name)
        os.makedirs(os.path.join(self.dir, "state"), exist_ok=True)
        self.secret = "bad-days-" + os.urandom(8).hex()
        self.max_clients = max_clients
        config = f"""listen = "127.0.0.1:0"
state_dir = "{self.dir}/state"
shutdown_grace = "2s"

[webhook]
path = "/hooks/directus"
secret = "{self.secret}"

[[collections]]
name = "screens"
{f'rooms_by = ["{rooms_by}"]' if rooms_by else ""}

[clients]
allowed_origins = ["*"]
allow_anonymous = true
{clients_extra}

[limits]
max_clients = {max_clients}
{extra}
"""
        with open(os.path.join(self.dir, "relay.toml"), "w") as f:
            f.write(config)
        command = [binary, "--config", os.path.join(self.dir, "relay.toml")]
        if nofile:
            command = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] + command
        self.log = open(os.path.join(self.dir, "relay.log"), "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.setdefault("RUST_LOG", "warn,directus_relay=info")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.addr = None
        for _ in range(200):
            with open(os.path.join(self.dir, "relay.log")) as f:
                for line in f:
                    if "relay listening" in line and "addr=" in line:
                        self.addr = line.split("addr=")[1].split()[0]
            if self.addr or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not self.addr:
            sys.exit(f"the relay did not start; see {self.dir}/relay.log")
        self.host, port = self.addr.rsplit(":", 1)
        self.port = int(port)
        time.sleep(1)

    def rss(self):
        return rss_kib(self.proc.pid)

    def cpu_seconds(self):
        """The relay's CPU time so far, user and system (its whole run, setup included)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)

    def post(self, body):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request("POST", "/hooks/directus", body=json.dumps(body),
                     headers={"Content-Type": "application/json", "X-Relay-Secret": self.secret})
        status = conn.getresponse().status
        conn.close()
        return status

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return self.proc.returncode


def budget_mib(max_clients, mirror_bytes=16 * MIB, replay_bytes=8 * MIB, kiosk_queue=256,
               max_event_bytes=256 << 10, snapshot_bytes=16 * MIB):
    """The README's memory budget for these limits (its formula, in MiB; the defaults for
    the pending sessions and connections, which follow max_clients)."""
    pending = max_clients
    connections = max_clients + pending + 64
    total = (8 * MIB + ((8 + 24) << 10) * max_clients + (11 << 10) * pending
             + (16 << 10) * connections + 3 * mirror_bytes + replay_bytes
             + kiosk_queue * max_event_bytes + 3 * 32 * MIB
             + max(snapshot_bytes, mirror_bytes) + mirror_bytes + (32 << 10) * max_clients
             + (2 << 10) * max(1000, max_clients))
    return total / MIB


class Kiosk:
    """A raw Socket.IO v4 kiosk over WebSocket that reads only when told to."""

    def __init__(self, relay, auth):
        self.sock = socket.create_connection((relay.host, relay.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                           f"Host: {relay.addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the upgrade")
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        self.buf, self.pos = bytearray(rest), 0
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(head.split(b"\r\n")[0].decode())
        self.received = 0
        self.closed = False
        self.next_message()  # Engine.IO open
        self.send("40" + json.dumps(auth))

    def send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def read(self, size):
        """Reads up to `size` bytes into the buffer; False once the relay closed."""
        try:
            chunk = self.sock.recv(size)
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.received += len(chunk)
        if self.pos > (1 << 20):
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += chunk
        return True

    def frame(self):
        """The next whole frame's (opcode, payload) from the buffer, or None."""
        b, p = self.buf, self.pos
        if len(b) - p < 2:
            return None
        n, at = b[p + 1] & 0x7F, p + 2
        if n == 126:
            if len(b) - p < 4:
                return None
            n, at = struct.unpack("!H", b[p + 2:p + 4])[0], p + 4
        elif n == 127:
            if len(b) - p < 10:
                return None
            n, at = struct.unpack("!Q", b[p + 2:p + 10])[0], p + 10
        if len(b) < at + n:
            return None
        self.pos = at + n
        return b[p] & 0x0F, bytes(b[at:at + n])

    def next_message(self, deadline=30):
        end = time.time() + deadline
        while time.time() < end:
            f = self.frame()
            if f:
                opcode, payload = f
                if opcode == 8:
                    self.closed = True
                    return None
                if payload == b"2":
                    self.send("3")
                    continue
                if payload[:3] == b"430":
                    return "430"  # the subscribe's answer: its size is what counts here
                text = payload.decode(errors="replace")
                if text == "2":
                    self.send("3")
                    continue
                return text
            if not self.read(1 << 16):
                return None
        return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def populate(relay, items, item_bytes):
    pad = "x" * max(0, item_bytes - 40)
    batch = max(1, min(200, (800 << 10) // max(item_bytes, 1)))
    for start in range(0, items, batch):
        keys = list(range(start, min(items, start + batch)))
        for key in keys:
            status = relay.post({"event": "screens.items.create", "collection": "screens",
                                 "key": str(key), "payload": {"id": str(key), "name": f"screen {key}",
                                                              "pad": pad}})
            if status != 202:
                sys.exit(f"populating the mirror: webhook answered {status}")


class Reader:
    """Follows a kiosk's WebSocket frames as they arrive, without keeping them: it answers
    pings and notes the subscribe's answer (`430…`), counting the rest as read."""

    def __init__(self, kiosk):
        self.kiosk, self.head, self.left, self.prefix = kiosk, bytearray(kiosk.buf[kiosk.pos:]), 0, b""
        self.answered = False
        kiosk.sock.setblocking(False)

    def feed(self, data):
        data = memoryview(bytes(self.head) + data) if self.head else memoryview(data)
        self.head = bytearray()
        i = 0
        while i < len(data):
            if self.left:
                take = min(self.left, len(data) - i)
                if len(self.prefix) < 3:
                    self.prefix += bytes(data[i:i + min(take, 3 - len(self.prefix))])
                self.left -= take
                i += take
                if not self.left:
                    self.done()
                continue
            rest = data[i:]
            if len(rest) < 2:
                self.head = bytearray(rest)
                return
            n, at = rest[1] & 0x7F, 2
            if n == 126:
                if len(rest) < 4:
                    self.head = bytearray(rest)
                    return
                n, at = struct.unpack("!H", rest[2:4])[0], 4
            elif n == 127:
                if len(rest) < 10:
                    self.head = bytearray(rest)
                    return
                n, at = struct.unpack("!Q", rest[2:10])[0], 10
            self.left, self.prefix, self.small = n, b"", n == 1
            i += at
            if n == 0:
                self.done()

    def done(self):
        if self.small and self.prefix == b"2":
            self.kiosk.sock.setblocking(True)
            self.kiosk.send("3")
            self.kiosk.sock.setblocking(False)
        elif self.prefix.startswith(b"430"):
            self.answered = True

    def read(self, size):
        """Reads up to `size` bytes; False once closed by the relay."""
        try:
            chunk = self.kiosk.sock.recv(size)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            self.kiosk.closed = True
            return False
        self.feed(chunk)
        return True


def subscribe_storm(relay, kiosks, auth, slow_read, slow_secs):
    """KIOSKS kiosks connect at once with `auth` and subscribe to `screens` without `since`;
    each reads SLOW_READ bytes/s for SLOW_SECS, then as fast as it can until it has its answer
    (300 s at most). Returns the kiosks, the connect errors, how many were answered, how many
    the relay closed before their answer, and the seconds from the subscribes to the end."""
    conns, errors = [], []

    def connect():
        try:
            conns.append(Kiosk(relay, auth))
        except Exception as e:  # noqa: BLE001 - counted and printed
            errors.append(str(e))

    threads = [threading.Thread(target=connect) for _ in range(kiosks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in conns:
        k.send('420["subscribe",{"collections":["screens"]}]')
    readers = [Reader(k) for k in conns]
    t0 = time.time()
    while time.time() - t0 < slow_secs:
        for r in readers:
            if not r.kiosk.closed:
                r.read(max(1, slow_read // 10))
        time.sleep(0.1)
    sel = selectors.DefaultSelector()
    for r in readers:
        if not r.kiosk.closed and not r.answered:
            sel.register(r.kiosk.sock, selectors.EVENT_READ, r)
    deadline = time.time() + 300
    while sel.get_map() and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            r = key.data
            if not r.read(1 << 20) or r.answered:
                sel.unregister(key.fileobj)
    answered = sum(1 for r in readers if r.answered)
    cut_off = sum(1 for r in readers if r.kiosk.closed and not r.answered)
    return conns, errors, answered, cut_off, round(time.time() - t0, 1)


def storm(args, out):
    kiosks, items, item_bytes = env_int("KIOSKS", 100), env_int("ITEMS", 2000), env_int("ITEM_BYTES", 4096)
    slow_read, slow_secs = env_int("SLOW_READ", 64 << 10), env_int("SLOW_SECS", 5)
    relay = Relay(args.relay, out, "storm", max(kiosks + 10, 500))
    populate(relay, items, item_bytes)
    time.sleep(1)
    start = relay.rss()
    sampler = Sampler(relay.proc.pid)
    conns, errors, answered, cut_off, took = subscribe_storm(relay, kiosks, {"collections": ["screens"]},
                                                            slow_read, slow_secs)
    for k in conns:
        k.close()
    time.sleep(3)
    peak = sampler.stop()
    return relay, {"kiosks": kiosks, "connect_errors": len(errors), "items": items,
                   "item_bytes": item_bytes, "snapshot_mib": round(items * item_bytes / MIB, 1),
                   "answered": answered, "cut_off_before_answer": cut_off, "seconds_to_answer_all": took,
                   "rss_start_kib": start, "rss_peak_kib": peak, "rss_settled_kib": relay.rss(),
                   "budget_mib": round(budget_mib(relay.max_clients))}


def resubscribe(args, out):
    count, items, item_bytes = env_int("RESUBSCRIBES", 600), env_int("ITEMS", 2000), env_int("ITEM_BYTES", 800)
    relay = Relay(args.relay, out, "resubscribe", 500)
    populate(relay, items, item_bytes)
    time.sleep(1)
    start = relay.rss()
    sampler = Sampler(relay.proc.pid)
    k = Kiosk(relay, {"collections": ["screens"]})
    k.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent = 0
    k.sock.settimeout(5)
    try:
        for i in range(count):
            k.send(f'42{i}["subscribe",{{"collections":["screens"]}}]')
            sent += 1
    except OSError:
        pass
    t0 = time.time()
    closed = False
    while time.time() - t0 < 15:
        # Never reads: the relay's answers pile up in its queue for this kiosk. Is it cut off?
        try:
            k.sock.send(b"")
        except OSError:
            closed = True
            break
        time.sleep(0.5)
    k.close()
    time.sleep(3)
    peak = sampler.stop()
    return relay, {"subscribes_sent": sent, "snapshot_mib": round(items * item_bytes / MIB, 1),
                   "rss_start_kib": start, "rss_peak_kib": peak, "rss_settled_kib": relay.rss(),
                   "budget_mib": round(budget_mib(relay.max_clients))}


def handshakes(args, out):
    total, workers = env_int("HANDSHAKES", 30000), 8
    relay = Relay(args.relay, out, "handshakes", 500)
    start = relay.rss()
    sampler = Sampler(relay.proc.pid)
    answers = {}
    lock = threading.Lock()

    def worker(n):
        conn = http.client.HTTPConnection(relay.host, relay.port, timeout=10)
        for _ in range(n):
            try:
                conn.request("GET", "/socket.io/?EIO=4&transport=polling")
                r = conn.getresponse()
                r.read()
                status = r.status
            except Exception:  # noqa: BLE001 - counted
                status = "error"
                conn.close()
                conn = http.client.HTTPConnection(relay.host, relay.port, timeout=10)
            with lock:
                answers[status] = answers.get(status, 0) + 1
        conn.close()

    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(total // workers,)) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - t0
    at_end = relay.rss()
    time.sleep(5)
    peak = sampler.stop()
    return relay, {"handshakes": total, "seconds": round(took, 1), "answers": answers,
                   "rss_start_kib": start, "rss_peak_kib": peak, "rss_at_end_kib": at_end,
                   "rss_settled_kib": relay.rss(), "budget_mib": round(budget_mib(relay.max_clients))}


def idle(args, out):
    count, hold = env_int("IDLE", 1100), env_int("HOLD_SECS", 30)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # max_connections fits the descriptor limit with the relay's own 64, as the relay asks at start.
    relay = Relay(args.relay, out, "idle", 500, extra="max_pending_sessions = 100\nmax_connections = 900", nofile=1024)
    start = relay.rss()
    sampler = Sampler(relay.proc.pid)
    held, refused = [], 0
    for _ in range(count):
        try:
            s = socket.create_connection((relay.host, relay.port), timeout=2)
            held.append(s)
        except OSError:
            refused += 1
    slow = []
    for _ in range(10):
        s = socket.create_connection((relay.host, relay.port), timeout=2)
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        slow.append(s)
    time.sleep(1)

    def healthz():
        t = time.time()
        try:
            conn = http.client.HTTPConnection(relay.host, relay.port, timeout=5)
            conn.request("GET", "/healthz")
            status = conn.getresponse().status
            conn.close()
        except Exception as e:  # noqa: BLE001 - reported
            return f"failed: {type(e).__name__}", round(time.time() - t, 2)
        return status, round(time.time() - t, 2)

    def kiosk():
        try:
            k = Kiosk(relay, {})
            m = k.next_message(5)
            k.close()
            return "connected" if m and m.startswith("40") else f"answered {m!r}"
        except Exception as e:  # noqa: BLE001 - reported
            return f"failed: {type(e).__name__}: {e}"

    during = {"healthz": healthz(), "kiosk": kiosk()}
    t0 = time.time()
    while time.time() - t0 < hold:
        for s in slow:
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                pass
        time.sleep(1)

    def closed_by_relay(socks):
        n = 0
        for s in socks:
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    n += 1
            except BlockingIOError:
                pass
            except OSError:
                n += 1
        return n

    closed_idle, closed_slow = closed_by_relay(held), closed_by_relay(slow)
    after = {"healthz": healthz(), "kiosk": kiosk()}
    for s in held + slow:
        s.close()
    time.sleep(2)
    peak = sampler.stop()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return relay, {"idle_connections": count, "refused_at_connect": refused, "slow_headers": len(slow),
                   "held_secs": hold, "while_held": during, "at_the_end": after,
                   "idle_closed_by_relay": closed_idle, "slow_closed_by_relay": closed_slow,
                   "rss_start_kib": start, "rss_peak_kib": peak, "rss_settled_kib": relay.rss(),
                   "budget_mib": round(budget_mib(relay.max_clients))}


def rooms(args, out):
    """Kiosks asking for many routed rooms of a large collection while webhooks stream in."""
    items, room_count, kiosks = env_int("ITEMS", 10000), env_int("ROOMS", 1450), env_int("ROOM_KIOSKS", 2)
    rate, secs = env_int("RATE", 200), env_int("SECS", 20)
    relay = Relay(args.relay, out, "rooms", 500, extra='max_message_bytes = "1MiB"', rooms_by="room")
    pad = "x" * 200
    for key in range(items):
        status = relay.post({"event": "screens.items.create", "collection": "screens", "key": str(key),
                             "payload": {"id": str(key), "room": f"r{key % room_count}", "pad": pad}})
        if status != 202:
            sys.exit(f"populating the mirror: webhook answered {status}")
    time.sleep(1)
    start = relay.rss()
    sampler = Sampler(relay.proc.pid)
    stop = threading.Event()
    asked = {"subscribes": 0, "answers": 0}
    per_subscribe = env_int("ROOMS_PER_SUBSCRIBE", room_count)

    def kiosk():
        k = Kiosk(relay, {"collections": ["screens"]})
        r = Reader(k)
        first = 0
        while not stop.is_set() and not k.closed:
            wanted = [{"collection": "screens", "where": {"room": f"r{(first + i) % room_count}"}}
                      for i in range(per_subscribe)]
            first += per_subscribe
            k.sock.setblocking(True)
            k.send("420" + json.dumps(["subscribe", {"collections": wanted}]))
            k.sock.setblocking(False)
            asked["subscribes"] += 1
            r.answered = False
            deadline = time.time() + 30
            while not r.answered and not k.closed and time.time() < deadline and not stop.is_set():
                r.read(1 << 20)
                time.sleep(0.001)
            asked["answers"] += r.answered
        k.close()

    # A screen that takes every event (no subscribe): how late do live events reach it?
    watcher, posted_at, delays = Kiosk(relay, {}), {}, []

    def watch():
        watcher.sock.settimeout(None)
        while not stop.is_set() and not watcher.closed:
            m = watcher.next_message(3600)
            if os.environ.get("BD_DEBUG"):
                print("W", (m or "")[:80], file=sys.stderr)
            if m and m.startswith('42["data.update"'):
                n = json.loads(m[2:])[1].get("payload", {}).get("n")
                if n in posted_at:
                    delays.append(time.time() - posted_at[n])

    threads = [threading.Thread(target=kiosk) for _ in range(kiosks)]
    for t in threads + [threading.Thread(target=watch, daemon=True)]:
        t.start()
    statuses, latest = {}, []
    conn = http.client.HTTPConnection(relay.host, relay.port, timeout=30)
    t0 = time.time()
    for n in range(rate * secs):
        due = t0 + n / rate
        if due > time.time():
            time.sleep(due - time.time())
        sent = time.time()
        posted_at[n] = sent
        body = json.dumps({"event": "screens.items.update", "collection": "screens", "keys": [str(n % items)],
                           "payload": {"n": n}})
        conn.request("POST", "/hooks/directus", body=body,
                     headers={"Content-Type": "application/json", "X-Relay-Secret": relay.secret})
        r = conn.getresponse()
        r.read()
        statuses[r.status] = statuses.get(r.status, 0) + 1
        latest.append(time.time() - sent)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    latest.sort()
    delays.sort()
    peak = sampler.stop()
    return relay, {"items": items, "rooms": room_count, "kiosks": kiosks, "rooms_per_subscribe": per_subscribe,
                   "webhooks": rate * secs, "webhook_answers": statuses,
                   "webhook_answer_ms_p50_p99_max": [round(latest[len(latest) // 2] * 1000, 1),
                                                     round(latest[int(len(latest) * 0.99)] * 1000, 1),
                                                     round(latest[-1] * 1000, 1)],
                   "subscribes": asked["subscribes"], "subscribes_answered": asked["answers"],
                   "events_seen": len(delays), "watcher_cut_off": watcher.closed,
                   "post_to_event_ms_p50_p99_max": [round(delays[len(delays) // 2] * 1000, 1),
                                                    round(delays[int(len(delays) * 0.99)] * 1000, 1),
                                                    round(delays[-1] * 1000, 1)] if delays else None,
                   "rss_start_kib": start, "rss_peak_kib": peak, "rss_settled_kib": relay.rss(),
                   "budget_mib": round(budget_mib(relay.max_clients))}


def screens(args, out):
    """SCREENS kiosks connect naming their device (known screens), then all close: what the
    relay holds for them online and then remembered; the same number without a device first,
    as the baseline. The relay's own figure: RSS per kiosk with and without a device."""
    count = env_int("SCREENS", 1000)
    relay = Relay(args.relay, out, "screens", count + 10,
                  extra="", clients_extra=f"max_screens = {count + 10}\nmissing_after = \"2s\"")
    start = relay.rss()
    sampler = Sampler(relay.proc.pid)

    def connect_all(auth_of):
        kiosks = []
        for i in range(count):
            kiosks.append(Kiosk(relay, auth_of(i)))
        time.sleep(2)
        return kiosks

    anonymous = connect_all(lambda i: {})
    with_anonymous = relay.rss()
    for k in anonymous:
        k.close()
    time.sleep(3)
    after_anonymous = relay.rss()
    named = connect_all(lambda i: {"device": f"screen-{i:05d}", "name": f"Screen {i}", "app_version": "1.0.0"})
    with_named = relay.rss()
    conn = http.client.HTTPConnection(relay.host, relay.port, timeout=30)
    conn.request("GET", "/status.json")
    fleet = json.loads(conn.getresponse().read())["fleet"]
    conn.close()
    for k in named:
        k.close()
    time.sleep(4)  # past missing_after: every screen is remembered as missing
    conn = http.client.HTTPConnection(relay.host, relay.port, timeout=30)
    conn.request("GET", "/status.json")
    gone = json.loads(conn.getresponse().read())["fleet"]
    conn.close()
    peak = sampler.stop()
    per = lambda kib: round(kib * 1024 / count)  # noqa: E731
    return relay, {"screens": count, "online_listed": fleet["online"], "missing_after_close": gone["missing"],
                   "bytes_per_anonymous_kiosk": per(with_anonymous - start),
                   "bytes_per_named_kiosk": per(with_named - after_anonymous),
                   "bytes_per_remembered_screen": per(relay.rss() - after_anonymous),
                   "rss_start_kib": start, "rss_peak_kib": peak, "rss_settled_kib": relay.rss(),
                   "budget_mib": round(budget_mib(relay.max_clients))}


SCENARIOS = {"storm": storm, "resubscribe": resubscribe, "handshakes": handshakes, "idle": idle,
             "rooms": rooms, "screens": screens}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--relay", default="target/release/directus-relay")
    p.add_argument("--out", default=None)
    p.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    args = p.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="relay-bad-days.")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.jsonl"), "a") as results:
        for name in args.scenarios:
            print(f"--- {name}", file=sys.stderr, flush=True)
            relay, figures = SCENARIOS[name](args, out)
            figures["relay_cpu_seconds"] = relay.cpu_seconds()
            figures["exit_status"] = relay.stop()
            figures["scenario"] = name
            results.write(json.dumps(figures) + "\n")
            mib = lambda k: "-" if k is None else f"{k / 1024:.0f}"  # noqa: E731
            print(f"{name:12} RSS MiB start {mib(figures['rss_start_kib'])}, peak {mib(figures['rss_peak_kib'])},"
                  f" settled {mib(figures['rss_settled_kib'])} (budget {figures['budget_mib']});"
                  f" exit {figures['exit_status']}")
            print("             " + json.dumps({k: v for k, v in figures.items()
                                                 if not k.startswith("rss_") and k not in ("scenario", "budget_mib")}))
    print(f"raw results: {out}/results.jsonl", file=sys.stderr)


if __name__ == "__main__":
    main()

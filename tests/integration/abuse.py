#!/usr/bin/env python3
"""Hostile HTTP clients for tests/integration/abuse.sh.

Each command attacks a tallyd on 127.0.0.1:PORT the way curl cannot
(trickled bytes, thousands of idle sockets, hand-built HTTP/2 frames) and
prints TAP lines ("ok - ..." / "not ok - ...") and "# ..." notes; the shell
counts them.  While an attack runs, a probe thread sends ordinary requests
on fresh connections: each must be answered while the attack is still
under way.  Exit status: 0 when every check passed, 1 otherwise.
"""

import argparse
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time

FAILED = 0


def ok(cond, msg):
    global FAILED
    if not cond:
        FAILED += 1
    print("%s - %s" % ("ok" if cond else "not ok", msg), flush=True)
    return cond


def note(msg):
    print("# " + msg, flush=True)


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def connect(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Conn:
    """A socket and what was read from it but not yet consumed."""

    def __init__(self, s):
        self.s = s
        self.buf = b""

    def fill(self, deadline):
        self.s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = self.s.recv(65536)
        except (socket.timeout, ConnectionError):
            return False
        self.buf += d
        return bool(d)


def read_response(s, deadline):
    """One HTTP/1.1 response: (status, body), or (None, b"") once the
    connection is closed or the deadline passed.  's' is a socket or a
    Conn (which keeps what follows the response for the next call)."""
    c = s if isinstance(s, Conn) else Conn(s)
    while b"\r\n\r\n" not in c.buf:
        if not c.fill(deadline):
            return None, b""
    head, _, c.buf = c.buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(c.buf) < length:
        if not c.fill(deadline):
            break
    body, c.buf = c.buf[:length], c.buf[length:]
    return status, body


def request(port, method, path, body=None, timeout=10):
    """A plain HTTP/1.1 request on a fresh connection: the status or None."""
    try:
        s = connect(port, timeout)
        hdr = "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" % (
            method, path)
        data = b""
        if body is not None:
            data = body.encode()
            hdr += ("Content-Type: application/json\r\n"
                    "Content-Length: %d\r\n" % len(data))
        s.sendall(hdr.encode() + b"\r\n" + data)
        st, _ = read_response(s, time.monotonic() + timeout)
        s.close()
        return st
    except OSError:
        return None


def increment_body(key, value):
    return '{"key":"%s","value":%d}' % (key, value)


class Probe(threading.Thread):
    """Ordinary clients served during an attack: GET /healthz, and a
    POST to 'key' (each 202 is counted, so the shell can check the
    total)."""

    def __init__(self, port, key):
        super().__init__(daemon=True)
        self.port = port
        self.key = key
        self.stop = threading.Event()
        self.health = []
        self.posts = []

    def run(self):
        while not self.stop.is_set():
            self.health.append(request(self.port, "GET", "/healthz"))
            if self.key:
                self.posts.append(request(self.port, "POST", "/increment",
                                          increment_body(self.key, 1)))
            self.stop.wait(0.05)

    def finish(self, what):
        self.stop.set()
        self.join()
        n = len(self.health)
        ok(n > 0 and all(h == 200 for h in self.health),
           "%s: %d GET /healthz by other clients during it, all 200 (%s)" %
           (what, n, sorted(set(self.health), key=str)))
        if self.key:
            good = sum(1 for p in self.posts if p == 202)
            ok(good == len(self.posts),
               "%s: %d POSTs by other clients during it, all 202" %
               (what, len(self.posts)))
            print("probe_posts=%d" % good, flush=True)


def readable(s):
    pl = select.poll()
    pl.register(s, select.POLLIN)
    return bool(pl.poll(0))


def is_closed(s):
    """True when the peer closed (EOF or reset), without blocking."""
    try:
        pl = select.poll()
        pl.register(s, select.POLLIN)
        if not pl.poll(0):
            return False
        s.setblocking(False)
        d = s.recv(1)
        s.setblocking(True)
        return d == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


# ------------------------------------------------------------ HTTP/1.1


def cmd_slow(a):
    """Clients trickling a valid increment one byte at a time: the
    header (mode headers) or the body (mode body).  The server must cut
    each off before it completes, and answer other clients meanwhile."""
    pad = "x" * 300
    body = increment_body(a.key, 1)
    if a.mode == "body":
        body = body + " " * 600
    req = ("POST /increment HTTP/1.1\r\nHost: t\r\nX-Pad: %s\r\n"
           "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (pad, len(body), body)).encode()
    start = 0 if a.mode == "headers" else req.index(b"\r\n\r\n") + 4
    conns = []
    for _ in range(a.clients):
        s = connect(a.port)
        s.sendall(req[:start])
        conns.append(s)
    sent = [start] * a.clients
    closed_at = [None] * a.clients
    answers = [b""] * a.clients
    probe = Probe(a.port, a.probe_key)
    t0 = time.monotonic()
    probe.start()
    while time.monotonic() - t0 < a.limit:
        live = [i for i in range(a.clients) if closed_at[i] is None]
        if not live:
            break
        for i in live:
            s = conns[i]
            if readable(s):
                try:
                    d = s.recv(4096)
                except OSError:
                    d = b""
                answers[i] += d
                if not d:
                    closed_at[i] = time.monotonic() - t0
                    continue
            if sent[i] < len(req):
                try:
                    s.send(req[sent[i]:sent[i] + 1])
                    sent[i] += 1
                except OSError:
                    closed_at[i] = time.monotonic() - t0
        time.sleep(a.interval)
    probe.finish("slow %s" % a.mode)
    cut = [c for c in closed_at if c is not None]
    ok(len(cut) == a.clients,
       "slow %s: the server closed all %d trickling connections" %
       (a.mode, a.clients))
    ok(all(n < len(req) for n in sent),
       "slow %s: none got to send its whole request (most sent: %d of %d "
       "bytes)" % (a.mode, max(sent), len(req)))
    ok(not any(b"HTTP/1.1 2" in x for x in answers),
       "slow %s: no trickled request was answered 2xx" % a.mode)
    if cut:
        note("slow %s: cut off after %.1f to %.1f s" %
             (a.mode, min(cut), max(cut)))
    for s in conns:
        s.close()


def cmd_idle(a):
    """N connections that send nothing: other clients are served while
    all N are open; the server closes them after its timeout."""
    raise_nofile(a.n + 256)
    conns = []
    t0 = time.monotonic()
    for _ in range(a.n):
        conns.append(connect(a.port))
    note("idle: %d connections open in %.2f s" % (a.n, time.monotonic() - t0))
    st = [request(a.port, "GET", "/healthz") for _ in range(20)]
    post = request(a.port, "POST", "/increment", increment_body(a.key, 1))
    still = sum(1 for s in conns if not is_closed(s))
    ok(still == a.n, "idle: all %d idle connections were still open during "
       "the other requests (%d)" % (a.n, still))
    ok(all(x == 200 for x in st),
       "idle: 20 GET /healthz by another client all 200 (%s)" %
       sorted(set(st), key=str))
    ok(post == 202, "idle: a POST by another client: 202 (%s)" % post)
    open_ = set(range(a.n))
    t1 = time.monotonic()
    last = 0
    while open_ and time.monotonic() - t1 < a.limit:
        for i in list(open_):
            if is_closed(conns[i]):
                open_.discard(i)
                last = time.monotonic() - t0
        time.sleep(0.2)
    ok(not open_, "idle: the server closed all %d idle connections (%d left)"
       % (a.n, len(open_)))
    note("idle: the last one closed %.1f s after opening" % last)
    for s in conns:
        s.close()


def listen_queue(port):
    """Connections waiting in the kernel's accept queue of PORT."""
    out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port],
                         capture_output=True, text=True).stdout.split()
    return int(out[1]) if len(out) > 1 else -1


def cmd_cap(a):
    """Exactly 'accepted' connections are taken (max_connections per
    worker); the extra ones wait in the kernel's backlog, neither accepted
    nor closed, and are served as soon as accepted ones go."""
    raise_nofile(a.accepted + a.extra + 256)
    conns = [connect(a.port) for _ in range(a.accepted + a.extra)]
    q = -1
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        q = listen_queue(a.port)
        if q == a.extra:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    q = listen_queue(a.port)
    ok(q == a.extra, "cap: %d connections wait in the listen backlog (%d)"
       % (a.extra, q))
    closed = sum(1 for s in conns if is_closed(s))
    ok(closed == 0, "cap: no connection was accepted and closed (%d closed)"
       % closed)
    extra = conns[a.accepted:]
    for s in extra:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
                  b"Connection: close\r\n\r\n")
    for s in conns[:a.extra]:
        s.close()
    deadline = time.monotonic() + 20
    st = [read_response(s, deadline)[0] for s in extra]
    ok(all(x == 200 for x in st), "cap: once %d accepted connections closed, "
       "the %d waiting ones were served (%s)" % (a.extra, a.extra, st))
    ok(listen_queue(a.port) == 0, "cap: the listen backlog is empty again")
    for s in conns:
        s.close()


def cmd_raw(a):
    """HTTP/1.1 abuse, one connection per case: the answer's statuses and
    whether the server closed the connection."""
    cases = {
        # name: (bytes, expected statuses, must close)
        "garbage-after-valid": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            b"\x00\x01GARBAGE \xff\xfe\r\n\r\n"
            % (len(increment_body(a.key + "-g", 1)),
               increment_body(a.key + "-g", 1).encode()),
            [202, 400], True),
        "pipelined-then-garbage": (
            (b"POST /increment HTTP/1.1\r\nHost: t\r\n"
             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
             % (len(increment_body(a.key + "-p", 1)),
                increment_body(a.key + "-p", 1).encode())) * 3 +
            b"NOT HTTP AT ALL\r\n\r\n",
            [202, 202, 202, 400], True),
        "content-length-negative": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: -1\r\n\r\n"
            + increment_body(a.key + "-x", 1).encode(),
            [400], True),
        "content-length-junk": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2x\r\n\r\n"
            + increment_body(a.key + "-x", 1).encode(),
            [400], True),
        "content-length-huge": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 99999999999999999999999\r\n\r\n"
            + increment_body(a.key + "-x", 1).encode(),
            [400], True),
        "content-length-over-cap": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
            + increment_body(a.key + "-x", 1).encode(),
            [413], True),
        "chunked-bad-size": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"
            + increment_body(a.key + "-x", 1).encode() + b"\r\n0\r\n\r\n",
            [400], True),
        "chunked-size-overflow": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"fffffffffffffffffffff\r\n"
            + increment_body(a.key + "-x", 1).encode() + b"\r\n0\r\n\r\n",
            [400], True),
        "chunked-endless": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"1\r\n \r\n" * 200000,
            [413], True),
        "transfer-encoding-unknown": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: gzip\r\n\r\n"
            + increment_body(a.key + "-x", 1).encode(),
            [400], True),
        "header-too-large": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\nX-Big: "
            + b"a" * 600000 + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (len(increment_body(a.key + "-x", 1)),
               increment_body(a.key + "-x", 1).encode()),
            [400], True),
        "too-many-headers": (
            b"POST /increment HTTP/1.1\r\nHost: t\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(increment_body(a.key + "-x", 1)),
               increment_body(a.key + "-x", 1).encode()),
            [400], True),
        "request-line-too-long": (
            b"GET /increment/" + b"a" * 600000 + b" HTTP/1.1\r\n\r\n",
            [400], True),
        "bare-lf-junk": (b"\n\n\n\n\n\n\n\n" * 1000, [400], True),
    }
    # Sent in one go, these are still arriving when the server closes:
    # the kernel then resets the connection, and the client may lose the
    # answer that was on its way.
    big = ("chunked-endless", "header-too-large", "request-line-too-long")
    for name, (data, want, close) in cases.items():
        s = connect(a.port)
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may close before reading it all
        got = []
        deadline = time.monotonic() + 20
        closed = False
        c = Conn(s)
        while time.monotonic() < deadline:
            st, _ = read_response(c, deadline)
            if st is None:
                closed = True
                break
            got.append(st)
            if len(got) > len(want):
                break
        s.close()
        ok((got == want or (name in big and got == [])) and
           (closed or not close),
           "%s: answered %s%s (expected %s, closed)" %
           (name, got, ", closed" if closed else ", left open", want))


# ------------------------------------------------------------ HTTP/2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, GOAWAY, WINDOW, CONT = (
    0, 1, 2, 3, 4, 6, 7, 8, 9)
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(ftype, flags, sid, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xffff, ftype, flags,
                       sid) + payload


def hpack_int(v, prefix, first=0):
    top = (1 << prefix) - 1
    if v < top:
        return bytes([first | v])
    out = [first | top]
    v -= top
    while v >= 128:
        out.append((v & 127) | 128)
        v >>= 7
    out.append(v)
    return bytes(out)


def hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman."""
    return (b"\x00" + hpack_int(len(name), 7) + name +
            hpack_int(len(value), 7) + value)


def h2_headers(method, path, extra=()):
    b = hpack_literal(b":method", method) + hpack_literal(b":scheme", b"http")
    b += hpack_literal(b":path", path) + hpack_literal(b":authority", b"t")
    for k, v in extra:
        b += hpack_literal(k, v)
    return b


class H2Reader(threading.Thread):
    """Reads and parses what the server sends, so that its writes never
    block; records GOAWAY and counts frames."""

    def __init__(self, s):
        super().__init__(daemon=True)
        self.s = s
        self.frames = {}
        self.goaway = None
        self.closed = False

    def run(self):
        buf = b""
        self.s.settimeout(None)
        while True:
            try:
                d = self.s.recv(1 << 16)
            except OSError:
                d = b""
            if not d:
                self.closed = True
                return
            buf += d
            while len(buf) >= 9:
                n = (buf[0] << 16) | (buf[1] << 8) | buf[2]
                if len(buf) < 9 + n:
                    break
                t = buf[3]
                self.frames[t] = self.frames.get(t, 0) + 1
                if t == GOAWAY and self.goaway is None:
                    self.goaway = struct.unpack(">II", buf[9:17])[1]
                buf = buf[9 + n:]


def h2_open(port):
    s = connect(port)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))
    r = H2Reader(s)
    r.start()
    return s, r


def send_quietly(s, data):
    try:
        s.sendall(data)
        return True
    except OSError:
        return False


def cmd_h2(a):
    """HTTP/2 floods over h2c with prior knowledge."""
    s, rd = h2_open(a.port)
    probe = Probe(a.port, a.probe_key)
    probe.start()
    t0 = time.monotonic()
    sent = 0
    sid = 1
    alive = True
    if a.kind == "check":
        # One ordinary request: is HTTP/2 spoken at all?
        send_quietly(s, frame(HEADERS, END_STREAM | END_HEADERS, 1,
                              h2_headers(b"GET", b"/healthz")))
        deadline = time.monotonic() + 10
        while HEADERS not in rd.frames and not rd.closed and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        probe.stop.set()
        probe.join()
        print("h2_headers=%d" % rd.frames.get(HEADERS, 0), flush=True)
        print("h2_goaway=%s" % rd.goaway, flush=True)
        s.close()
        return
    while alive and sent < a.count and not rd.closed:
        batch = []
        for _ in range(min(200, a.count - sent)):
            if a.kind == "rapid-reset":
                # CVE-2023-44487: open a stream, cancel it at once.
                batch.append(frame(HEADERS, END_STREAM | END_HEADERS, sid,
                                   h2_headers(b"GET", a.path.encode())))
                batch.append(frame(RST, 0, sid, struct.pack(">I", 8)))
            elif a.kind == "rapid-reset-post":
                # A POST whose body never comes: nothing may count.
                batch.append(frame(HEADERS, END_HEADERS, sid, h2_headers(
                    b"POST", b"/increment",
                    [(b"content-type", b"application/json")])))
                batch.append(frame(DATA, 0, sid, b'{"key":"'))
                batch.append(frame(RST, 0, sid, struct.pack(">I", 8)))
            elif a.kind == "ping":
                batch.append(frame(PING, 0, 0, b"12345678"))
            elif a.kind == "settings":
                batch.append(frame(SETTINGS, 0, 0,
                                   struct.pack(">HI", 4, 65535)))
            elif a.kind == "empty-data":
                if sent == 0:
                    batch.append(frame(HEADERS, END_HEADERS, 1, h2_headers(
                        b"POST", b"/increment",
                        [(b"content-type", b"application/json")])))
                batch.append(frame(DATA, 0, 1, b""))
            elif a.kind == "priority":
                batch.append(frame(PRIORITY, 0, sid,
                                   struct.pack(">IB", 0, 15)))
            elif a.kind == "window-update":
                batch.append(frame(WINDOW, 0, 0, struct.pack(">I", 1)))
            elif a.kind == "continuation":
                if sent == 0:
                    batch.append(frame(HEADERS, 0, 1, h2_headers(
                        b"GET", b"/healthz")))
                batch.append(frame(CONT, 0, 1, b"\x00" + hpack_int(3, 7) +
                                   b"x-a" + hpack_int(4000, 7) + b"a" * 4000))
            sid += 2
            sent += 1
        alive = send_quietly(s, b"".join(batch))
    elapsed = time.monotonic() - t0
    # Let the server catch up before the probe judges.
    time.sleep(0.5)
    probe.finish("h2 %s" % a.kind)
    note("h2 %s: %d sent in %.2f s; server sent %s; goaway %s; %s" %
         (a.kind, sent, elapsed, {k: v for k, v in sorted(rd.frames.items())},
          rd.goaway, "closed" if rd.closed else "still open"))
    print("h2_sent=%d" % sent, flush=True)
    print("h2_closed=%d" % (1 if rd.closed or not alive else 0), flush=True)
    s.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("slow")
    c.add_argument("port", type=int)
    c.add_argument("mode", choices=["headers", "body"])
    c.add_argument("--key", default="slow")
    c.add_argument("--clients", type=int, default=20)
    c.add_argument("--interval", type=float, default=0.05)
    c.add_argument("--limit", type=float, default=120)
    c.add_argument("--probe-key", default="")
    c = sub.add_parser("idle")
    c.add_argument("port", type=int)
    c.add_argument("n", type=int)
    c.add_argument("--key", default="idle")
    c.add_argument("--limit", type=float, default=120)
    c = sub.add_parser("cap")
    c.add_argument("port", type=int)
    c.add_argument("accepted", type=int)
    c.add_argument("extra", type=int)
    c = sub.add_parser("raw")
    c.add_argument("port", type=int)
    c.add_argument("--key", default="raw")
    c = sub.add_parser("h2")
    c.add_argument("port", type=int)
    c.add_argument("kind", choices=["check", "rapid-reset", "rapid-reset-post",
                                    "ping", "settings", "empty-data",
                                    "priority", "window-update",
                                    "continuation"])
    c.add_argument("--count", type=int, default=100000)
    c.add_argument("--path", default="/healthz")
    c.add_argument("--probe-key", default="")
    a = p.parse_args()
    {"slow": cmd_slow, "idle": cmd_idle, "cap": cmd_cap, "raw": cmd_raw,
     "h2": cmd_h2}[a.cmd](a)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Clients for contrib/soak/soak.sh.

load PORTS OUTDIR CONNS: CONNS threads, each with one keep-alive HTTP/1.1
connection at a time to each node (PORTS: the nodes' ports, comma
separated), post increments to a node chosen at random for each request
(a retry too, so a retry may reach a node that never saw the key), until
OUTDIR/stop exists, then
settle every Idempotency-Key request still unanswered and write
OUTDIR/ledger.json: per key what was acknowledged, and what was sent on a
connection that died before an answer came (split by sign, so that the
bounds on a total are exact).

Half the keys (of KEYS in the environment, default 50), "i-N", only ever
get requests with an Idempotency-Key, each key of its own and retried with
the same key and body until it gets an answer other than a connection
failure, 409 or 503: their totals must be exact.  The other half, "n-N",
only get requests without one, never retried: an increment lost in flight
may or may not have been applied.

A fifth of the keyed requests acknowledged by a node that took every
try of them are sent to that node once more, up to REPLAY_S seconds later
(faults strike meanwhile) or when the load stops: the answer must be the
kept one, byte for byte, with "Idempotent-Replayed: true".  Unless the
node may have crashed in between (soak.sh counts each node's crashes in
node*/crashes): a key the journal gives back at start answers the total
it finds then, which may differ by increments of the same counter key
that were in flight with the first (and, with several nodes, that the
others made before the replay).

check LEDGER PGVALUES IDEMROWS GETVALUES...: compare (one GETVALUES file
for each node), print one line per violation or anomaly and a last line
"keys N violations N anomalies N".
"""

import http.client
import json
import os
import random
import socket
import sys
import threading
import time

NKEYS = int(os.environ.get("KEYS", "50"))
VALUES = [1, 2, 7, 100, 1000, 65537, 123456789, 1000000000007]
IDEM_SETTLE_S = 180
REPLAY_P = 0.2
REPLAY_S = 30
# A pause of up to this many seconds after each answer keeps the load
# modest (some 1000 requests/s from 12 clients).
PAUSE_S = 0.01


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.keys = {}
        self.stats = {"sent": 0, "acked": 0, "replayed": 0, "lost": 0,
                      "refused": 0, "retries": 0, "conflicts": 0,
                      "idem_done": 0, "idem_unresolved": 0, "anomalies": 0,
                      "replays_checked": 0, "replays_rebased": 0,
                      "replays_bad": 0}
        self.anomalies = []
        self.bad_replays = []
        # Per counter key: (sent, answered or lost, |value|) of recent
        # requests, for the increments in flight with another.
        self.spans = {}

    def span(self, k, t0, v):
        now = time.monotonic()
        with self.lock:
            sp = self.spans.setdefault(k, [])
            # A lost request may still be applied a moment later.
            sp.append((t0, now + 1, abs(v)))
            # Appended in about the order sent: drop what is too old.
            while sp and sp[0][1] < now - 2 * REPLAY_S - 60:
                sp.pop(0)

    def in_flight(self, k, t0, t1, own):
        with self.lock:
            return sum(a for s, e, a in self.spans.get(k, ())
                       if s <= t1 and e >= t0) - own

    def key(self, k):
        e = self.keys.get(k)
        if e is None:
            e = self.keys[k] = {"acked": 0, "nacked": 0, "lost_pos": 0,
                                "lost_neg": 0, "nlost": 0}
        return e

    def add(self, k, field, v):
        with self.lock:
            self.key(k)[field] += v

    def count(self, name, n=1):
        with self.lock:
            self.stats[name] += n

    def anomaly(self, msg):
        with self.lock:
            self.stats["anomalies"] += 1
            if len(self.anomalies) < 200:
                self.anomalies.append(msg)

    def bad_replay(self, msg):
        with self.lock:
            self.stats["replays_bad"] += 1
            if len(self.bad_replays) < 200:
                self.bad_replays.append(msg)


class Conn:
    """One keep-alive connection; send() says what became of a request."""

    def __init__(self, port):
        self.port = port
        self.c = None

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None

    # Returns ("unsent", None), ("lost", None) or (status, headers, body).
    def send(self, body, headers):
        if self.c is None:
            self.c = http.client.HTTPConnection("127.0.0.1", self.port,
                                                timeout=30)
            try:
                self.c.connect()
            except OSError:
                # Nothing reached the server: nothing can have applied.
                self.close()
                return ("unsent", None, None)
        try:
            self.c.request("POST", "/increment", body=body, headers=headers)
            r = self.c.getresponse()
            data = r.read()
            st, hdrs = r.status, r.getheaders()
            if r.will_close:
                self.close()
            return (st, dict((h.lower(), v) for h, v in hdrs), data)
        except (OSError, http.client.HTTPException) as e:
            # Sent, maybe in part: the server may or may not have it.
            self.close()
            if isinstance(e, socket.timeout):
                return ("timeout", None, None)
            return ("lost", None, None)


def body_of(key, value):
    return json.dumps({"key": key, "value": value},
                      separators=(",", ":")).encode()


def node_crashes(outdir, i):
    """Node i's crashes begun and ended so far (soak.sh)."""
    try:
        with open(os.path.join(outdir, "node%d" % i, "crashes")) as f:
            begun, ended = f.read().split()
            return int(begun), int(ended)
    except FileNotFoundError:
        return 0, 0


def replay(led, conn, rp, stop_at):
    """Send an acknowledged keyed request again to the node that answered
    it; until stop_at (monotonic), retry what gets no verdict."""
    ik, k, v, body, h, kept, outdir, i, crashes, t0, t1, nodes = rp
    while True:
        led.count("sent")
        st, rh, data = conn.send(body, h)
        if st in ("lost", "timeout", "unsent", 503, 409):
            if time.monotonic() > stop_at:
                led.anomaly("%s %d key %s: replay unanswered, the last %s" %
                            (k, v, ik, st))
                return
            time.sleep(0.05 if st != "unsent" else 0.1)
            continue
        break
    flag = rh.get("idempotent-replayed") if st == 202 else None
    ok = st == 202 and flag == "true" and data == kept
    note = ""
    if not ok and st == 202 and flag == "true" and \
            node_crashes(outdir, i)[0] > crashes[1]:
        # Crashed: within what was in flight with the first answer,
        # and with other nodes, what they took until now.
        tol = led.in_flight(k, t0, t1 if nodes == 1 else time.monotonic(),
                            abs(v))
        try:
            a, b = json.loads(kept), json.loads(data)
            ok = a["key"] == b["key"] == k and \
                abs(int(b["value"]) - int(a["value"])) <= tol
        except (ValueError, KeyError, TypeError):
            ok = False
        note = " across a crash, %d in flight" % tol
        if ok:
            led.count("replays_rebased")
    if not ok:
        led.bad_replay("%s %d key %s on node %d: first answered %r "
                       "%.3f s after it was first sent, again %s "
                       "(Idempotent-Replayed: %s) %r %.3f s after%s" %
                       (k, v, ik, i, kept, t1 - t0, st, flag, data[:200],
                        time.monotonic() - t0, note))
    else:
        led.count("replays_checked")


def client(n, ports, outdir, led, stop):
    rnd = random.Random(os.getpid() * 1000 + n)
    conns = [Conn(p) for p in ports]
    seq = 0
    hdr = {"Content-Type": "application/json"}
    replays = []        # (due, node, request): sorted by due
    while True:
        if stop.is_set():
            settle = time.monotonic() + IDEM_SETTLE_S
            for _, i, rp in replays:
                replay(led, conns[i], rp, settle)
            break
        if replays and replays[0][0] <= time.monotonic():
            _, i, rp = replays.pop(0)
            replay(led, conns[i], rp, time.monotonic() + IDEM_SETTLE_S)
            continue
        time.sleep(rnd.random() * PAUSE_S)
        v = rnd.choice(VALUES) * rnd.choice((1, -1))
        idem = rnd.random() < 0.5
        if not idem:
            k = "n-%d" % rnd.randrange(NKEYS // 2)
            led.count("sent")
            st, h, data = rnd.choice(conns).send(body_of(k, v), hdr)
            if st == 202:
                led.add(k, "acked", v)
                led.add(k, "nacked", 1)
                led.count("acked")
            elif st in ("lost", "timeout"):
                led.add(k, "lost_pos" if v > 0 else "lost_neg", v)
                led.add(k, "nlost", 1)
                led.count("lost")
                if st == "timeout":
                    led.anomaly("no answer within 30 s (%s %d)" % (k, v))
            elif st == "unsent" or st == 503:
                led.count("refused")
                if st == "unsent":
                    time.sleep(0.05)
            else:
                led.anomaly("%s %d: status %s %r" % (k, v, st, data[:200]))
            continue
        seq += 1
        k = "i-%d" % rnd.randrange(NKEYS // 2)
        ik = "soak-%d-%d-%d-%d" % (os.getpid(), n, seq, rnd.getrandbits(32))
        h = dict(hdr)
        h["Idempotency-Key"] = ik
        body = body_of(k, v)
        tries = 0
        deadline = None
        last = None
        nodes = set()
        t0 = time.monotonic()
        while True:
            if stop.is_set() and deadline is None:
                deadline = time.monotonic() + IDEM_SETTLE_S
            if deadline is not None and time.monotonic() > deadline:
                led.add(k, "lost_pos" if v > 0 else "lost_neg", v)
                led.count("idem_unresolved")
                led.anomaly("%s %d key %s: no answer after %d tries, "
                            "the last %r" % (k, v, ik, tries, last))
                break
            tries += 1
            led.count("sent")
            if tries > 1:
                led.count("retries")
            i = rnd.randrange(len(conns))
            nodes.add(i)
            crashes = node_crashes(outdir, i)
            ts = time.monotonic()
            st, rh, data = conns[i].send(body, h)
            if st != "unsent":
                led.span(k, ts, v)
            if st == 202:
                led.add(k, "acked", v)
                led.add(k, "nacked", 1)
                led.count("acked")
                led.count("idem_done")
                if rh.get("idempotent-replayed") == "true":
                    led.count("replayed")
                # Another node may have taken a try and kept its own
                # answer (the flush then leaves one out): only a node
                # that saw every try has one answer to keep.
                if len(nodes) == 1 and rnd.random() < REPLAY_P:
                    replays.append((time.monotonic() +
                                    rnd.random() * REPLAY_S, i,
                                    (ik, k, v, body, h, data, outdir, i,
                                     crashes, t0, time.monotonic(),
                                     len(conns))))
                    replays.sort(key=lambda r: r[0])
                break
            if st in ("lost", "timeout", "unsent", 503, 409):
                last = (st, data[:200] if data else None)
                if st == 409:
                    led.count("conflicts")
                elif st == "lost" or st == "timeout":
                    led.count("lost")
                time.sleep(0.05 if st != "unsent" else 0.1)
                continue
            led.anomaly("%s %d key %s: status %s %r" %
                        (k, v, ik, st, data[:200]))
            # Not applied, by the API's word; nothing to retry for.
            break
    for c in conns:
        c.close()


def load(ports, outdir, conns):
    led = Ledger()
    stop = threading.Event()
    threads = [threading.Thread(target=client,
                                args=(i, ports, outdir, led, stop))
               for i in range(conns)]
    for t in threads:
        t.start()
    stopfile = os.path.join(outdir, "stop")
    statfile = os.path.join(outdir, "stats")
    while not os.path.exists(stopfile):
        time.sleep(0.5)
        with led.lock:
            s = dict(led.stats)
        with open(statfile + ".tmp", "w") as f:
            json.dump(s, f)
        os.rename(statfile + ".tmp", statfile)
    stop.set()
    for t in threads:
        t.join()
    with open(os.path.join(outdir, "ledger.json"), "w") as f:
        json.dump({"keys": led.keys, "stats": led.stats,
                   "anomalies": led.anomalies,
                   "bad_replays": led.bad_replays}, f, indent=1)


def read_tab(path):
    d = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            k, v = line.split("\t", 1)
            d[k] = v
    return d


def check(ledger_path, pg_path, idem_rows, *get_paths):
    with open(ledger_path) as f:
        led = json.load(f)
    pg = read_tab(pg_path)
    gets = [(os.path.basename(p), read_tab(p)) for p in get_paths]
    bad = 0
    keys = set(led["keys"]) | set(pg)
    for _, got in gets:
        keys |= set(got)
    keys = sorted(keys)

    def violation(msg):
        nonlocal bad
        bad += 1
        print("violation: " + msg)

    for k in keys:
        e = led["keys"].get(k, {"acked": 0, "lost_pos": 0, "lost_neg": 0})
        lo = e["acked"] + e["lost_neg"]
        hi = e["acked"] + e["lost_pos"]
        v = int(pg.get(k, "0"))
        if not lo <= v <= hi:
            violation("%s: PostgreSQL has %d, acknowledged %d, bounds "
                      "%d..%d" % (k, v, e["acked"], lo, hi))
        for name, got in gets:
            g = got.get(k, "none")
            if g != pg.get(k, "none"):
                violation("%s: GET answers %s (%s), PostgreSQL has %s" %
                          (k, g, name, pg.get(k, "none")))
    done = led["stats"]["idem_done"]
    if led["stats"]["idem_unresolved"] == 0 and int(idem_rows) != done:
        violation("tally_idempotency has %s rows, %d keyed requests were "
                  "acknowledged" % (idem_rows, done))
    for b in led["bad_replays"]:
        violation("replay: " + b)
    more = led["stats"]["replays_bad"] - len(led["bad_replays"])
    if more > 0:
        violation("%d more replays not answered as first" % more)
        bad += more - 1
    for a in led["anomalies"]:
        print("anomaly: " + a)
    print("keys %d violations %d anomalies %d" %
          (len(keys), bad, led["stats"]["anomalies"]))


def main():
    if sys.argv[1] == "load":
        load([int(p) for p in sys.argv[2].split(",")], sys.argv[3],
             int(sys.argv[4]))
    elif sys.argv[1] == "check":
        check(*sys.argv[2:])
    else:
        sys.exit(2)


if __name__ == "__main__":
    main()

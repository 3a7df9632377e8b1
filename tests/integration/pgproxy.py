#!/usr/bin/env python3
"""A PostgreSQL protocol relay that can make one COMMIT land late.

    pgproxy.py LISTEN_SOCKET UPSTREAM_SOCKET CONTROL_DIR

Relays every connection made to the Unix socket LISTEN_SOCKET to
UPSTREAM_SOCKET.  While CONTROL_DIR/arm exists, the next COMMIT a client
sends is held back and that client's connection is closed, as a network
that broke after the client's COMMIT went out would: the client cannot
know whether its transaction committed.  The server side stays open, with
the transaction in progress and its row locks held, until another
connection sends an INSERT or UPDATE of tally_counters (the client's next
try, which then waits on those locks); a second later the held COMMIT goes
to the server, so that the first transaction commits under the second
one.  CONTROL_DIR/held and CONTROL_DIR/released mark the two steps.
"""

import os
import socket
import sys
import threading
import time

LISTEN, UPSTREAM, CTL = sys.argv[1:4]
lock = threading.Lock()
held = {}          # 'up': server socket, 'msgs': bytes held back
release_armed = threading.Event()


def touch(name):
    with open(os.path.join(CTL, name), "w"):
        pass


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_message(s):
    """One typed message: (type, whole message bytes) or (None, None)."""
    t = recv_exact(s, 1)
    if t is None:
        return None, None
    hdr = recv_exact(s, 4)
    if hdr is None:
        return None, None
    body = recv_exact(s, int.from_bytes(hdr, "big") - 4)
    if body is None:
        return None, None
    return t, t + hdr + body


def query_text(t, msg):
    """The SQL text of a Query or Parse message, else b''."""
    body = msg[5:]
    if t == b"Q":
        return body.split(b"\0", 1)[0]
    if t == b"P":
        return body.split(b"\0", 2)[1]
    return b""


def pump_down(up, cl):
    """Server to client; once the client is gone, keep draining."""
    while True:
        try:
            data = up.recv(65536)
        except OSError:
            return
        if not data:
            break
        try:
            cl.sendall(data)
        except OSError:
            pass
    try:
        cl.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def release():
    """Send the held COMMIT once the client's retry waits on its locks."""
    release_armed.wait(30)
    time.sleep(1)
    with lock:
        up, msgs = held["up"], held["msgs"]
    up.sendall(msgs)
    touch("released")


def hold(cl, up, t, msg):
    msgs = msg
    # After a Parse come Bind, Execute and Sync, sent with it.
    while t != b"Q" and t != b"S":
        t, msg = read_message(cl)
        if t is None:
            break
        msgs += msg
    with lock:
        held["up"] = up
        held["msgs"] = msgs
    threading.Thread(target=release, daemon=True).start()
    cl.shutdown(socket.SHUT_RDWR)
    cl.close()
    touch("held")


def serve(cl):
    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    up.connect(UPSTREAM)
    threading.Thread(target=pump_down, args=(up, cl), daemon=True).start()
    hdr = recv_exact(cl, 4)            # the start-up message, untyped
    if hdr is None:
        return
    up.sendall(hdr + recv_exact(cl, int.from_bytes(hdr, "big") - 4))
    while True:
        t, msg = read_message(cl)
        if t is None:
            up.close()
            return
        sql = query_text(t, msg).strip().upper()
        if sql == b"COMMIT" and os.path.exists(os.path.join(CTL, "arm")):
            os.unlink(os.path.join(CTL, "arm"))
            hold(cl, up, t, msg)
            return
        if "msgs" in held and b"TALLY_COUNTERS" in sql and \
                (sql.startswith(b"INSERT") or sql.startswith(b"UPDATE")):
            release_armed.set()
        up.sendall(msg)


def main():
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(LISTEN)
    os.chmod(LISTEN, 0o777)
    srv.listen(16)
    touch("ready")
    while True:
        cl, _ = srv.accept()
        threading.Thread(target=serve, args=(cl,), daemon=True).start()


main()

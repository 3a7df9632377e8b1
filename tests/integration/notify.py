#!/usr/bin/env python3
"""A service manager's end of the sd_notify protocol, for notify.sh.

Binds an AF_UNIX datagram socket (a path, or "@name" in the abstract
namespace), takes the sender's credentials with each message, and writes
one line per message to OUT: the sender's pid, then the message's lines
joined by '|'.  On a READY=1 it asks URL at once and appends the status
(or the error) to the line, so the test can tell whether tallyd said it
was ready before it served.  Runs until killed.
"""
import os
import socket
import struct
import sys
import urllib.request


def main():
    name, out, url = sys.argv[1], sys.argv[2], sys.argv[3]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s.bind("\0" + name[1:] if name.startswith("@") else name)
    with open(out + ".up", "w"):
        pass
    creds = struct.calcsize("3i")
    while True:
        msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(creds))
        pid = -1
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", data[:creds])[0]
        line = "%d %s" % (pid, msg.decode().replace("\n", "|"))
        if "READY=1" in msg.decode().split("\n"):
            try:
                line += " healthz=%d" % urllib.request.urlopen(
                    url, timeout=5).status
            except Exception as e:  # the test reads what went wrong
                line += " healthz=%s" % type(e).__name__
        with open(out, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One HTTP/1.1 client connection for tests/integration/drain.sh.

drain.py PORT STEP...: connects to 127.0.0.1:PORT and runs the steps in
order, so that the shell can stop tallyd between any two of them:

  send=TEXT    send TEXT (\\r and \\n as escapes)
  response=L   read one response; print "L status N", "L connection V"
               (the Connection header, or "none") and "L body B"
  touch=FILE   create FILE, to tell the shell a step is done
  await=FILE   wait (30 s at most) until the shell creates FILE
  eof          wait (20 s at most) for the server to end the connection;
               print "eof", "reset" or "open"

A step that fails prints "error STEP: WHY" and ends the run, exit status 1.
"""

import os
import socket
import sys
import time


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""

    def more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def response(self, label):
        while b"\r\n\r\n" not in self.buf:
            self.more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.more()
        body, self.buf = self.buf[:length], self.buf[length:]
        print("%s status %s" % (label, lines[0].split(" ")[1]))
        print("%s connection %s" % (label, headers.get("connection", "none")))
        print("%s body %s" % (label, body.decode("utf-8", "replace")))

    def eof(self):
        self.sock.settimeout(20)
        try:
            while True:
                if not self.sock.recv(65536):
                    print("eof")
                    return
        except ConnectionResetError:
            print("reset")
        except socket.timeout:
            print("open")


def await_file(path):
    for _ in range(300):
        if os.path.exists(path):
            return
        time.sleep(0.1)
    raise TimeoutError("%s never appeared" % path)


def main():
    conn = Conn(int(sys.argv[1]))
    for step in sys.argv[2:]:
        verb, _, arg = step.partition("=")
        try:
            if verb == "send":
                text = arg.replace("\\r", "\r").replace("\\n", "\n")
                conn.sock.sendall(text.encode())
            elif verb == "response":
                conn.response(arg)
            elif verb == "touch":
                open(arg, "w").close()
            elif verb == "await":
                await_file(arg)
            elif verb == "eof":
                conn.eof()
            else:
                raise ValueError("unknown step")
        except (OSError, EOFError, ValueError) as e:
            print("error %s: %s" % (verb, e))
            return 1
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

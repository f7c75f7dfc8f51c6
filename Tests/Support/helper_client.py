#!/usr/bin/env python3
"""An independent client of relay-helper's socket (4-byte big-endian length, then JSON), for the
kernel tests of the privilege boundary. Every loop is bounded in count and time.

  helper_client.py hello SOCKET                 one hello; prints the JSON answer
  helper_client.py flood SOCKET N SECONDS       keeps up to N connections open, reconnecting as the
                                                server closes them, for SECONDS; prints counts
  helper_client.py hold SOCKET N SECONDS        opens N connections, sends nothing, holds them
  helper_client.py partial SOCKET SECONDS       sends half a frame header, then waits up to SECONDS
                                                for the server to close; prints what came back
"""
import json
import os
import select
import socket
import struct
import sys
import time


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def read_frame(s, timeout):
    s.settimeout(timeout)
    buf = b""
    while len(buf) < 4:
        chunk = s.recv(4 - len(buf))
        if not chunk:
            return None
        buf += chunk
    (n,) = struct.unpack(">I", buf)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return json.loads(body)


def hello(path):
    s = connect(path)
    req = json.dumps({"version": 1, "id": 7, "op": "hello"}).encode()
    try:
        s.sendall(struct.pack(">I", len(req)) + req)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the helper may have answered (a refusal) and closed before we spoke: read it
    print(json.dumps(read_frame(s, 5)))


def flood(path, n, seconds):
    deadline = time.monotonic() + seconds
    conns = []
    opened = refused_answers = 0
    while time.monotonic() < deadline:
        while len(conns) < n and time.monotonic() < deadline:
            try:
                conns.append(connect(path))
                opened += 1
            except OSError:
                time.sleep(0.001)
                break
        # Drop the ones the server has closed (readable: an answer or EOF), keep the rest open.
        r, _, _ = select.select(conns, [], [], 0.01)
        for s in r:
            try:
                data = s.recv(65536)
                if data:
                    refused_answers += 1
            except OSError:
                pass
            s.close()
            conns.remove(s)
    for s in conns:
        s.close()
    print(json.dumps({"opened": opened, "answers": refused_answers}))


def hold(path, n, seconds):
    conns = [connect(path) for _ in range(n)]
    print("holding", len(conns), flush=True)
    time.sleep(seconds)
    for s in conns:
        s.close()


def partial(path, seconds):
    s = connect(path)
    s.sendall(b"\x00\x00")
    t0 = time.monotonic()
    try:
        answer = read_frame(s, seconds)
    except (socket.timeout, TimeoutError):
        print(json.dumps({"closed": False}))
        return
    except ConnectionError:
        answer = None
    print(json.dumps({"closed": True, "after": round(time.monotonic() - t0, 2), "answer": answer}))


if __name__ == "__main__":
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "hello":
        hello(path)
    elif cmd == "flood":
        flood(path, int(sys.argv[3]), float(sys.argv[4]))
    elif cmd == "hold":
        hold(path, int(sys.argv[3]), float(sys.argv[4]))
    elif cmd == "partial":
        partial(path, float(sys.argv[3]))
    else:
        sys.exit("unknown command " + cmd)

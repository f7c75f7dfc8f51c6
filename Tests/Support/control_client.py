#!/usr/bin/env python3
"""A raw HTTP/1.1 client of relayd's control socket for the limit tests (bounded in bytes and time).

  control_client.py declared SOCKET BYTES    POST with Content-Length: BYTES, then the body
  control_client.py chunked SOCKET BYTES     POST with a chunked body of up to BYTES
  control_client.py idle SOCKET SECONDS      connect, send nothing, wait up to SECONDS
  control_client.py hold SOCKET N SECONDS    hold N idle connections; report the status of the last
Each prints one JSON line: the HTTP status seen (or null), bytes of body sent, seconds taken.
"""
import json
import socket
import sys
import time


def status_of(s, timeout):
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, TimeoutError, ConnectionError):
        pass
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = line.split(" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def post(path, total, chunked):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    t0 = time.monotonic()
    head = "POST /v1/reload HTTP/1.1\r\nHost: relayd\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    s.sendall(head.encode())
    sent = 0
    block = b"x" * 65536
    s.settimeout(5)
    try:
        while sent < total and time.monotonic() - t0 < 20:
            if chunked:
                s.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
            else:
                s.sendall(block)
            sent += len(block)
    except OSError:
        pass
    st = status_of(s, 5)
    print(json.dumps({"status": st, "sent": sent, "seconds": round(time.monotonic() - t0, 2)}))


def idle(path, seconds):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    t0 = time.monotonic()
    st = status_of(s, seconds)
    print(json.dumps({"status": st, "sent": 0, "seconds": round(time.monotonic() - t0, 2)}))


def hold(path, n, seconds):
    conns = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        conns.append(s)
    st = status_of(conns[-1], 2)
    print(json.dumps({"status": st, "sent": 0, "seconds": 0}), flush=True)
    time.sleep(seconds)


if __name__ == "__main__":
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "declared":
        post(path, int(sys.argv[3]), False)
    elif cmd == "chunked":
        post(path, int(sys.argv[3]), True)
    elif cmd == "idle":
        idle(path, float(sys.argv[3]))
    elif cmd == "hold":
        hold(path, int(sys.argv[3]), float(sys.argv[4]))

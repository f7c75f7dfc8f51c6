#!/usr/bin/env python3
"""Captures a Relay handshake initiation (first byte 0xC1) on an interface and replays it later,
as an attacker on the underlay would (scapy for the capture, a plain UDP socket for the replay).
Bounded in time.

  initiation_replay.py capture IFACE OUTFILE SECONDS
  initiation_replay.py replay INFILE DST PORT SECONDS     prints {"answers": N, "types": [...]}
"""
import json
import socket
import sys
import time


def capture(iface, out, seconds):
    from scapy.all import UDP, Raw, AsyncSniffer
    sniffer = AsyncSniffer(iface=iface, filter="udp dst port 51820", timeout=float(seconds), count=1,
                           lfilter=lambda p: p.haslayer(Raw) and bytes(p[Raw].load)[:1] == b"\xc1")
    sniffer.start()
    time.sleep(0.5)
    print("listening", flush=True)
    sniffer.join()
    got = sniffer.results
    if not got:
        sys.exit("no initiation seen")
    with open(out, "wb") as f:
        f.write(bytes(got[0][UDP].payload))
    print("captured", len(bytes(got[0][UDP].payload)), "bytes", flush=True)


def replay(path, dst, port, seconds):
    data = open(path, "rb").read()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(data, (dst, int(port)))
    s.settimeout(0.2)
    answers, types = 0, []
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        try:
            d, _ = s.recvfrom(65536)
            answers += 1
            types.append(d[0])
        except socket.timeout:
            pass
    print(json.dumps({"answers": answers, "types": types}))


if __name__ == "__main__":
    if sys.argv[1] == "capture":
        capture(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        replay(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])

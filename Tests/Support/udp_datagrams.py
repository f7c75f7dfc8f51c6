#!/usr/bin/python3
"""UDP datagrams through a Relay tunnel, checked one by one (used by the kernel tests).

  send HOST PORT          bursts of datagrams from one connected socket (IPv4 or IPv6 by HOST):
                          each burst of equal sizes (but its last) in one send with UDP_SEGMENT,
                          so it reaches the gateway at once, with consecutive IPv4 IDs; one burst
                          of unequal sizes one by one
  recv PORT COUNT OUT     receive COUNT datagrams (or stop after 5 s of silence); write their
                          payloads' SHA-256 in arrival order to OUT as JSON
  compare SENT.pcap GOT.pcap PORT
                          read both captures with scapy; print JSON: whether the (IPv4 ID,
                          payload) lists of both sides are equal, whether the receiving side's
                          payloads are the ones sent, in order, and which datagrams there have
                          an IP or UDP checksum that does not verify (IPv4 or IPv6)

The payloads say which datagram they are, so a lost, duplicated, reordered, cut or merged datagram
shows up in the comparison.
"""
import hashlib
import json
import socket
import sys
import time

BURSTS = 12
PER_BURST = 25


def sizes():
    """Datagram sizes: full-size bursts, each ending in a shorter one; one burst of odd sizes."""
    out = []
    for b in range(BURSTS):
        for i in range(PER_BURST):
            if b == 5:
                out.append(300 + 37 * i)          # every size different: nothing to merge
            elif i == PER_BURST - 1:
                out.append(200 + b)               # a shorter last one closes the run
            else:
                out.append(1200)
    return out


def payload(n, size):
    head = b"datagram %05d/%05d " % (n, size)
    body = bytes((n * 31 + k) & 0xFF for k in range(size - len(head)))
    return head + body


UDP_SEGMENT = 103


def send(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    z = sizes()
    for b in range(BURSTS):
        burst = range(b * PER_BURST, (b + 1) * PER_BURST)
        if all(z[n] == z[burst[0]] for n in burst[:-1]) and z[burst[-1]] <= z[burst[0]]:
            s.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, z[burst[0]])
            s.send(b"".join(payload(n, z[n]) for n in burst))
        else:
            s.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 0)
            for n in burst:
                s.send(payload(n, z[n]))
        time.sleep(0.05)
    print(len(z))


def recv(port, count, out):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # IPv4 and IPv6
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("::", port))
    s.settimeout(5)
    got = []
    try:
        while len(got) < count:
            d = s.recv(65535)
            got.append(hashlib.sha256(d).hexdigest())
    except socket.timeout:
        pass
    expected = [hashlib.sha256(payload(n, z)).hexdigest() for n, z in enumerate(sizes())]
    with open(out, "w") as f:
        json.dump({"received": len(got), "expected": len(expected), "identical": got == expected}, f)


def compare(sent, got, port):
    from scapy.all import IP, IPv6, UDP, rdpcap, raw

    def datagrams(path):
        out = []
        for p in rdpcap(path):
            for ip in (IP, IPv6):
                if ip in p and UDP in p and p[UDP].dport == port:
                    out.append(p[ip])
        return out

    a, b = datagrams(sent), datagrams(got)
    expected = [payload(n, z).hex() for n, z in enumerate(sizes())]
    bad = []
    for i, ip in enumerate(b):
        fresh = ip.__class__(raw(ip))
        if isinstance(ip, IP):
            del fresh.chksum
        del fresh[UDP].chksum
        again = ip.__class__(raw(fresh))
        if (isinstance(ip, IP) and again.chksum != ip.chksum) or again[UDP].chksum != ip[UDP].chksum:
            bad.append(i)
    ident = lambda ip: ip.id if isinstance(ip, IP) else None
    key = lambda ips: [(ident(ip), bytes(ip[UDP].payload).hex()) for ip in ips]
    print(json.dumps({"sent": len(a), "got": len(b), "same": key(a) == key(b), "badChecksums": bad,
                      "asExpected": [bytes(ip[UDP].payload).hex() for ip in b] == expected,
                      "sentIDs": [ident(ip) for ip in a][:5], "gotIDs": [ident(ip) for ip in b][:5]}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "send":
        send(sys.argv[2], int(sys.argv[3]))
    elif cmd == "recv":
        recv(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "count":
        print(len(sizes()))

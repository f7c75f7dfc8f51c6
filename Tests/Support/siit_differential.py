#!/usr/bin/python3
"""Differential test of Relay's SIIT translator against tayga (an independent RFC 7915 translator).

Runs inside a network namespace where tayga owns the TUN device `nat64`. Each packet crafted here
with scapy is written straight onto nat64 (an AF_PACKET socket: the kernel hands it to tayga
untouched); tayga's answer is read back from the same device. The same bytes go through
`relay-lab siit`. Both outputs are parsed by scapy and compared field by field, inner packets of
ICMP errors included. Prints one JSON report on stdout.

usage: siit_differential.py RELAY_LAB PREFIX MAP4 MAP6
"""
import json
import select
import socket
import subprocess
import sys
import time

from scapy.all import (ICMP, IP, TCP, UDP, ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig,
                       ICMPv6ParamProblem, ICMPv6TimeExceeded, IPv6, IPv6ExtHdrFragment, IPerror, IPerror6,
                       UDPerror, TCPerror, Raw, conf)

relay_lab, prefix, map4, map6 = sys.argv[1:5]
conf.verb = 0
V4_REMOTE = "198.51.100.7"                     # an IPv4 host, embedded in PREFIX
V6_REMOTE = prefix.split("/")[0] + V4_REMOTE  # its IPv6 name, e.g. 2001:db8:64::198.51.100.7
ETH_P_ALL, PACKET_OUTGOING = 3, 4


def cases():
    """(name, packet) pairs: IPv6->IPv4 first, then IPv4->IPv6."""
    pay = b"relay-siit-differential" * 4
    inner6 = IPv6(src=V6_REMOTE, dst=map6, hlim=3) / UDP(sport=5000, dport=33434) / Raw(b"q" * 24)
    inner4 = IP(src=map4, dst=V4_REMOTE, ttl=3, id=0x1234, flags="DF") / UDP(sport=5000, dport=33434) / Raw(b"q" * 24)
    inner4_back = IP(src=V4_REMOTE, dst=map4, ttl=3, id=0x4321) / UDP(sport=6000, dport=53) / Raw(b"r" * 24)
    six = [
        ("v6 TCP SYN with options", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / TCP(sport=40000, dport=80, flags="S", seq=1000,
            options=[("MSS", 1440), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)])),
        ("v6 TCP data", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=5) / Raw(pay)),
        ("v6 UDP", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / UDP(sport=5353, dport=53) / Raw(pay)),
        ("v6 traffic class and flow label", IPv6(src=map6, dst=V6_REMOTE, hlim=64, tc=0xb8, fl=0x12345) / UDP(sport=1, dport=2) / Raw(pay)),
        ("v6 ICMPv6 echo request", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / ICMPv6EchoRequest(id=77, seq=3, data=pay)),
        ("v6 hop limit 1", IPv6(src=map6, dst=V6_REMOTE, hlim=1) / UDP(sport=1, dport=2) / Raw(pay)),
        ("v6 1400-byte UDP (DF rule)", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / UDP(sport=7, dport=9) / Raw(b"x" * 1352)),
        ("v6 first fragment", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=0xabcd1234) / Raw(bytes(UDP(sport=7, dport=9, len=1008, chksum=0x1234)) + b"f" * 96)),
        ("v6 later fragment", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / IPv6ExtHdrFragment(nh=17, offset=13, m=0, id=0xabcd1234) / Raw(b"g" * 120)),
        ("v6 port unreachable with inner packet", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / ICMPv6DestUnreach(code=4) / inner6),
        ("v6 no route with inner packet", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / ICMPv6DestUnreach(code=0) / inner6),
        ("v6 packet too big with inner packet", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / ICMPv6PacketTooBig(mtu=1400) / inner6),
        ("v6 time exceeded with inner packet", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / ICMPv6TimeExceeded(code=0) / inner6),
        ("v6 parameter problem (pointer 7)", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / ICMPv6ParamProblem(code=0, ptr=7) / inner6),
        ("v6 parameter problem (pointer 24)", IPv6(src=map6, dst=V6_REMOTE, hlim=64) / ICMPv6ParamProblem(code=0, ptr=24) / inner6),
        ("v6 unknown next header", IPv6(src=map6, dst=V6_REMOTE, hlim=64, nh=253) / Raw(pay)),
    ]
    four = [
        ("v4 TCP SYN with options", IP(src=V4_REMOTE, dst=map4, ttl=64, id=7, flags="DF") / TCP(sport=80, dport=40000, flags="SA", seq=5, ack=1001,
            options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (9, 1)), ("NOP", None), ("WScale", 7)])),
        ("v4 TCP data", IP(src=V4_REMOTE, dst=map4, ttl=64, id=8, flags="DF") / TCP(sport=80, dport=40000, flags="PA", seq=6, ack=1001) / Raw(pay)),
        ("v4 UDP", IP(src=V4_REMOTE, dst=map4, ttl=64, id=9) / UDP(sport=53, dport=5353) / Raw(pay)),
        ("v4 UDP zero checksum", IP(src=V4_REMOTE, dst=map4, ttl=64, id=10) / UDP(sport=53, dport=5353, chksum=0) / Raw(pay)),
        ("v4 TOS", IP(src=V4_REMOTE, dst=map4, ttl=64, id=11, tos=0xb8) / UDP(sport=1, dport=2) / Raw(pay)),
        ("v4 IP options (record route)", IP(src=V4_REMOTE, dst=map4, ttl=64, id=12, options=[b"\x07\x07\x04\x00\x00\x00\x00"]) / UDP(sport=1, dport=2) / Raw(pay)),
        ("v4 ICMP echo request", IP(src=V4_REMOTE, dst=map4, ttl=64, id=13) / ICMP(type=8, id=77, seq=3) / Raw(pay)),
        ("v4 TTL 1", IP(src=V4_REMOTE, dst=map4, ttl=1, id=14) / UDP(sport=1, dport=2) / Raw(pay)),
        ("v4 DF clear, not fragmented", IP(src=V4_REMOTE, dst=map4, ttl=64, id=15, flags=0) / UDP(sport=1, dport=2) / Raw(pay)),
        ("v4 first fragment", IP(src=V4_REMOTE, dst=map4, ttl=64, id=16, flags="MF", frag=0) / Raw(bytes(UDP(sport=7, dport=9, len=1008, chksum=0x1234)) + b"f" * 96)),
        ("v4 later fragment", IP(src=V4_REMOTE, dst=map4, ttl=64, id=16, flags=0, frag=13, proto=17) / Raw(b"g" * 120)),
        ("v4 port unreachable with inner packet", IP(src=V4_REMOTE, dst=map4, ttl=64, id=17) / ICMP(type=3, code=3) / inner4),
        ("v4 host unreachable with inner packet", IP(src=V4_REMOTE, dst=map4, ttl=64, id=18) / ICMP(type=3, code=1) / inner4),
        ("v4 fragmentation needed with inner packet", IP(src=V4_REMOTE, dst=map4, ttl=64, id=19) / ICMP(type=3, code=4, nexthopmtu=1300) / inner4),
        ("v4 time exceeded with inner packet", IP(src=V4_REMOTE, dst=map4, ttl=64, id=20) / ICMP(type=11, code=0) / inner4),
        ("v4 parameter problem (pointer 9)", IP(src=V4_REMOTE, dst=map4, ttl=64, id=21) / ICMP(type=12, code=0, ptr=9) / inner4),
        ("v4 protocol unreachable with inner packet", IP(src=V4_REMOTE, dst=map4, ttl=64, id=22) / ICMP(type=3, code=2) / inner4),
        ("v4 admin prohibited with inner packet", IP(src=V4_REMOTE, dst=map4, ttl=64, id=23) / ICMP(type=3, code=13) / inner4),
        ("v4 ICMP timestamp (no IPv6 equivalent)", IP(src=V4_REMOTE, dst=map4, ttl=64, id=24) / ICMP(type=13)),
        ("v4 echo reply to the mapped host", IP(src=V4_REMOTE, dst=map4, ttl=64, id=25) / ICMP(type=0, id=5, seq=6) / Raw(pay)),
    ]
    del inner4_back
    return six + four


# Every deliberate difference from tayga, with the RFC clause behind it (docs/siit.md lists the same).
# case-name prefix -> (what differs, why)
DELIBERATE = {
    "DF": ("IPv6->IPv4 packets of 1260 bytes or less: tayga sets DF (RFC 6145), Relay clears it",
           "RFC 7915 section 5.1: DF is set only when the translated packet is larger than 1260 bytes"),
    "v6 hop limit 1": ("tayga answers with ICMPv6 time exceeded; Relay drops (counted)",
                       "RFC 7915 section 5.1 applies the hop limit check to a translator acting as a router; in relayd the kernel's forwarding already did it (decrementing is off on the site path), the standalone filter drops"),
    "v4 TTL 1": ("tayga answers with ICMP time exceeded; Relay drops (counted)", "RFC 7915 section 4.1 (as above)"),
    "v6 parameter problem": ("tayga drops ICMPv6 parameter problem code 0; Relay translates it with the pointer mapped",
                             "RFC 7915 section 5.2, figure 6"),
    "v4 parameter problem": ("tayga drops ICMPv4 parameter problem; Relay translates it with the pointer mapped", "RFC 7915 section 4.2, figure 3"),
    "v4 UDP zero checksum": ("tayga drops an unfragmented IPv4 UDP datagram with a zero checksum; Relay computes the checksum",
                             "RFC 7915 section 4.5 (stateless translators compute it for unfragmented datagrams)"),
}
DF_FIELDS = {"0:IP.flags", "0:IP.chksum", "2:IPerror.flags", "2:IPerror.chksum"}


def checksums_ok(raw):
    """Relay's output checksums, recomputed by scapy from scratch (outer IP and transport)."""
    p = parse(raw)
    q = p.copy()
    if q.version == 4:
        del q.chksum
        if q.frag or q.flags.MF:
            return q.__class__(bytes(q)).chksum == p.chksum
    elif IPv6ExtHdrFragment in q:
        return True
    l4 = q.payload
    for name in ("chksum", "cksum"):
        if name in l4.fields:
            del l4.fields[name]
    r = q.__class__(bytes(q))
    ok = r.payload.fields.get("chksum", r.payload.fields.get("cksum")) == p.payload.fields.get("chksum", p.payload.fields.get("cksum"))
    return ok and (p.version == 6 or r.chksum == p.chksum)


def tayga(sock, raw):
    """Writes raw onto nat64 (tayga reads it) and returns what tayga writes back, or None."""
    sock.setblocking(False)
    try:
        while True:
            sock.recvfrom(65535)
    except BlockingIOError:
        pass
    proto = 0x86DD if raw[0] >> 4 == 6 else 0x0800
    sock.sendto(raw, ("nat64", proto))
    deadline = time.time() + 0.4
    while time.time() < deadline:
        r, _, _ = select.select([sock], [], [], 0.05)
        if not r:
            continue
        data, addr = sock.recvfrom(65535)
        if addr[2] == PACKET_OUTGOING:
            continue
        return data
    return None


def fields(pkt, prefix=""):
    """Flattened {layer.field: value} of every layer, inner packets included."""
    out = {}
    layer, depth = pkt, 0
    while layer is not None and layer.__class__.__name__ != "NoPayload":
        name = f"{prefix}{depth}:{layer.__class__.__name__}"
        for f in layer.fields_desc:
            v = layer.getfieldval(f.name)
            if isinstance(v, (bytes, bytearray)):
                v = v.hex()
            elif isinstance(v, list):
                v = repr(v)
            elif not isinstance(v, (int, str, type(None))):
                v = str(v)
            out[f"{name}.{f.name}"] = v
        layer = layer.payload
        depth += 1
    return out


def parse(raw):
    return IPv6(raw) if raw[0] >> 4 == 6 else IP(raw)


def main():
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind(("nat64", 0))
    todo = cases()
    raws = [bytes(p) for _, p in todo]
    relay = subprocess.run([relay_lab, "siit", "--prefix", prefix, "--map", f"{map4}={map6}"], input="\n".join(r.hex() for r in raws) + "\n",
                           capture_output=True, text=True, check=True).stdout.splitlines()
    report = []
    for (name, pkt), raw, rline in zip(todo, raws, relay):
        t = tayga(sock, raw)
        # An answer of the input's own family is tayga's ICMP error about it (TTL, unreachable).
        tayga_error = t is not None and (t[0] >> 4) == (raw[0] >> 4)
        entry = {"case": name, "tayga": None if t is None else ("error " if tayga_error else "") + parse(t).summary(),
                 "relay": rline if rline.startswith("DROP") else parse(bytes.fromhex(rline)).summary(), "differences": []}
        if t is not None and not tayga_error and not rline.startswith("DROP"):
            a, b = fields(parse(t)), fields(parse(bytes.fromhex(rline)))
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    entry["differences"].append({"field": k, "tayga": a.get(k), "relay": b.get(k)})
            entry["identical_bytes"] = t == bytes.fromhex(rline)
        if not rline.startswith("DROP"):
            entry["relay_checksums_ok"] = checksums_ok(bytes.fromhex(rline))
        # Explain each difference by the list above, or call it unexpected.
        why = None
        if entry["differences"] and {d["field"] for d in entry["differences"]} <= DF_FIELDS and name.startswith("v6"):
            why = "DF"
        elif not entry.get("identical_bytes"):
            why = next((k for k in DELIBERATE if name.startswith(k)), None)
        both_dropped = t is None and rline.startswith("DROP")
        entry["deliberate"] = DELIBERATE[why][0] if why else None
        entry["expected"] = bool(entry.get("identical_bytes") or both_dropped or why)
        report.append(entry)
    print(json.dumps({"cases": report, "deliberate": DELIBERATE}, indent=1))


main()

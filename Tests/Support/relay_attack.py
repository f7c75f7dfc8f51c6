#!/usr/bin/env python3
"""An attacker on the underlay against a relay (scapy; run as root inside a lab namespace).
Bounded in count and time.

  relay_attack.py capture IFACE SRC OUTFILE SECONDS
      keeps the first forward frame (0xD4, kind 1) that SRC sends to the relay
  relay_attack.py spoof FRAMEFILE RELAY PORT SRC SPORT OTHER
      sends, each with a spoofed source: the captured frame replayed from SRC:SPORT (its own
      address), a forged copy from SRC:SPORT, the frame from OTHER:SPORT (someone else's address),
      ten garbage datagrams and one oversized (9500 bytes); prints {"sent": N}
"""
import json, os, sys, time


def capture(iface, src, out, seconds):
    from scapy.all import UDP, IP, Raw, AsyncSniffer
    sniffer = AsyncSniffer(iface=iface, filter="udp and src host %s and dst port 51821" % src, timeout=float(seconds), count=1,
                           lfilter=lambda p: p.haslayer(Raw) and bytes(p[Raw].load)[:2] == b"\xd4\x01")
    sniffer.start()
    time.sleep(0.5)
    print("listening", flush=True)
    sniffer.join()
    got = sniffer.results
    if not got:
        sys.exit("no forward frame seen")
    with open(out, "wb") as f:
        f.write(bytes(got[0][UDP].payload))
    print("captured", flush=True)


def spoof(path, relay, port, src, sport, other):
    from scapy.all import IP, UDP, Raw, send, fragment
    frame = open(path, "rb").read()
    forged = bytearray(frame); forged[20] ^= 0x01
    pkts = [IP(src=src, dst=relay) / UDP(sport=int(sport), dport=int(port)) / Raw(frame),
            IP(src=src, dst=relay) / UDP(sport=int(sport), dport=int(port)) / Raw(bytes(forged)),
            IP(src=other, dst=relay) / UDP(sport=int(sport), dport=int(port)) / Raw(frame)]
    pkts += [IP(src=other, dst=relay) / UDP(sport=40000 + i, dport=int(port)) / Raw(os.urandom(20 + 7 * i)) for i in range(10)]
    big = IP(src=other, dst=relay, flags=0) / UDP(sport=40100, dport=int(port)) / Raw(b"\xd4\x01\x00\x00" + os.urandom(9496))
    send(pkts, verbose=False, inter=0.01)
    send(fragment(big, fragsize=1400), verbose=False)
    pkts.append(big)
    print(json.dumps({"sent": len(pkts)}))


if sys.argv[1] == "capture":
    capture(*sys.argv[2:6])
else:
    spoof(*sys.argv[2:8])

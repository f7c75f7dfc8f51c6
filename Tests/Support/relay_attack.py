#!/usr/bin/env python3
"""An attacker on the underlay against a relay (scapy; run as root inside a lab namespace).
Bounded in count and time.

  relay_attack.py capture IFACE SRC OUTFILE SECONDS
      keeps the first forward frame (0xD4, kind 1) that SRC sends to the relay
  relay_attack.py spoof FRAMEFILE RELAY PORT SRC SPORT OTHER
      sends, each with a spoofed source: the captured frame replayed from SRC:SPORT (its own
      address), a forged copy from SRC:SPORT, the frame from OTHER:SPORT (someone else's address),
      ten garbage datagrams and one oversized (9500 bytes); prints {"sent": N}
  relay_attack.py impostor RELAY PORT RELAY_KEY_B64 CLAIMED_KEY_B64 TOKEN
      (pyenv python3: noiseprotocol) three registers that claim CLAIMED_KEY (a registered node's)
      without holding its private key: the Noise IK message carries the claimed static key, the
      DH uses another; prints {"sent": 3, "answers": N}
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


def impostor(relay, port, relay_key, claimed, token):
    import base64, hashlib, hmac, socket, struct
    from noise.connection import NoiseConnection, Keypair
    relay_pub, claimed_pub = base64.b64decode(relay_key), base64.b64decode(claimed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1)
    answers = 0
    for _ in range(3):
        n = NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_SHA256")
        n.set_as_initiator()
        n.set_keypair_from_private_bytes(Keypair.STATIC, os.urandom(32))
        n.noise_protocol.keypairs["s"].public_bytes = claimed_pub   # what message 1 says; the DH uses our own key
        n.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, relay_pub)
        n.start_handshake()
        m1 = n.write_message(struct.pack(">Q", time.time_ns()) + token.encode())
        body = bytes([0xD1, 0, 0, 0]) + struct.pack("<I", 7) + m1
        mac1 = hmac.new(hashlib.sha256(b"mac1----" + relay_pub).digest(), body, hashlib.sha256).digest()[:16]
        sock.sendto(body + mac1 + b"\0" * 16, (relay, int(port)))
        try:
            sock.recvfrom(4096)
            answers += 1
        except socket.timeout:
            pass
    print(json.dumps({"sent": 3, "answers": answers}))


if sys.argv[1] == "capture":
    capture(*sys.argv[2:6])
elif sys.argv[1] == "impostor":
    impostor(*sys.argv[2:7])
else:
    spoof(*sys.argv[2:8])

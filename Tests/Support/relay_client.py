#!/usr/bin/python3
"""A relay client written from docs/relay-protocol.md alone (not from Relay's code).

Two nodes register with a relay (token admission), look each other up, exchange datagrams through
it, ping; then a few things the relay must refuse. Prints one JSON object with what happened.
usage: relay_client.py HOST PORT RELAY_PUBLIC_KEY_B64 TOKEN
"""
import base64, hashlib, hmac, json, os, socket, struct, sys, time
from noise.connection import NoiseConnection, Keypair
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

host, port, relay_pub, token = sys.argv[1], int(sys.argv[2]), base64.b64decode(sys.argv[3]), sys.argv[4].encode()
relay = (host, port)


def aead_tag(key, counter, data):
    return ChaCha20Poly1305(key).encrypt(b"\0" * 4 + struct.pack("<Q", counter), b"", data)


class Node:
    def __init__(self, token):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        self.priv = os.urandom(32)
        self.index = struct.unpack("<I", os.urandom(4))[0] | 1
        self.token = token
        self.counter = 0
        self.window = set()

    def register(self):
        n = NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_SHA256")
        n.set_as_initiator()
        n.set_keypair_from_private_bytes(Keypair.STATIC, self.priv)
        n.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, relay_pub)
        n.start_handshake()
        m1 = n.write_message(struct.pack(">Q", time.time_ns()) + self.token)
        body = bytes([0xD1, 0, 0, 0]) + struct.pack("<I", self.index) + m1
        mac1 = hmac.new(hashlib.sha256(b"mac1----" + relay_pub).digest(), body, hashlib.sha256).digest()[:16]
        self.sock.sendto(body + mac1 + b"\0" * 16, relay)
        reply, _ = self.sock.recvfrom(4096)
        if reply[0] == 0xD3:
            return {"refused": reply[8], "size": len(reply), "sent": len(body) + 32}
        assert reply[0] == 0xD2 and len(reply) == 68, reply[:4]
        sender, receiver = struct.unpack("<II", reply[4:12])
        assert receiver == self.index
        payload = n.read_message(reply[12:])
        self.id, heartbeat = struct.unpack("<IH", payload[:6])
        assert self.id == sender
        cs_send, cs_recv = n.noise_protocol.cipher_state_encrypt, n.noise_protocol.cipher_state_decrypt
        self.send_key, self.recv_key = cs_send.k, cs_recv.k
        return {"id": self.id, "heartbeat": heartbeat, "size": len(reply), "sent": len(body) + 32}

    def frame(self, kind, body):
        hdr = bytes([0xD4, kind, 0, 0]) + struct.pack("<IQ", self.id, self.counter)
        f = hdr + body + aead_tag(self.send_key, self.counter, hdr + body)
        self.counter += 1
        return f

    def send(self, kind, body):
        f = self.frame(kind, body)
        self.sock.sendto(f, relay)
        return f

    def recv(self):
        data, _ = self.sock.recvfrom(65536)
        assert data[0] == 0xD4, data[:4]
        kind = data[1]
        session, counter = struct.unpack("<IQ", data[4:16])
        assert session == self.index
        body, tag = data[16:-16], data[-16:]
        assert aead_tag(self.recv_key, counter, data[:-16]) == tag, "bad tag from the relay"
        assert counter not in self.window, "replayed by the relay"
        self.window.add(counter)
        return kind, body


def public_of(priv):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


out = {}
a, b = Node(token), Node(token)
out["register_a"], out["register_b"] = a.register(), b.register()
# The first frame from each activates its registration; the pong carries the address seen.
for name, n in (("a", a), ("b", b)):
    n.send(3, b"")
    kind, body = n.recv()
    fam, port_seen = body[0], struct.unpack(">H", body[17:19])[0]
    out["pong_" + name] = {"kind": kind, "family": fam, "address": socket.inet_ntoa(body[13:17]), "port": port_seen,
                           "own_port": n.sock.getsockname()[1]}
# a looks b up, then sends through the relay; b answers.
a.send(5, public_of(b.priv))
kind, body = a.recv()
out["lookup"] = {"kind": kind, "id": struct.unpack("<I", body[32:36])[0] if kind == 6 else None, "b_id": b.id}
got = []
for i in range(20):
    a.send(1, struct.pack("<I", b.id) + b"datagram %d" % i)
for i in range(20):
    kind, body = b.recv()
    got.append((kind, struct.unpack("<I", body[:4])[0], body[4:].decode()))
out["delivered"] = {"count": len(got), "all_deliver": all(k == 2 for k, _, _ in got), "from_a": all(s == a.id for _, s, _ in got),
                    "in_order": [d for _, _, d in got] == ["datagram %d" % i for i in range(20)]}
b.send(1, struct.pack("<I", a.id) + b"reply")
kind, body = a.recv()
out["reply"] = {"kind": kind, "data": body[4:].decode()}
# To an id nobody holds: a typed answer.
a.send(1, struct.pack("<I", 0x7777) + b"x")
kind, body = a.recv()
out["nobody"] = {"kind": kind, "body": body.hex()}
# A replayed frame and a forged one are dropped (b receives nothing more).
f = a.frame(1, struct.pack("<I", b.id) + b"once")
a.sock.sendto(f, relay)
a.sock.sendto(f, relay)
forged = bytearray(a.frame(1, struct.pack("<I", b.id) + b"forged")); forged[20] ^= 1
a.sock.sendto(bytes(forged), relay)
kind, body = b.recv()
extra = 0
b.sock.settimeout(0.5)
try:
    while True:
        b.recv(); extra += 1
except socket.timeout:
    pass
out["replay_forged"] = {"first": body[4:].decode(), "extra": extra}
# A node with a wrong token is refused.
c = Node(b"not-the-right-token-at-all")
out["wrong_token"] = c.register()
print(json.dumps(out))

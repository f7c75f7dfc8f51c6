#!/usr/bin/python3
"""A relay client written from docs/relay-protocol.md alone (not from Relay's code).

Over UDP: two nodes register with a relay (token admission), look each other up, exchange
datagrams through it, ping; then a few things the relay must refuse.
With --front-door: one node on UDP, one on a WebSocket (HTTP/1.1 Upgrade, PyPI `websockets`) and
one on an RFC 8441 WebSocket over HTTP/2 (PyPI `h2`), all over TLS verified against CAFILE for
SERVER_NAME, exchange datagrams across the three transports.
Prints one JSON object with what happened.
usage: relay_client.py HOST PORT RELAY_PUBLIC_KEY_B64 TOKEN
       relay_client.py --front-door HOST UDP_PORT TLS_PORT RELAY_PUBLIC_KEY_B64 TOKEN CAFILE SERVER_NAME
       relay_client.py --hold HOST UDP_PORT TLS_PORT RELAY_PUBLIC_KEY_B64 TOKEN CAFILE SERVER_NAME SECONDS
       relay_client.py --claims HOST PORT RELAY_PUBLIC_KEY_B64 TOKEN
       relay_client.py --register-priv HOST PORT RELAY_PUBLIC_KEY_B64 TOKEN PRIVATE_KEY_HEX
"""
import base64, hashlib, hmac, json, os, socket, ssl, struct, sys, time
from noise.connection import NoiseConnection, Keypair
from relay_tag import relay_tag

if sys.argv[1] in ("--claims", "--register-priv"):
    mode = sys.argv[1]
    host, port, relay_pub, token = sys.argv[2], int(sys.argv[3]), base64.b64decode(sys.argv[4]), sys.argv[5].encode()
    sys.argv = sys.argv[:1] + ["-"] + sys.argv[6:]
else:
    mode = None
front_door = sys.argv[1] in ("--front-door", "--hold")
hold = sys.argv[1] == "--hold"
if hold:
    hold_seconds = float(sys.argv[9])
if mode:
    pass
elif front_door:
    host, port, tls_port, relay_pub, token, cafile, server_name = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), base64.b64decode(sys.argv[5]), sys.argv[6].encode(), sys.argv[7], sys.argv[8]
else:
    host, port, relay_pub, token = sys.argv[1], int(sys.argv[2]), base64.b64decode(sys.argv[3]), sys.argv[4].encode()
relay = (host, port)


class UDP:
    """A relay message is one datagram."""
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)

    def send(self, data):
        self.sock.sendto(data, relay)

    def recv(self):
        return self.sock.recvfrom(65536)[0]


def tls_context(alpn):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([alpn])
    return ctx


class WebSocket:
    """A relay message is one binary WebSocket message (HTTP/1.1 Upgrade to wss://SERVER_NAME/relay)."""
    def __init__(self):
        from websockets.sync.client import connect
        sock = socket.create_connection((host, tls_port))
        self.ws = connect("wss://%s:%d/relay" % (server_name, tls_port), sock=sock, ssl=tls_context("http/1.1"), server_hostname=server_name).__enter__()

        self.queue, self.bundles = [], 0

    def send(self, data):
        self.ws.send(data)

    def recv(self):
        if not self.queue:
            try:
                m = self.ws.recv(timeout=2)
            except TimeoutError:
                raise socket.timeout()
            assert isinstance(m, bytes), "a text message from the relay"
            self.queue = split_bundle(m)
            self.bundles += m[0] == 0xD6
        return self.queue.pop(0)


def split_bundle(m):
    """A bundle (0xD6, then u16-length-prefixed relay messages) or one relay message."""
    if m[0] != 0xD6:
        return [m]
    out, i = [], 1
    while i < len(m):
        n = struct.unpack_from("<H", m, i)[0]
        assert n > 0 and i + 2 + n <= len(m), "malformed bundle from the relay"
        out.append(m[i + 2:i + 2 + n]); i += 2 + n
    assert out, "empty bundle from the relay"
    return out


def bundle(frames):
    return b"\xD6" + b"".join(struct.pack("<H", len(f)) + f for f in frames)


class H2WebSocket:
    """A relay message is one binary WebSocket message on an HTTP/2 stream opened by an extended
    CONNECT (RFC 8441: :protocol websocket), the WebSocket frames (RFC 6455, masked by the client)
    carried in DATA frames."""
    def __init__(self):
        import h2.config, h2.connection, h2.events, h2.settings
        self.events = h2.events
        raw = socket.create_connection((host, tls_port))
        self.sock = tls_context("h2").wrap_socket(raw, server_hostname=server_name)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()
        self.settings = {}
        while h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL not in self.settings:
            self.pump()
        assert self.settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1, "the relay does not enable extended CONNECT"
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.stream, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":path", "/relay"),
                                            (":authority", server_name), ("sec-websocket-version", "13")])
        self.flush()
        self.status = None
        self.buf = b""
        self.messages = []
        while self.status is None:
            self.pump()
        assert self.status == "200", "CONNECT answered %s" % self.status

    def flush(self):
        self.sock.sendall(self.conn.data_to_send())

    def pump(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the relay closed the connection")
        for e in self.conn.receive_data(data):
            if isinstance(e, self.events.RemoteSettingsChanged):
                for k, v in e.changed_settings.items():
                    self.settings[k] = v.new_value
            elif isinstance(e, self.events.ResponseReceived):
                self.status = dict((k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v) for k, v in e.headers)[":status"]
            elif isinstance(e, self.events.DataReceived):
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                self.buf += e.data
                self.parse()
        self.flush()

    def parse(self):
        # Server frames: unmasked, FIN set (the relay sends whole messages).
        while len(self.buf) >= 2:
            op, n, off = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4: return
                n, off = struct.unpack(">H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10: return
                n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
            if len(self.buf) < off + n: return
            payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
            if op == 2:
                self.messages.append(payload)

    def send(self, data):
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.conn.send_data(self.stream, head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        self.flush()

    def recv(self):
        self.sock.settimeout(2)
        deadline = time.time() + 2
        while not self.messages:
            if time.time() > deadline:
                raise socket.timeout()
            try:
                self.pump()
            except (TimeoutError, socket.timeout):
                raise socket.timeout()
        return self.messages.pop(0)


class Node:
    def __init__(self, token, transport=None):
        self.t = transport or UDP()
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
        self.t.send(body + mac1 + b"\0" * 16)
        reply = self.t.recv()
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
        f = hdr + body + relay_tag(self.send_key, hdr + body)
        self.counter += 1
        return f

    def send(self, kind, body):
        f = self.frame(kind, body)
        self.t.send(f)
        return f

    def recv(self):
        data = self.t.recv()
        assert data[0] == 0xD4, data[:4]
        kind = data[1]
        session, counter = struct.unpack("<IQ", data[4:16])
        assert session == self.index
        body, tag = data[16:-16], data[-16:]
        assert relay_tag(self.recv_key, data[:-16]) == tag, "bad tag from the relay"
        assert counter not in self.window, "replayed by the relay"
        self.window.add(counter)
        return kind, body


def public_of(priv):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def across_transports():
    """One node per transport; each sends to each other one through the relay."""
    out = {}
    nodes = {"udp": Node(token), "ws": Node(token, WebSocket()), "h2": Node(token, H2WebSocket())}
    for name, n in nodes.items():
        out["register_" + name] = n.register()
        n.send(3, b"")
        kind, body = n.recv()
        out["pong_" + name] = {"kind": kind, "family": body[0]}
    for src, a in nodes.items():
        for dst, b in nodes.items():
            if a is b:
                continue
            a.send(5, public_of(b.priv))
            kind, body = a.recv()
            assert kind == 6 and struct.unpack("<I", body[32:36])[0] == b.id, (src, dst, kind)
            for i in range(5):
                a.send(1, struct.pack("<I", b.id) + b"%s to %s %d" % (src.encode(), dst.encode(), i))
            got = []
            for i in range(5):
                kind, body = b.recv()
                got.append((kind, struct.unpack("<I", body[:4])[0], body[4:].decode()))
            out["%s_to_%s" % (src, dst)] = {"count": len(got), "all_deliver": all(k == 2 for k, _, _ in got), "from": all(s == a.id for _, s, _ in got),
                                             "in_order": [d for _, _, d in got] == ["%s to %s %d" % (src, dst, i) for i in range(5)]}
    # Callsigns claimed over each WebSocket (frame kind 9, answered by kind 10).
    for name, call in (("ws", "WS-NODE1"), ("h2", "H2-NODE1")):
        nodes[name].send(9, b"\x00" + call.encode())
        kind, body = nodes[name].recv()
        out["claim_" + name] = [kind, body[0], body[1:].decode()]
    # A bundle: three frames in one WebSocket message; from then on the relay answers in bundles.
    ws, udp = nodes["ws"], nodes["udp"]
    ws.t.send(bundle([ws.frame(1, struct.pack("<I", udp.id) + b"bundled %d" % i) for i in range(3)]))
    got = [udp.recv()[1][4:].decode() for _ in range(3)]
    before = ws.t.bundles
    for i in range(3):
        udp.send(1, struct.pack("<I", ws.id) + b"back %d" % i)
    back = [ws.recv()[1][4:].decode() for _ in range(3)]
    out["bundle"] = {"delivered": got, "answers": back, "bundles_before": before, "bundles_after": ws.t.bundles}
    # A malformed bundle (a length past the end) ends the connection with 1007.
    bad = Node(token, WebSocket())
    bad.register(); bad.send(3, b""); bad.recv()
    bad.t.send(b"\xD6\x40\x00\xD4")
    try:
        bad.t.ws.recv(timeout=2)
        out["malformed_bundle"] = "still open"
    except Exception as e:
        code = getattr(getattr(e, "rcvd", None), "code", None)
        out["malformed_bundle"] = code
    # A leave over a WebSocket, then closing it: the relay drops the registration at once.
    nodes["ws"].send(8, b"")
    print(json.dumps(out))


def hold_websocket():
    """One node on a WebSocket pings the relay every 0.2 s for HOLD_SECONDS: prints how many pongs
    came back and whether the connection stayed up (a certificate reload must not drop it)."""
    n = Node(token, WebSocket())
    n.register()
    print("registered", flush=True)
    sent = pongs = 0
    end = time.time() + hold_seconds
    error = None
    while time.time() < end:
        try:
            n.send(3, b""); sent += 1
            kind, _ = n.recv()
            pongs += kind == 4
        except Exception as e:
            error = repr(e)
            break
        time.sleep(0.2)
    print(json.dumps({"sent": sent, "pongs": pongs, "error": error}))


def claims():
    """Callsign claims (frame kind 9, answered by kind 10: a result byte, then the callsign)."""
    out = {}
    a, b, c = Node(token), Node(token), Node(token)
    for n in (a, b, c):
        n.register(); n.send(3, b""); n.recv()
    def claim(n, name, listed=False):
        n.send(9, bytes([1 if listed else 0]) + name.encode())
        kind, body = n.recv()
        assert kind == 10, kind
        return [body[0], body[1:].decode()]
    out["a_first"] = claim(a, "n0call")
    out["a_again"] = claim(a, "N0CALL")
    out["b_taken"] = claim(b, "N0Call")
    out["b_reserved"] = claim(b, "admin")
    out["b_short"] = claim(b, "ab")
    out["b_bad_char"] = claim(b, "no_call")
    out["a_second"] = claim(a, "A-TWO")
    out["a_third"] = claim(a, "A-THREE")
    out["a_over_quota"] = claim(a, "A-FOUR")
    out["c_listed"] = claim(c, "LISTED1", listed=True)
    out["keys"] = {"a": base64.b64encode(public_of(a.priv)).decode(), "b": base64.b64encode(public_of(b.priv)).decode(),
                   "c": base64.b64encode(public_of(c.priv)).decode(), "c_priv": c.priv.hex()}
    print(json.dumps(out))


def register_priv(priv_hex):
    n = Node(token)
    n.priv = bytes.fromhex(priv_hex)
    r = n.register()
    print(json.dumps(r))


if mode == "--claims":
    claims()
    sys.exit(0)
if mode == "--register-priv":
    register_priv(sys.argv[2])
    sys.exit(0)
if hold:
    hold_websocket()
    sys.exit(0)
if front_door:
    across_transports()
    sys.exit(0)

out = {}
a, b = Node(token), Node(token)
out["register_a"], out["register_b"] = a.register(), b.register()
# The first frame from each activates its registration; the pong carries the address seen.
for name, n in (("a", a), ("b", b)):
    n.send(3, b"")
    kind, body = n.recv()
    fam, port_seen = body[0], struct.unpack(">H", body[17:19])[0]
    out["pong_" + name] = {"kind": kind, "family": fam, "address": socket.inet_ntoa(body[13:17]), "port": port_seen,
                           "own_port": n.t.sock.getsockname()[1]}
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
a.t.send(f)
a.t.send(f)
forged = bytearray(a.frame(1, struct.pack("<I", b.id) + b"forged")); forged[20] ^= 1
a.t.send(bytes(forged))
kind, body = b.recv()
extra = 0
b.t.sock.settimeout(0.5)
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

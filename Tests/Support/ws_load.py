#!/usr/bin/env python3
"""WebSocket nodes against a relay's front door (make bench): NODES nodes open a TLS WebSocket
each (Python websockets, asyncio), register (Noise IK, a token; as in docs/relay-protocol.md),
activate with a ping, and hold their connections for HOLD seconds; CONCURRENCY handshakes at a
time. Bounded in nodes and time. Prints {"nodes", "registered", "failed", "seconds",
"registrationsPerSecond"} when all have registered, then holds, then closes.
usage: ws_load.py URL CAFILE SERVER_NAME RELAY_PUBLIC_KEY_B64 TOKEN NODES HOLD CONCURRENCY
"""
import asyncio, base64, hashlib, hmac, json, os, resource, ssl, struct, sys, time
from noise.connection import NoiseConnection, Keypair
from websockets.asyncio.client import connect
from relay_tag import relay_tag

url, cafile, server_name, relay_pub, token = sys.argv[1], sys.argv[2], sys.argv[3], base64.b64decode(sys.argv[4]), sys.argv[5].encode()
nodes, hold, concurrency = min(int(sys.argv[6]), 20000), min(float(sys.argv[7]), 120), int(sys.argv[8])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, nodes + 256), hard))
ctx = ssl.create_default_context(cafile=cafile)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
mac1_key = hashlib.sha256(b"mac1----" + relay_pub).digest()


def register_message(index):
    n = NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_SHA256")
    n.set_as_initiator()
    n.set_keypair_from_private_bytes(Keypair.STATIC, os.urandom(32))
    n.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, relay_pub)
    n.start_handshake()
    body = bytes([0xD1, 0, 0, 0]) + struct.pack("<I", index) + n.write_message(struct.pack(">Q", time.time_ns()) + token)
    return n, body + hmac.new(mac1_key, body, hashlib.sha256).digest()[:16] + b"\0" * 16


def frame(key, session, counter, kind, body):
    hdr = bytes([0xD4, kind, 0, 0]) + struct.pack("<IQ", session, counter)
    return hdr + body + relay_tag(key, hdr + body)


async def node(i, sem, done, release, stats):
    async with sem:
        try:
            ws = await connect(url, ssl=ctx, server_hostname=server_name, open_timeout=30, ping_interval=None, max_size=None)
            index = struct.unpack("<I", os.urandom(4))[0] | 1
            n, msg = register_message(index)
            await ws.send(msg)
            reply = await asyncio.wait_for(ws.recv(), 20)
            assert reply[0] == 0xD2, reply[:4]
            payload = n.read_message(reply[12:])
            node_id = struct.unpack("<I", payload[:4])[0]
            await ws.send(frame(n.noise_protocol.cipher_state_encrypt.k, node_id, 0, 3, b""))
            pong = await asyncio.wait_for(ws.recv(), 20)
            assert pong[0] == 0xD4 and pong[1] == 4
            stats["registered"] += 1
        except Exception as e:
            stats["failed"] += 1
            stats["error"] = repr(e)[:200]
            if stats["registered"] + stats["failed"] == nodes:
                done.set()
            return
    if stats["registered"] + stats["failed"] == nodes:
        done.set()
    # Heartbeats every 2 s (the relay ends registrations silent for four heartbeats and a second).
    key, counter = n.noise_protocol.cipher_state_encrypt.k, 1
    try:
        while not release.is_set():
            try:
                await asyncio.wait_for(release.wait(), 2)
            except asyncio.TimeoutError:
                await ws.send(frame(key, node_id, counter, 3, b"")); counter += 1
                await asyncio.wait_for(ws.recv(), 10)
        await ws.close()
    except Exception as e:
        stats["lost"] += 1


async def main():
    stats = {"registered": 0, "failed": 0, "error": None, "lost": 0}
    sem, done, release = asyncio.Semaphore(concurrency), asyncio.Event(), asyncio.Event()
    t0 = time.time()
    tasks = [asyncio.create_task(node(i, sem, done, release, stats)) for i in range(nodes)]
    try:
        await asyncio.wait_for(done.wait(), 300)
    except asyncio.TimeoutError:
        pass
    seconds = time.time() - t0
    print(json.dumps({"nodes": nodes, "registered": stats["registered"], "failed": stats["failed"], "error": stats["error"], "seconds": round(seconds, 2),
                      "registrationsPerSecond": round(stats["registered"] / seconds, 1)}), flush=True)
    await asyncio.sleep(hold)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"lost": stats["lost"]}), flush=True)

asyncio.run(main())

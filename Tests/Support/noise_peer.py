#!/usr/bin/env python3
"""An independent Noise_IK_25519_ChaChaPoly_SHA256 peer (the PyPI `noiseprotocol` package), driven
by Relay's tests. Input: one JSON object on stdin (hex strings); output: one JSON object (hex).

  mode "initiator": s, rs, prologue, payload1, [e] -> msg1;  with msg2 also -> payload2, and
                    transport messages encrypted with the send key (transport_out) and the
                    decryption of transport_in.
  mode "responder": s, prologue, msg1, payload2, [e] -> payload1, rs (learned), msg2, transport...
Fixed ephemeral keys make runs deterministic (test vectors); without them they are random.
"""
import json
import warnings

warnings.simplefilter("ignore")  # "ephemeral keypair already set": intended, for vectors
import sys

from noise.connection import NoiseConnection, Keypair


def main():
    req = json.load(sys.stdin)
    h = lambda k: bytes.fromhex(req[k]) if req.get(k) is not None else None
    conn = NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_SHA256")
    out = {}
    if req["mode"] == "initiator":
        conn.set_as_initiator()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, h("s"))
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, h("rs"))
    else:
        conn.set_as_responder()
        conn.set_keypair_from_private_bytes(Keypair.STATIC, h("s"))
    if req.get("e"):
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, h("e"))
    conn.set_prologue(h("prologue") or b"")
    conn.start_handshake()
    if req["mode"] == "initiator":
        out["msg1"] = conn.write_message(h("payload1") or b"").hex()
        if req.get("msg2"):
            out["payload2"] = conn.read_message(h("msg2")).hex()
    else:
        out["payload1"] = conn.read_message(h("msg1")).hex()
        out["rs"] = conn.noise_protocol.handshake_state.rs.public_bytes.hex()
        out["msg2"] = conn.write_message(h("payload2") or b"").hex()
    if conn.handshake_finished:
        out["handshake_hash"] = conn.get_handshake_hash().hex()
        out["transport_out"] = [conn.encrypt(bytes.fromhex(p)).hex() for p in req.get("send", [])]
        out["transport_in"] = [conn.decrypt(bytes.fromhex(c)).hex() for c in req.get("receive", [])]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

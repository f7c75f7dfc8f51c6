import Crypto
import Foundation
import Testing
import RelayTestHarness
import RelayTunnel

/// Relay's Noise IK against an implementation nobody here wrote: PyPI `noiseprotocol`, run as a
/// real process (Tests/Support/noise_peer.py).
@Suite("component: Noise IK against Python noiseprotocol")
struct NoiseInteropTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Support/noise_peer.py").standardized.path

    static func key(_ hex: String) -> Curve25519.KeyAgreement.PrivateKey { try! .init(rawRepresentation: Self.bytes(hex)) }
    static func bytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []; var it = hex.makeIterator()
        while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
        return out
    }
    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

    func python(_ req: [String: Any]) throws -> [String: Any] {
        let input = String(decoding: try JSONSerialization.data(withJSONObject: req), as: UTF8.self)
        let r = try Command.run(["python3", Self.script], check: false, stdin: input)
        guard r.status == 0, let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw HarnessError("noise_peer.py failed (\(r.status)): \(r.stderr) — is noiseprotocol installed? (make deps does it)")
        }
        return obj
    }

    // Fixed keys: the run is deterministic, so both sides must produce the same bytes (test vectors).
    let si = "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1"
    let sr = "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893"
    let ei = "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a"
    let er = "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b"
    let prologue = Array("relay/1".utf8)

    @Test("fixed keys: message 1, message 2, handshake hash and transport ciphertexts are byte-identical to noiseprotocol's")
    func vectors() throws {
        let payload1 = Array("hello from the initiator".utf8), payload2 = Array("hi".utf8)
        let rsPub = Array(Self.key(sr).publicKey.rawRepresentation)
        var ini = try Noise.Initiator(staticKey: Self.key(si), remoteStatic: rsPub, prologue: prologue, ephemeral: Self.key(ei))
        let m1 = try ini.writeMessage1(payload: payload1)
        var res = Noise.Responder(staticKey: Self.key(sr), prologue: prologue, ephemeral: Self.key(er))
        #expect(try res.readMessage1(m1) == payload1)
        #expect(res.remoteStatic == Array(Self.key(si).publicKey.rawRepresentation))
        let (m2, tr) = try res.writeMessage2(payload: payload2)
        let (p2, ti) = try ini.readMessage2(m2)
        #expect(p2 == payload2 && ti.handshakeHash == tr.handshakeHash)

        let py = try python(["mode": "responder", "s": sr, "e": er, "prologue": Self.hex(prologue), "msg1": Self.hex(m1), "payload2": Self.hex(payload2),
                             "send": [Self.hex(Array("from python".utf8))]])
        #expect(py["payload1"] as? String == Self.hex(payload1))
        #expect(py["msg2"] as? String == Self.hex(m2), "message 2 differs")
        #expect(py["handshake_hash"] as? String == Self.hex(tr.handshakeHash))
        // Transport: python's first message (counter 0) opens with our initiator's receive key.
        let pyCt = Self.bytes((py["transport_out"] as! [String])[0])
        #expect(try Noise.open(key: ti.receive.key, counter: 0, ad: [], pyCt[...]) == Array("from python".utf8))
        // And the initiator side: python with the same fixed keys writes our exact message 1.
        let pyI = try python(["mode": "initiator", "s": si, "e": ei, "rs": Self.hex(rsPub), "prologue": Self.hex(prologue), "payload1": Self.hex(payload1)])
        #expect(pyI["msg1"] as? String == Self.hex(m1), "message 1 differs")
    }

    @Test("random keys, both directions: our initiator with python's responder, python's initiator with our responder, then transport both ways")
    func liveInterop() throws {
        let ourStatic = Curve25519.KeyAgreement.PrivateKey(), pyStatic = Curve25519.KeyAgreement.PrivateKey()
        let pyStaticHex = Self.hex(Array(pyStatic.rawRepresentation)), pyPub = Array(pyStatic.publicKey.rawRepresentation)
        // 1. We initiate.
        var ini = try Noise.Initiator(staticKey: ourStatic, remoteStatic: pyPub)
        let m1 = try ini.writeMessage1(payload: Array("ping".utf8))
        let r1 = try python(["mode": "responder", "s": pyStaticHex, "msg1": Self.hex(m1), "payload2": Self.hex(Array("pong".utf8)),
                             "send": [Self.hex(Array("reply from python".utf8))]])
        #expect(r1["payload1"] as? String == Self.hex(Array("ping".utf8)))
        #expect(r1["rs"] as? String == Self.hex(Array(ourStatic.publicKey.rawRepresentation)))
        let (p2, t) = try ini.readMessage2(Self.bytes(r1["msg2"] as! String))
        #expect(p2 == Array("pong".utf8))
        #expect(try Noise.open(key: t.receive.key, counter: 0, ad: [], Self.bytes((r1["transport_out"] as! [String])[0])[...]) == Array("reply from python".utf8))
        // 2. Python initiates (fixed ephemeral so that a second run reproduces its state).
        let e = Self.hex(Array(Curve25519.KeyAgreement.PrivateKey().rawRepresentation))
        let ourPubHex = Self.hex(Array(ourStatic.publicKey.rawRepresentation))
        let i1 = try python(["mode": "initiator", "s": pyStaticHex, "e": e, "rs": ourPubHex, "payload1": ""])
        var res = Noise.Responder(staticKey: ourStatic)
        _ = try res.readMessage1(Self.bytes(i1["msg1"] as! String))
        #expect(res.remoteStatic == pyPub, "the responder learns the initiator's identity")
        let (m2, transport) = try res.writeMessage2()
        var rt = transport
        let ours = Noise.seal(key: rt.send.key, counter: 0, ad: [], Array("data from relay".utf8))
        rt.send.n += 1
        let i2 = try python(["mode": "initiator", "s": pyStaticHex, "e": e, "rs": ourPubHex, "payload1": "", "msg2": Self.hex(m2),
                             "receive": [Self.hex(ours)], "send": [Self.hex(Array("data from python".utf8))]])
        #expect(i2["transport_in"] as? [String] == [Self.hex(Array("data from relay".utf8))])
        #expect(try Noise.open(key: rt.receive.key, counter: 0, ad: [], Self.bytes((i2["transport_out"] as! [String])[0])[...]) == Array("data from python".utf8))
    }
}

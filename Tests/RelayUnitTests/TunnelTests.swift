import Crypto
import Testing
import RelayTunnel

@Suite("tunnel transport")
struct TunnelTests {
    func pair() throws -> (TunnelSession, TunnelSession) {
        let a = Curve25519.KeyAgreement.PrivateKey(), b = Curve25519.KeyAgreement.PrivateKey()
        var i = try Noise.Initiator(staticKey: a, remoteStatic: Array(b.publicKey.rawRepresentation))
        var r = Noise.Responder(staticKey: b)
        _ = try r.readMessage1(try i.writeMessage1())
        let (m2, tr) = try r.writeMessage2()
        let (_, ti) = try i.readMessage2(m2)
        return (TunnelSession(localIndex: 1, remoteIndex: 2, transport: ti, createdAt: 0, isInitiator: true),
                TunnelSession(localIndex: 2, remoteIndex: 1, transport: tr, createdAt: 0, isInitiator: false))
    }

    @Test("data round trip; replays, tampering and wrong keys are refused")
    func dataPath() throws {
        let (a, b) = try pair()
        func open(_ c: UInt64, _ ct: ArraySlice<UInt8>, _ now: Double) -> [UInt8]? { b.open(counter: c, ct, now: now) }
        let pkt = Array("an IP packet".utf8)
        let wire = a.seal(pkt[...])
        guard case .data(let rcv, let ctr, let ct)? = TunnelMessage.parse(wire[...]) else { Issue.record("no data message"); return }
        #expect(rcv == 2 && ctr == 0, "the receiver index is the peer's")
        #expect(open(ctr, ct, 1) == pkt)
        #expect(open(ctr, ct, 1) == nil, "replay")
        var bad = wire; bad[bad.count - 1] ^= 1
        if case .data(_, let c2, let ct2)? = TunnelMessage.parse(bad[...]) { #expect(open(c2, ct2, 1) == nil, "tampered") }
        #expect(open(5, ct, 1) == nil, "right ciphertext, wrong counter")
        // Keepalive: empty plaintext.
        let ka = a.seal([][...])
        if case .data(_, let c3, let ct3)? = TunnelMessage.parse(ka[...]) { #expect(open(c3, ct3, 1) == []) }
        // Expired sessions open nothing.
        let late = a.seal(pkt[...])
        if case .data(_, let c4, let ct4)? = TunnelMessage.parse(late[...]) { #expect(open(c4, ct4, 181) == nil) }
    }

    @Test("replay window: out of order within 2048 accepted once, too old refused, big jumps clear the window")
    func replayWindow() {
        var w = ReplayWindow()
        func acc(_ c: UInt64) -> Bool { w.accept(c) }
        #expect(acc(0) && !acc(0))
        #expect(acc(10) && acc(5) && !acc(5))
        #expect(acc(3000))
        #expect(!acc(10), "behind the window now")
        #expect(acc(3000 - 1000) && !acc(3000 - 1000))
        #expect(!acc(3000 - 2000), "too far behind")
        #expect(acc(1_000_000) && acc(999_999) && !acc(1_000_000))
        // Exhaustive against a reference set for a random sequence.
        var ref = Set<UInt64>(), greatest: UInt64 = 0, w2 = ReplayWindow(), any = false
        func acc2(_ c: UInt64) -> Bool { w2.accept(c) }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let c = UInt64.random(in: 0...6000, using: &rng)
            let tooOld = any && c <= greatest && greatest - c >= 2048 - 64
            let expect = !tooOld && !ref.contains(c)
            #expect(acc2(c) == expect, "counter \(c) greatest \(greatest)")
            if expect { ref.insert(c); if !any || c > greatest { greatest = c }; any = true }
        }
    }

    @Test("the parser takes only exact Relay messages and never traps on garbage")
    func parser() {
        #expect(TunnelMessage.parse([0x00, 0x01, 0x00, 0x08][...]) == nil, "a STUN header is not ours")
        #expect(TunnelMessage.parse([UInt8](repeating: 0xC1, count: 10)[...]) == nil)
        #expect(TunnelMessage.parse(([0xC1, 0, 0, 0] + [UInt8](repeating: 0, count: TunnelLimits.initiationSize - 4))[...]) != nil)
        #expect(TunnelMessage.parse(([0xC1, 0, 0, 0] + [UInt8](repeating: 0, count: TunnelLimits.initiationSize - 3))[...]) == nil)
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<10_000 {
            let n = Int.random(in: 0...140, using: &rng)
            var b = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if n > 0 && Bool.random(using: &rng) { b[0] = [0xC1, 0xC2, 0xC4].randomElement(using: &rng)! }
            _ = TunnelMessage.parse(b[...])
        }
    }

    @Test("a responder refuses malformed and forged first messages without trapping")
    func forgedHandshake() throws {
        let b = Curve25519.KeyAgreement.PrivateKey()
        var rng = SystemRandomNumberGenerator()
        for n in [0, 31, 95, 96, 120, 300] {
            var r = Noise.Responder(staticKey: b)
            let junk = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            #expect(throws: Noise.Failure.self) { _ = try r.readMessage1(junk) }
        }
    }
}

/// WireGuard's mac1, mac2 and cookie reply, with Noise's hash (pure functions, no sockets).
@Suite("handshake MACs and cookies")
struct HandshakeMACTests {
    let responder = Curve25519.KeyAgreement.PrivateKey()
    var responderPublic: [UInt8] { Array(responder.publicKey.rawRepresentation) }

    @Test("mac1 is keyed by the receiver's public key: valid for it, invalid for another node or after any change")
    func mac1() {
        let key = HandshakeMAC.key(receiver: responderPublic)
        let msg = TunnelMessage.initiation(sender: 7, noise: [UInt8](repeating: 3, count: 104), mac1Key: key)
        #expect(msg.count == TunnelLimits.initiationSize)
        #expect(HandshakeMAC.valid(msg[...], key: key))
        #expect(!HandshakeMAC.valid(msg[...], key: HandshakeMAC.key(receiver: Array(Curve25519.KeyAgreement.PrivateKey().publicKey.rawRepresentation))))
        for i in [0, 50, msg.count - 33] {
            var bad = msg; bad[i] ^= 1
            #expect(!HandshakeMAC.valid(bad[...], key: key), "byte \(i) changed")
        }
        #expect(msg.suffix(16).allSatisfy { $0 == 0 }, "no cookie, no mac2")
    }

    @Test("a cookie reply opens only with the mac1 it answers, is smaller than the initiation, and its cookie makes a valid mac2 for that source only")
    func cookies() throws {
        let key = HandshakeMAC.key(receiver: responderPublic)
        let first = TunnelMessage.initiation(sender: 9, noise: [UInt8](repeating: 1, count: 104), mac1Key: key)
        let secret = SymmetricKey(size: .bits256)
        let source = [UInt8](repeating: 0xAB, count: 18), other = [UInt8](repeating: 0xCD, count: 18)
        let cookie = HandshakeMAC.cookie(secret: secret, source: source)
        #expect(!HandshakeMAC.validMac2(first[...], cookie: cookie), "an empty mac2 is not valid")
        let reply = HandshakeMAC.cookieReply(receiver: 9, cookie: cookie, mac1: HandshakeMAC.mac1(of: first[...]), key: HandshakeMAC.cookieKey(sender: responderPublic))
        #expect(reply.count == TunnelLimits.cookieReplySize && reply.count < first.count, "no amplification")
        guard case .cookieReply(let r, let nonce, let sealed)? = TunnelMessage.parse(reply[...]) else { Issue.record("not a cookie reply"); return }
        #expect(r == 9)
        let opened = HandshakeMAC.openCookie(nonce: nonce, sealed: sealed, mac1: Array(HandshakeMAC.mac1(of: first[...])), key: HandshakeMAC.cookieKey(sender: responderPublic))
        #expect(opened == cookie)
        #expect(HandshakeMAC.openCookie(nonce: nonce, sealed: sealed, mac1: [UInt8](repeating: 0, count: 16), key: HandshakeMAC.cookieKey(sender: responderPublic)) == nil,
                "bound to the initiation's mac1")
        let second = TunnelMessage.initiation(sender: 10, noise: [UInt8](repeating: 2, count: 104), mac1Key: key, cookie: opened)
        #expect(HandshakeMAC.valid(second[...], key: key))
        #expect(HandshakeMAC.validMac2(second[...], cookie: cookie))
        #expect(!HandshakeMAC.validMac2(second[...], cookie: HandshakeMAC.cookie(secret: secret, source: other)), "a cookie is bound to its source")
        #expect(!HandshakeMAC.validMac2(second[...], cookie: HandshakeMAC.cookie(secret: SymmetricKey(size: .bits256), source: source)), "and to the secret")
    }
}

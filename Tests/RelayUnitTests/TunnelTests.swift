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
        var (a, b) = try pair()
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

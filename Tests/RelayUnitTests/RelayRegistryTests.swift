import Crypto
import Foundation
import Testing
import RelayCore
import RelayTunnel
@testable import RelayDaemonKit

/// The relay role's state machine without sockets: simulated nodes register, frame and forward.
@Suite("relay registry")
struct RelayRegistryTests {
    let relayKey = Curve25519.KeyAgreement.PrivateKey()
    var relayPublic: [UInt8] { Array(relayKey.publicKey.rawRepresentation) }

    /// A node as the protocol document describes it (built from RelayMessage, not from the node's code).
    final class Node {
        let key = Curve25519.KeyAgreement.PrivateKey()
        let at: Endpoint
        var index = UInt32.random(in: 1...UInt32.max)
        var id: UInt32 = 0
        var send: SymmetricKey?, receive: SymmetricKey?
        var counter: UInt64 = 0
        var publicKey: [UInt8] { Array(key.publicKey.rawRepresentation) }
        init(_ at: String) { self.at = Endpoint(at)! }

        func register(to relay: [UInt8], now: Double, token: String = "") throws -> (Noise.Initiator, [UInt8]) {
            var ini = try Noise.Initiator(staticKey: key, remoteStatic: relay)
            var stamp = [UInt8](); put64be(UInt64(now * 1e9), &stamp)
            let m1 = try ini.writeMessage1(payload: stamp + Array(token.utf8))
            return (ini, RelayMessage.register(sender: index, noise: m1, mac1Key: HandshakeMAC.key(receiver: relay)))
        }
        func frame(_ kind: RelayFrameKind, _ body: [UInt8]) -> [UInt8] {
            defer { counter += 1 }
            return RelayMessage.frame(kind, session: id, counter: counter, body: body[...], key: send!)
        }
    }

    func registry(_ configure: (inout RelayRegistry.Policy) -> Void = { _ in }) -> RelayRegistry {
        var p = RelayRegistry.Policy()
        configure(&p)
        return RelayRegistry(staticKey: relayKey, policy: p)
    }

    /// Registers `n` fully (register, registered, first ping); returns what the relay sent back.
    @discardableResult
    func join(_ r: RelayRegistry, _ n: Node, now: Double, token: String = "") throws -> [([UInt8], Endpoint)] {
        var (ini, wire) = try n.register(to: relayPublic, now: now, token: token)
        r.receive(wire[...], from: n.at, now: now)
        let out = r.take()
        guard out.count == 1, case .registered(let sender, let receiver, let noise)? = RelayMessage.parse(out[0].0[...]) else { return out }
        #expect(receiver == n.index && out[0].1 == n.at)
        #expect(out[0].0.count < wire.count, "no amplification: \(out[0].0.count) bytes for \(wire.count)")
        let (payload, transport) = try ini.readMessage2(Array(noise))
        let grant = try #require(RelayGrant(payload))
        #expect(grant.id == sender)
        n.id = grant.id; n.send = transport.send.key; n.receive = transport.receive.key
        r.receive(n.frame(.ping, [])[...], from: n.at, now: now)
        return r.take()
    }

    @Test("a listed key registers, is active only after its first frame from the same address, and gets a pong with its address")
    func registration() throws {
        let a = Node("100.64.1.2:40000")
        let r = registry { $0.allowedKeys = [a.publicKey] }
        var (_, wire) = try a.register(to: relayPublic, now: 1)
        r.receive(wire[...], from: a.at, now: 1)
        #expect(r.take().count == 1 && r.pending == 1 && r.active == 0, "pending until the node proves its address")
        let b = Node("100.64.2.2:40000")
        _ = b
        let out = try join(r, a, now: 2)  // a fresh register replaces the pending one
        #expect(r.active == 1 && r.counters.registrations == 1)
        guard out.count == 1, case .frame(.pong, _, _, let body)? = RelayMessage.parse(out[0].0[...]) else { Issue.record("no pong: \(out)"); return }
        #expect(RelayMessage.verify(out[0].0[...], key: a.receive!))
        #expect(RelayAddress.decode(body) == a.at)
        wire = []
    }

    @Test("refusals: an unlisted key or a wrong token is refused with a small typed answer, a replayed register gets nothing, failures hit the per-address limit, and the rightful node still registers from its own address")
    func refusals() throws {
        let good = Node("100.64.1.2:40000"), stranger = Node("100.64.66.6:1111")
        let r = registry { $0.allowedKeys = [good.publicKey]; $0.tokens = [Array("a-token-of-twenty-chars".utf8)]; $0.registrationsPerSecond = 5 }
        let (_, wire) = try stranger.register(to: relayPublic, now: 1, token: "wrong-token-xxxxxxxx")
        r.receive(wire[...], from: stranger.at, now: 1)
        let out = r.take()
        #expect(out.count == 1 && RelayMessage.parse(out[0].0[...]) == .refused(receiver: stranger.index, reason: .notAdmitted))
        #expect(out[0].0.count < wire.count)
        // Bad tokens in a loop from the same address: the rate limit takes over.
        for i in 0..<20 {
            let (_, w) = try stranger.register(to: relayPublic, now: 1.1 + Double(i) * 0.001, token: "wrong-token-xxxxxxxx")
            r.receive(w[...], from: stranger.at, now: 1.1 + Double(i) * 0.001)
        }
        _ = r.take()
        #expect(r.counters.rateLimited > 10 && r.counters.notAdmitted < 5, "\(r.counters)")
        // A token admits any key.
        let withToken = Node("100.64.3.3:5000")
        try join(r, withToken, now: 2, token: "a-token-of-twenty-chars")
        #expect(r.active == 1)
        // The rightful node registers meanwhile; then a replay of its register gets nothing.
        var (_, gw) = try good.register(to: relayPublic, now: 3)
        let replay = gw
        r.receive(gw[...], from: good.at, now: 3)
        #expect(r.take().count == 1)
        r.receive(replay[...], from: good.at, now: 3.1)
        #expect(r.take().isEmpty && r.counters.replayed == 1)
        gw = []
        // A register for another relay (bad mac1) costs no DH.
        var (_, other) = try good.register(to: Array(Curve25519.KeyAgreement.PrivateKey().publicKey.rawRepresentation), now: 4)
        r.receive(other[...], from: good.at, now: 4)
        #expect(r.take().isEmpty && r.counters.badMAC == 1)
        other = []
    }

    @Test("forwarding by id; an unknown id gets not-here; lookups answer found or not-here; frames that are spoofed (other address), forged (bad tag) or replayed are dropped")
    func forwarding() throws {
        let a = Node("100.64.1.2:40000"), b = Node("100.64.2.2:40000")
        let r = registry { $0.allowedKeys = [a.publicKey, b.publicKey] }
        try join(r, a, now: 1); try join(r, b, now: 1)
        r.receive(a.frame(.lookup, b.publicKey)[...], from: a.at, now: 2)
        var out = r.take()
        guard case .frame(.found, _, _, let found)? = RelayMessage.parse(out[0].0[...]) else { Issue.record("no found"); return }
        #expect(Array(found.prefix(32)) == b.publicKey && found.suffix(4).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } == b.id.littleEndian)

        var body: [UInt8] = []; put32(b.id, &body); body += Array("sealed datagram".utf8)
        let fwd = a.frame(.forward, body)
        r.receive(fwd[...], from: a.at, now: 2)
        out = r.take()
        #expect(out.count == 1 && out[0].1 == b.at)
        guard case .frame(.deliver, let session, _, let delivered)? = RelayMessage.parse(out[0].0[...]) else { Issue.record("no deliver"); return }
        #expect(session == b.index && RelayMessage.verify(out[0].0[...], key: b.receive!))
        #expect(Array(delivered.dropFirst(4)) == Array("sealed datagram".utf8) && delivered.prefix(4).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } == a.id.littleEndian)
        #expect(r.counters.forwarded == 1)

        // Replayed, from another address, forged: nothing forwarded.
        r.receive(fwd[...], from: a.at, now: 2)
        r.receive(a.frame(.forward, body)[...], from: Endpoint("100.64.66.6:40000")!, now: 2)
        var forged = a.frame(.forward, body); forged[20] ^= 1
        r.receive(forged[...], from: a.at, now: 2)
        #expect(r.take().isEmpty && r.counters.forwarded == 1)
        #expect(r.counters.replayed == 1 && r.counters.wrongSource == 1 && r.counters.badFrames == 1)

        // To an id nobody has: a typed answer.
        var nobody: [UInt8] = []; put32(12345, &nobody); nobody += [1, 2, 3]
        r.receive(a.frame(.forward, nobody)[...], from: a.at, now: 2)
        out = r.take()
        guard out.count == 1, case .frame(.notHere, _, _, let id)? = RelayMessage.parse(out[0].0[...]) else { Issue.record("no not-here"); return }
        #expect(Array(id) == Array(nobody.prefix(4)))
        // Garbage.
        r.receive([0xD4, 9, 9, 9, 1, 2][...], from: a.at, now: 2)
        r.receive([UInt8](repeating: 0xD1, count: 200)[...], from: a.at, now: 2)
        #expect(r.take().isEmpty && r.counters.malformed >= 2)
    }

    @Test("a node over its datagram limit is throttled, another node is not; a silent node expires")
    func limits() throws {
        let a = Node("100.64.1.2:40000"), b = Node("100.64.2.2:40000"), c = Node("100.64.3.3:40000")
        let r = registry { $0.allowedKeys = [a.publicKey, b.publicKey, c.publicKey]; $0.datagramsPerSecond = 100 }
        try join(r, a, now: 1); try join(r, b, now: 1); try join(r, c, now: 1)
        var body: [UInt8] = []; put32(b.id, &body); body += [0]
        for _ in 0..<300 { r.receive(a.frame(.forward, body)[...], from: a.at, now: 1.5) }
        _ = r.take()
        #expect(r.counters.forwarded == 100 && r.counters.throttled == 200)
        var cb: [UInt8] = []; put32(b.id, &cb); cb += [0]
        for _ in 0..<50 { r.receive(c.frame(.forward, cb)[...], from: c.at, now: 1.5) }
        #expect(r.take().count == 50, "c is not slowed by a")
        r.receive(b.frame(.ping, [])[...], from: b.at, now: 10)
        r.tick(now: 11)
        #expect(r.active == 1, "a and c were silent for 9.5 s (heartbeat 2 s: four and a second): expired")
    }
}

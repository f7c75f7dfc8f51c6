import Crypto
import Testing
import RelayCore
import RelayTunnel
@testable import RelayDaemonKit

/// The tunnel's state machines without sockets: two nodes' `PeerTable`s exchange the datagrams
/// their actions ask for, the way the loops would (with the DH steps the loops run unlocked).
@Suite("tunnel state machines")
struct PeerMachineTests {
    struct Node {
        let staticKey = Curve25519.KeyAgreement.PrivateKey()
        let table: PeerTable
        let at: Endpoint
        var own: [UInt8] { Array(staticKey.publicKey.rawRepresentation) }
        init(_ at: String) { table = PeerTable(staticKey: staticKey); self.at = Endpoint(at)! }
    }

    let a = Node("10.0.0.1:51820"), b = Node("10.0.0.2:51820")
    let siteA = IPPrefix("240.1.1.0/24")!, siteB = IPPrefix("240.2.2.0/24")!

    init() {
        // A knows where B is; B waits for A to call.
        a.table.configure([.init(name: "B", publicKey: b.own, endpoint: b.at, prefixes: [siteB])], exported: [siteA], stamp: { _ in 0 })
        b.table.configure([.init(name: "A", publicKey: a.own, endpoint: nil, prefixes: [siteA])], exported: [siteB], stamp: { _ in 0 })
    }

    static func packet(_ src: String, _ dst: String, payload: UInt8 = 7) -> [UInt8] {
        let s = IPAddress(src)!, d = IPAddress(dst)!
        guard case .v4(let s4) = s, case .v4(let d4) = d else { return [] }
        return [0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0] + s4.bytes + d4.bytes + [UInt8](repeating: payload, count: 8)
    }

    /// Performs `node`'s `.initiate` actions the way the loop does; returns the datagrams sent.
    func run(_ node: Node, _ actions: [PeerAction], now: Double) throws -> [([UInt8], Route)] {
        var sent: [([UInt8], Route)] = []
        for action in actions {
            switch action {
            case .send(let m, let to): sent.append((m, to))
            case .initiate(let peer):
                let (ini, msg) = try PeerTable.makeInitiation(node.staticKey, to: peer.publicKey, now: now)
                peer.initiationMade(ini, msg, now: now, node.table)
                sent += try run(node, node.table.take(), now: now)
            default: break
            }
        }
        return sent
    }

    /// Delivers one datagram to `node` as its receive loop would; returns what it sent back and the
    /// verdicts on data messages.
    func receive(_ node: Node, _ bytes: [UInt8], from source: Endpoint, route: Route? = nil, now: Double) throws -> (sent: [([UInt8], Route)], verdicts: [DataVerdict]) {
        let t = node.table
        let from = route ?? Route.direct(source)
        var verdicts: [DataVerdict] = []
        switch TunnelMessage.parse(bytes[...]) {
        case .initiation(let sender, let noise)?:
            #expect(HandshakeMAC.valid(bytes[...], key: HandshakeMAC.key(receiver: node.own)))
            guard let (r0, stamp) = PeerTable.readInitiation(node.staticKey, Array(noise)) else { t.counters.authFailed += 1; break }
            var r = r0
            guard let peer = t.answerable(remoteStatic: r.remoteStatic, stamp: stamp) else { break }
            let (m2, transport) = try r.writeMessage2()
            t.answered(peer, stamp: stamp, sender: sender, message: m2, transport: transport, from: from, now: now)
        case .response(let sender, let receiver, let noise)?:
            guard let (peer, ini0) = t.beginResponse(receiver: receiver) else { break }
            var ini = ini0
            let (_, transport) = try ini.readMessage2(Array(noise))
            peer.responded(transport, receiver: receiver, sender: sender, from: from, now: now, t)
        case .data(let receiver, let counter, let ct)?:
            guard let peer = t.byIndex[receiver], let key = peer.session(receiver)?.receiveState(now: now) else { t.counters.unknownIndex += 1; break }
            guard let plain = try? Noise.open(key: key, counter: counter, ad: [], ct) else { t.counters.authFailed += 1; break }
            verdicts.append(plain.withUnsafeBytes { peer.data(index: receiver, counter: counter, from: from, plain: $0, exported: t.exported, now: now, t) })
            peer.flush(now: now, t)
        default: Issue.record("unexpected datagram")
        }
        return (try run(node, t.take(), now: now), verdicts)
    }

    @Test("a packet for a peer without a session is queued, starts one handshake, and goes once the response arrives; the responder sends only after the initiator confirms")
    func handshakeThenData() throws {
        let pkt = Self.packet("240.1.1.5", "240.2.2.20")
        let peerB = try #require(a.table.route(IPAddress("240.2.2.20")!))
        #expect(peerB.outbound(pkt[...], count: 1, bytes: pkt.count, now: 1, a.table) == nil, "no session yet: queued")
        #expect(peerB.outbound(pkt[...], count: 1, bytes: pkt.count, now: 1, a.table) == nil)
        let asked = a.table.take()
        #expect(asked.count == 1, "one handshake asked for two packets: \(asked)")
        let initiation = try run(a, asked, now: 1)
        #expect(initiation.count == 1 && initiation[0].1 == .direct(b.at) && a.table.counters.handshakesSent == 1)

        let (resp, _) = try receive(b, initiation[0].0, from: a.at, now: 1.01)
        #expect(resp.count == 1 && resp[0].1 == .direct(a.at), "B answers at the initiation's source")
        let peerA = try #require(b.table.peer(key: a.own))
        #expect(peerA.current != nil && peerA.lastInitiationStamp > 0)
        #expect(peerA.endpoint == nil, "an initiation alone does not move the endpoint")

        let (data, _) = try receive(a, resp[0].0, from: b.at, now: 1.02)
        #expect(data.count == 2, "both queued packets go once the session is up: \(data.count)")
        #expect(peerB.queue.isEmpty && peerB.current != nil && a.table.counters.handshakesCompleted == 1)
        for d in data {
            let (_, v) = try receive(b, d.0, from: a.at, now: 1.03)
            #expect(v == [.deliver])
        }
        #expect(peerA.endpoint == a.at, "authenticated data proved A's endpoint")
        #expect(peerA.rxPackets == 2)
    }

    @Test("a replayed initiation is refused (timestamp), a data replay is refused (window), and the endpoint never moves to the replayer")
    func replays() throws {
        let pkt = Self.packet("240.1.1.5", "240.2.2.20")
        let peerB = try #require(a.table.route(IPAddress("240.2.2.20")!))
        _ = peerB.outbound(pkt[...], count: 1, bytes: pkt.count, now: 1, a.table)
        let initiation = try run(a, a.table.take(), now: 1)[0].0
        let resp = try receive(b, initiation, from: a.at, now: 1).sent[0].0
        let data = try receive(a, resp, from: b.at, now: 1).sent[0].0
        #expect(try receive(b, data, from: a.at, now: 1).verdicts == [.deliver])
        let attacker = Endpoint("10.66.0.1:4444")!
        #expect(try receive(b, data, from: attacker, now: 2).verdicts == [.replay])
        #expect(try receive(b, initiation, from: attacker, now: 2).sent.isEmpty)
        #expect(b.table.counters.replayedInitiation == 1)
        #expect(b.table.peer(key: a.own)?.endpoint == a.at)
    }

    @Test("inner packets: a source outside the peer's sites and a destination this site does not export are refused")
    func sourceAndDestination() throws {
        let peerB = try #require(a.table.route(IPAddress("240.2.2.20")!))
        let good = Self.packet("240.1.1.5", "240.2.2.20")
        _ = peerB.outbound(good[...], count: 1, bytes: good.count, now: 1, a.table)
        let initiation = try run(a, a.table.take(), now: 1)[0].0
        let resp = try receive(b, initiation, from: a.at, now: 1).sent[0].0
        _ = try receive(b, try receive(a, resp, from: b.at, now: 1).sent[0].0, from: a.at, now: 1)
        for (pkt, want) in [(Self.packet("240.9.9.9", "240.2.2.20"), DataVerdict.spoofedSource),
                            (Self.packet("240.1.1.5", "10.40.0.1"), .notExported),
                            (Self.packet("240.1.1.5", "240.2.2.99"), .deliver)] {
            // Sealed on A's current session as the data path would.
            let r = try #require(peerB.outbound(pkt[...], count: 1, bytes: pkt.count, now: 2, a.table))
            let wire = TunnelSession.seal(pkt[...], key: r.key, counter: r.counter, remoteIndex: r.remote)
            #expect(try receive(b, wire, from: a.at, now: 2).verdicts == [want])
        }
    }

    @Test("timers: an unanswered initiation is retried, then given up after 90 s with its queue and index gone")
    func retriesAndGiveUp() throws {
        let peerB = try #require(a.table.route(IPAddress("240.2.2.20")!))
        let pkt = Self.packet("240.1.1.5", "240.2.2.20")
        _ = peerB.outbound(pkt[...], count: 1, bytes: pkt.count, now: 0, a.table)
        _ = try run(a, a.table.take(), now: 0)
        let first = try #require(peerB.pending?.index)
        a.table.tick(now: 1)
        #expect(a.table.take().isEmpty, "no retry before the rekey timeout")
        a.table.tick(now: 6)
        let retry = try run(a, a.table.take(), now: 6)
        #expect(retry.count == 1 && a.table.byIndex[first] == nil, "retried with a fresh index")
        #expect(peerB.pending?.firstAt == 0)
        a.table.tick(now: 95)
        let gaveUp = a.table.take()
        #expect(gaveUp.contains { if case .log(.notice, let m) = $0 { return m.contains("gave up") } else { return false } })
        #expect(peerB.pending == nil && peerB.queue.isEmpty && a.table.byIndex.isEmpty)
    }

    @Test("a cookie reply is kept and the initiation made again at once, its mac2 valid under the cookie")
    func cookie() throws {
        let peerB = try #require(a.table.route(IPAddress("240.2.2.20")!))
        let pkt = Self.packet("240.1.1.5", "240.2.2.20")
        _ = peerB.outbound(pkt[...], count: 1, bytes: pkt.count, now: 0, a.table)
        let initiation = try run(a, a.table.take(), now: 0)[0].0
        guard case .initiation(let sender, _)? = TunnelMessage.parse(initiation[...]) else { Issue.record("not an initiation"); return }
        let cookie = HandshakeMAC.cookie(secret: SymmetricKey(size: .bits256), source: [1, 2, 3])
        let reply = HandshakeMAC.cookieReply(receiver: sender, cookie: cookie, mac1: HandshakeMAC.mac1(of: initiation[...]), key: HandshakeMAC.cookieKey(sender: b.own))
        guard case .cookieReply(let receiver, let nonce, let sealed)? = TunnelMessage.parse(reply[...]) else { Issue.record("not a cookie reply"); return }
        a.table.cookieReply(receiver: receiver, nonce: nonce, sealed: sealed, now: 0.5)
        let again = try run(a, a.table.take(), now: 0.5)
        #expect(a.table.counters.cookiesReceived == 1 && again.count == 1)
        #expect(HandshakeMAC.validMac2(again[0].0[...], cookie: cookie))
        // A reply bound to another initiation's mac1 does not open.
        a.table.cookieReply(receiver: receiver, nonce: nonce, sealed: sealed, now: 0.6)
        #expect(a.table.counters.unknownIndex == 1)
    }

    @Test("a reload keeps a peer's machine and sessions (one send counter), a removed peer's indices go")
    func reload() throws {
        let peerB = try #require(a.table.route(IPAddress("240.2.2.20")!))
        let pkt = Self.packet("240.1.1.5", "240.2.2.20")
        _ = peerB.outbound(pkt[...], count: 1, bytes: pkt.count, now: 1, a.table)
        let initiation = try run(a, a.table.take(), now: 1)[0].0
        _ = try receive(a, try receive(b, initiation, from: a.at, now: 1).sent[0].0, from: b.at, now: 1)
        let session = try #require(peerB.current)
        let before = session.sent
        a.table.configure([.init(name: "B renamed", publicKey: b.own, endpoint: nil, prefixes: [siteB])], exported: [siteA], stamp: { _ in 0 })
        let same = try #require(a.table.route(IPAddress("240.2.2.20")!))
        #expect(same === peerB && same.current === session && same.name == "B renamed" && same.endpoint == b.at)
        _ = same.outbound(pkt[...], count: 3, bytes: 3 * pkt.count, now: 1, a.table)
        #expect(session.sent == before + 3)
        a.table.configure([], exported: [siteA], stamp: { _ in 0 })
        #expect(a.table.byIndex.isEmpty && a.table.peers.isEmpty)
    }
}

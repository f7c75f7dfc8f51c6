import Foundation
import Testing
import RelayCore
import RelayTunnel
@testable import RelayDaemonKit

/// Path messages and NAT traversal without sockets: the codec, then two `PathFinder`s that reach
/// each other through a relay and probe across a simulated network that passes or drops direct
/// datagrams, then the peer machine's route (a proven direct path, the fallback to the relay).
@Suite("paths: hole punching state machines")
struct PathFinderTests {
    static let relay = Route.relay(Endpoint("100.64.9.9:51821")!, id: 7)

    static func parse(_ b: [UInt8]) -> Result<PathMessage, PathMessage.Failure> { b.withUnsafeBytes { PathMessage.parse($0) } }

    @Test("path messages round-trip; truncated, oversized, unknown and badly addressed ones are refused by name")
    func codec() {
        let list = [PathMessage.Candidate(kind: .local, endpoint: Endpoint("10.0.0.1:51820")!),
                    PathMessage.Candidate(kind: .reflexive, endpoint: Endpoint("[2001:db8::1]:4000")!)]
        for m in [PathMessage.candidates(generation: 513, list), .candidates(generation: 0, []), .probe(tx: 0x0102_0304_0506_0708),
                  .probeAck(tx: 9, seen: Endpoint("198.51.100.7:61000")!)] {
            #expect(Self.parse(m.bytes) == .success(m))
            #expect(PathMessage.isPathMessage(m.bytes[0]))
            for cut in 0..<m.bytes.count { #expect(Self.parse(Array(m.bytes.prefix(cut))) != .success(m)) }
        }
        #expect(Self.parse([0x11, 0, 1, 17] + [UInt8](repeating: 0, count: 17 * 20)) == .failure(.tooMany))
        #expect(Self.parse([0x1f, 1, 2]) == .failure(.unknownType))
        var bad = PathMessage.candidates(generation: 1, list).bytes
        bad[4] = 9  // kind
        #expect(Self.parse(bad) == .failure(.badAddress))
        bad = PathMessage.probeAck(tx: 1, seen: Endpoint("1.2.3.4:5")!).bytes
        bad[9] = 5  // family
        #expect(Self.parse(bad) == .failure(.badAddress))
        // No IP packet and no keepalive looks like one.
        #expect(!PathMessage.isPathMessage(0x45) && !PathMessage.isPathMessage(0x60))
        // Only endpoints worth probing.
        for e in ["127.0.0.1:1", "0.0.0.0:5", "224.0.0.1:5", "255.255.255.255:5", "[::1]:5", "[fe80::1]:5", "[ff02::1]:5"] {
            #expect(!PathMessage.probeable(Endpoint(e)!), "\(e)")
        }
        #expect(!PathMessage.probeable(Endpoint(IPAddress("10.0.0.1")!, port: 0)))
        for e in ["10.0.0.1:5", "100.64.1.2:40000", "[2001:db8::2]:5", "[fd00::1]:5"] { #expect(PathMessage.probeable(Endpoint(e)!), "\(e)") }
    }

    /// Two finders and what reaches whom: `passes(from, to)` decides each direct datagram (a NAT
    /// model); messages by the relay always arrive.
    struct Pair {
        var a = PathFinder(), b = PathFinder()
        let aAt: Endpoint, bAt: Endpoint
        var passes: (_ from: Endpoint, _ to: Endpoint) -> Bool
        var provenA: [Endpoint] = [], provenB: [Endpoint] = []
        var directSent = 0
        var tx: UInt64 = 0

        init(passes: @escaping (Endpoint, Endpoint) -> Bool) {
            aAt = Endpoint("100.64.1.2:51820")!; bAt = Endpoint("100.64.2.2:51820")!
            self.passes = passes
            a.localCandidates([.init(kind: .reflexive, endpoint: aAt), .init(kind: .local, endpoint: Endpoint("10.10.10.10:51820")!)], now: 0)
            b.localCandidates([.init(kind: .reflexive, endpoint: bAt)], now: 0)
        }

        /// Delivers outputs of one side to the other, repeatedly, until nothing is left.
        mutating func deliver(_ out: [PathFinder.Output], fromA: Bool, now: Double) {
            var queue = out.map { (fromA, $0) }
            while !queue.isEmpty {
                let (isA, o) = queue.removeFirst()
                switch o {
                case .send(let m, let route):
                    var arrived: Route
                    switch route {
                    case .relay: arrived = PathFinderTests.relay
                    case .direct(let to):
                        directSent += 1
                        let from = isA ? aAt : bAt
                        guard to == (isA ? bAt : aAt), passes(from, to) else { continue }
                        arrived = .direct(from)
                    }
                    var t = tx
                    let more = isA ? b.received(m, from: arrived, now: now, via: PathFinderTests.relay, ownAddresses: [], directAlive: !provenB.isEmpty, tx: { t += 1; return t })
                                   : a.received(m, from: arrived, now: now, via: PathFinderTests.relay, ownAddresses: [], directAlive: !provenA.isEmpty, tx: { t += 1; return t })
                    tx = t
                    queue += more.map { (!isA, $0) }
                case .proven(let e, _): if isA { provenA.append(e) } else { provenB.append(e) }
                case .note: break
                }
            }
        }

        mutating func tick(now: Double) {
            var t = tx
            let outA = a.tick(now: now, route: provenA.isEmpty ? PathFinderTests.relay : .direct(provenA[0]), directAlive: !provenA.isEmpty, active: true, tx: { t += 1; return t })
            let outB = b.tick(now: now, route: provenB.isEmpty ? PathFinderTests.relay : .direct(provenB[0]), directAlive: !provenB.isEmpty, active: true, tx: { t += 1; return t })
            tx = t
            deliver(outA, fromA: true, now: now)
            deliver(outB, fromA: false, now: now)
        }
    }

    @Test("both sides call each other through the relay and probe at once: each proves the other's reflexive candidate within the first probes")
    func bothProve() {
        // Address-and-port-dependent filtering on both sides: a datagram passes a NAT only after
        // the host behind it sent to that source.
        var opened: Set<[Endpoint]> = []
        var pair = Pair { from, to in opened.insert([from, to]); return opened.contains([to, from]) }
        var now = 0.0
        while now < 3 && (pair.provenA.isEmpty || pair.provenB.isEmpty) { pair.tick(now: now); now += 0.25 }
        #expect(pair.provenA.first == pair.bAt && pair.provenB.first == pair.aAt, "A proved \(pair.provenA), B proved \(pair.provenB)")
        #expect(now <= 1, "proven after \(now) s")
        #expect(pair.a.remote.map(\.endpoint) == [pair.bAt] && pair.b.remote.count == 2)
        #expect(pair.a.seenAs == pair.aAt)
        // Heartbeats on the direct path, one per heartbeat interval.
        let before = pair.a.probesSent
        for _ in 0..<8 { pair.tick(now: now); now += 0.25 }
        #expect(pair.a.probesSent - before == 1, "heartbeats in 2 s: \(pair.a.probesSent - before)")
    }

    @Test("nothing passes directly: the attempt gives up at its deadline with a bounded number of probes, and the next waits for retry_seconds")
    func givesUp() {
        var pair = Pair { _, _ in false }
        var now = 0.0
        while now < 10.5 { pair.tick(now: now); now += 0.25 }
        #expect(pair.provenA.isEmpty && pair.provenB.isEmpty)
        #expect(pair.a.failures == 1 && pair.b.failures == 1 && !pair.a.attempting)
        // Two candidates of A probed by B, one of B by A: at most the schedule each.
        #expect(pair.directSent <= 3 * PathFinder.schedule.count, "\(pair.directSent) probes")
        #expect(pair.directSent >= 3 * (PathFinder.schedule.count - 1))
        let attempts = pair.a.attempts
        while now < 30 { pair.tick(now: now); now += 0.25 }
        #expect(pair.a.attempts == attempts, "no new attempt before retry_seconds (30)")
        while now < 41 { pair.tick(now: now); now += 0.25 }
        #expect(pair.a.attempts == attempts + 1)
    }

    @Test("new local candidates (an address changed) start an attempt at once and tell the peer a new generation")
    func migration() {
        var pair = Pair { _, _ in false }
        var now = 0.0
        while now < 11 { pair.tick(now: now); now += 0.25 }
        #expect(!pair.a.attempting)
        pair.a.localCandidates([.init(kind: .local, endpoint: Endpoint("10.10.10.99:51820")!)], now: now)
        pair.tick(now: now)
        #expect(pair.a.attempting && pair.b.remote.map(\.endpoint) == [Endpoint("10.10.10.99:51820")!], "\(pair.b.remote)")
    }

    @Test("a flood of candidate lists and probes from the peer stays within the probe budget; its candidates beyond what can be probed are refused")
    func bounded() {
        var f = PathFinder()
        var tx: UInt64 = 0
        let many = (0..<16).map { PathMessage.Candidate(kind: .local, endpoint: Endpoint("192.0.2.\($0 + 1):5000")!) }
        var probes = 0
        for i in 0..<400 {
            let now = Double(i) * 0.01
            let m = PathMessage.candidates(generation: UInt16(i), i % 2 == 0 ? many : many.reversed())
            for o in f.received(m, from: PathFinderTests.relay, now: now, via: PathFinderTests.relay, ownAddresses: [], directAlive: false, tx: { tx += 1; return tx }) {
                if case .send(.probe, _) = o { probes += 1 }
            }
        }
        // 4 seconds: the burst (64) plus 50 a second.
        #expect(probes <= 64 + 4 * 50 + 1, "\(probes) probes")
        let own = Endpoint("192.0.2.1:5000")!
        _ = f.received(.candidates(generation: 999, [.init(kind: .local, endpoint: own), .init(kind: .local, endpoint: Endpoint("127.0.0.1:5")!)]),
                       from: PathFinderTests.relay, now: 10, via: PathFinderTests.relay, ownAddresses: [own.address], directAlive: false, tx: { tx += 1; return tx })
        #expect(f.remote.isEmpty && f.candidatesRefused == 2)
        // An answer to no probe of ours proves nothing.
        let out = f.received(.probeAck(tx: 0xdead, seen: own), from: .direct(own), now: 10, via: PathFinderTests.relay, ownAddresses: [], directAlive: false, tx: { tx += 1; return tx })
        #expect(out.isEmpty && f.unmatchedAcks == 1)
    }

    @Test("hole punching off: no candidates, no probes, no answers")
    func off() {
        var s = PathsConfig(); s.holePunching = false
        var f = PathFinder(settings: s)
        f.localCandidates([.init(kind: .local, endpoint: Endpoint("10.0.0.1:1")!)], now: 0)
        var tx: UInt64 = 0
        #expect(f.tick(now: 1, route: PathFinderTests.relay, directAlive: false, active: true, tx: { tx += 1; return tx }).isEmpty)
        #expect(f.received(.probe(tx: 1), from: .direct(Endpoint("10.0.0.2:1")!), now: 1, via: PathFinderTests.relay, ownAddresses: [], directAlive: false, tx: { tx += 1; return tx }).isEmpty)
    }
}

extension PeerMachineTests {
    @Test("through a relay: a probe from a new source moves nothing, an answered probe moves traffic to the direct path, and silence on it brings traffic back to the relay within trust_seconds")
    func directThenBack() throws {
        let relayEP = Endpoint("100.64.9.9:51821")!
        // Neither knows where the other is: both are registered at the relay.
        let a = Node("10.0.0.1:51820"), b = Node("10.0.0.2:51820")
        a.table.configure([.init(name: "B", publicKey: b.own, endpoint: nil, prefixes: [siteB])], exported: [siteA], stamp: { _ in 0 })
        b.table.configure([.init(name: "A", publicKey: a.own, endpoint: nil, prefixes: [siteA])], exported: [siteB], stamp: { _ in 0 })
        let peerB = a.table.peers[0], peerA = b.table.peers[0]
        peerB.addRelayPath(relayEP, id: 2, a.table); peerA.addRelayPath(relayEP, id: 1, b.table)
        // A's packet starts the handshake through the relay.
        _ = peerB.outbound(PeerMachineTests.packet("240.1.1.20", "240.2.2.20")[...], count: 1, bytes: 28, now: 1, a.table)
        var toB = try run(a, a.table.take(), now: 1)
        #expect(toB.allSatisfy { $0.1 == .relay(relayEP, id: 2) })
        var toA: [([UInt8], Route)] = []
        for (m, _) in toB { toA += try receive(b, m, from: relayEP, route: .relay(relayEP, id: 1), now: 1).sent }
        toB = []
        for (m, _) in toA { toB += try receive(a, m, from: relayEP, route: .relay(relayEP, id: 2), now: 1).sent }
        for (m, _) in toB { _ = try receive(b, m, from: relayEP, route: .relay(relayEP, id: 1), now: 1) }
        #expect(peerB.current != nil && peerA.current != nil)
        #expect(peerB.route == .relay(relayEP, id: 2))

        // A probe reaches B straight from A's NAT: B answers it there and keeps the relay.
        let aNAT = Endpoint("100.64.1.2:40001")!
        let probe = peerB.current!.seal(PathMessage.probe(tx: 42).bytes[...])
        let r = try receive(b, probe, from: aNAT, now: 2)
        #expect(r.verdicts == [.path])
        #expect(peerA.route == .relay(relayEP, id: 1), "a probe moved the route")
        let ack = try #require(r.sent.first { $0.1 == .direct(aNAT) })

        // B's answer to a probe A sent proves the path for A: A's traffic goes direct.
        peerB.finder = PathFinder()
        var tx: UInt64 = 41
        let out = peerB.finder.received(.candidates(generation: 1, [.init(kind: .reflexive, endpoint: Endpoint("100.64.2.2:51820")!)]), from: .relay(relayEP, id: 2),
                                        now: 2, via: peerB.route, ownAddresses: [], directAlive: false, tx: { tx += 1; return tx })
        #expect(out.contains(.send(.probe(tx: 42), .direct(Endpoint("100.64.2.2:51820")!))))
        _ = try receive(a, ack.0, from: Endpoint("100.64.2.2:51820")!, now: 2.01)
        #expect(peerB.route == .direct(Endpoint("100.64.2.2:51820")!))
        #expect(peerB.routeChange?.why.hasPrefix("direct path 100.64.2.2:51820 proven") == true, "\(String(describing: peerB.routeChange))")

        // Nothing answers on the direct path any more: after trust_seconds traffic is relayed again.
        for i in 1...30 { peerB.tick(now: 2 + Double(i) * 0.25, a.table) }
        #expect(peerB.route == .relay(relayEP, id: 2))
        #expect(peerB.routeChange?.why.contains("unanswered") == true, "\(String(describing: peerB.routeChange))")
        #expect(a.table.take().contains { if case .log(_, let m) = $0 { return m.contains("back to the relay") } else { return false } })
    }

    @Test("after a restart the handshake goes to the cached direct path; when the peer is found at a relay meanwhile, the same initiation goes there at once (not at the 5-second retry)")
    func cachedPathThenRelay() throws {
        let a = Node("10.0.0.1:51820"), b = Node("10.0.0.2:51820")
        a.table.configure([.init(name: "B", publicKey: b.own, endpoint: nil, prefixes: [siteB])], exported: [siteA], stamp: { _ in 0 },
                          cachedPaths: { _ in [Endpoint("100.64.2.2:51820")!] })
        let peer = a.table.peers[0]
        #expect(peer.paths.map(\.route) == [.direct(Endpoint("100.64.2.2:51820")!)] && peer.finder.cachedPaths.count == 1)
        _ = peer.outbound(PeerMachineTests.packet("240.1.1.20", "240.2.2.20")[...], count: 1, bytes: 28, now: 1, a.table)
        let sent = try run(a, a.table.take(), now: 1)
        #expect(sent.count == 1 && sent[0].1 == .direct(Endpoint("100.64.2.2:51820")!))
        let relay = Endpoint("100.64.9.9:51821")!
        peer.addRelayPath(relay, id: 4, a.table)
        let again = a.table.take().compactMap { if case .send(let m, let to) = $0 { return (m, to) } else { return nil } }
        #expect(again.count == 1 && again[0].0 == sent[0].0 && again[0].1 == .relay(relay, id: 4))
        // A packet for a peer with no path at all waits; the peer found at a relay, the handshake goes at once.
        let c = Node("10.0.0.3:51820")
        c.table.configure([.init(name: "B", publicKey: b.own, endpoint: nil, prefixes: [siteB])], exported: [siteA], stamp: { _ in 0 })
        _ = c.table.peers[0].outbound(PeerMachineTests.packet("240.1.1.20", "240.2.2.20")[...], count: 1, bytes: 28, now: 1, c.table)
        #expect(try run(c, c.table.take(), now: 1).isEmpty)
        c.table.peers[0].addRelayPath(relay, id: 4, c.table)
        let first = try run(c, c.table.take(), now: 1.2)
        #expect(first.count == 1 && first[0].1 == .relay(relay, id: 4), "\(first.map(\.1))")
        // Found again there: nothing new is sent.
        peer.addRelayPath(relay, id: 4, a.table)
        #expect(a.table.take().isEmpty)
    }
}

@Suite("paths: the path cache")
struct PathCacheTests {
    static func dir() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("pathcache-\(UInt32.random(in: 0...UInt32.max))").path
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    @Test("proven paths are kept per peer across a restart (counts, round trips), at most 8, best first")
    func roundTrip() throws {
        let d = Self.dir(); defer { try? FileManager.default.removeItem(atPath: d) }
        let key = [UInt8](repeating: 3, count: 32)
        let c = PathCache(directory: d)
        try c.record(key, Endpoint("100.64.2.2:51820")!, rtt: 0.0004, now: 10)
        try c.record(key, Endpoint("100.64.2.2:51820")!, rtt: 0.0005, now: 20)
        for i in 0..<10 { try c.record(key, Endpoint("192.0.2.\(i + 1):51820")!, rtt: nil, now: Double(30 + i)) }
        let back = PathCache(directory: d).snapshot()[key] ?? []
        #expect(back.count == 8 && back[0].endpoint == Endpoint("100.64.2.2:51820")! && back[0].successes == 2 && back[0].roundTripMs == 0.5, "\(back)")
        #expect(PathCache(directory: d).problem == nil)
    }

    @Test("a corrupt cache is reported and ignored, and the next proven path replaces it")
    func corrupt() throws {
        let d = Self.dir(); defer { try? FileManager.default.removeItem(atPath: d) }
        try "{\"version\": 1, \"peers\": {\"x\": [{\"endpoint\": 5}]}".write(toFile: d + "/paths.json", atomically: true, encoding: .utf8)
        let c = PathCache(directory: d)
        #expect(c.snapshot().isEmpty)
        #expect(c.problem?.contains("paths.json is not a path cache") == true, "\(String(describing: c.problem))")
        try c.record([UInt8](repeating: 1, count: 32), Endpoint("10.0.0.1:1")!, rtt: nil, now: 1)
        #expect(PathCache(directory: d).problem == nil && PathCache(directory: d).snapshot().count == 1)
    }

    @Test("epsilon-greedy with a seeded generator: the best path first about 1 - epsilon of the time, every other one explored")
    func epsilonGreedy() {
        let entries = [PathCache.Entry(endpoint: Endpoint("10.0.0.1:1")!, roundTripMs: 5, successes: 1, lastSuccess: 5),
                       PathCache.Entry(endpoint: Endpoint("10.0.0.2:1")!, roundTripMs: 1, successes: 9, lastSuccess: 1),
                       PathCache.Entry(endpoint: Endpoint("10.0.0.3:1")!, roundTripMs: 2, successes: 9, lastSuccess: 9)]
        var rng = SplitMix64(seed: 42)
        var firsts: [Endpoint: Int] = [:]
        for _ in 0..<10_000 { firsts[PathCache.order(entries, epsilon: 0.1, using: &rng)[0], default: 0] += 1 }
        let best = firsts[Endpoint("10.0.0.2:1")!] ?? 0
        #expect((8800...9200).contains(best), "\(firsts)")
        #expect((firsts[Endpoint("10.0.0.1:1")!] ?? 0) > 300 && (firsts[Endpoint("10.0.0.3:1")!] ?? 0) > 300, "\(firsts)")
        // The same seed, the same choices.
        var a = SplitMix64(seed: 7), b = SplitMix64(seed: 7)
        #expect((0..<50).map { _ in PathCache.order(entries, epsilon: 0.5, using: &a) } == (0..<50).map { _ in PathCache.order(entries, epsilon: 0.5, using: &b) })
        var r = SplitMix64(seed: 1)
        #expect(PathCache.order(entries, epsilon: 0, using: &r) == ["10.0.0.2:1", "10.0.0.3:1", "10.0.0.1:1"].map { Endpoint($0)! })
    }
}
import Foundation
import Testing
import RelayCore

/// RFC 5780 on both sides, as pure logic: the reflector's answers and routes, and the client's
/// state machine driven by simulated NATs (the kernel tests drive it through real ones).
@Suite("RFC 5780 behaviour discovery")
struct NATDiscoveryTests {
    let d = Reflector.Discovery(primary: Endpoint("192.0.2.1:3478")!, other: Endpoint("192.0.2.2:3479")!)

    func request(_ attrs: [(UInt16, [UInt8])] = [], tid: [UInt8] = Array(repeating: 3, count: 12)) -> [UInt8] {
        STUN.encode(type: STUN.bindingRequest, transactionID: tid, attributes: attrs)
    }

    @Test("four sockets; answers carry RESPONSE-ORIGIN and OTHER-ADDRESS; CHANGE-REQUEST picks the socket")
    func reflectorRoutes() throws {
        #expect(d.sockets.map(\.description) == ["192.0.2.1:3478", "192.0.2.1:3479", "192.0.2.2:3478", "192.0.2.2:3479"])
        let src = Endpoint("203.0.113.9:5000")!
        for (flags, want) in [((false, false), 0), ((false, true), 1), ((true, false), 2), ((true, true), 3)] {
            for received in 0..<4 {
                let req = request([(STUN.Attr.changeRequest, STUN.changeRequestValue(address: flags.0, port: flags.1))])
                let (a, route) = Reflector.answer(req[...], from: src, discovery: d, receivedOn: received)
                guard case .respond(let r) = a else { Issue.record("no answer"); continue }
                let out = Reflector.Discovery.socket(received, route)
                #expect(out == received ^ want)
                let m = try STUN.parse(r[...])
                #expect(m.type == STUN.bindingSuccess)
                let origin = STUN.decodeAddress(try #require(m.attribute(STUN.Attr.responseOrigin)), xor: false, transactionID: [])
                let other = STUN.decodeAddress(try #require(m.attribute(STUN.Attr.otherAddress)), xor: false, transactionID: [])
                #expect(origin == d.sockets[out], "RESPONSE-ORIGIN is where the answer leaves from")
                // OTHER-ADDRESS differs from the receiving socket in both address and port.
                #expect(other?.address != d.sockets[received].address && other?.port != d.sockets[received].port)
            }
        }
    }

    @Test("RESPONSE-PORT sends the answer to the source's address at that port; without a second address CHANGE-REQUEST gets 420")
    func responsePortAnd420() throws {
        let req = request([(STUN.Attr.responsePort, [0x30, 0x39, 0, 0])])
        let (a, route) = Reflector.answer(req[...], from: Endpoint("203.0.113.9:5000")!, discovery: nil, receivedOn: 0)
        guard case .respond(let r) = a else { Issue.record("no answer"); return }
        #expect(route.responsePort == 12345)
        #expect(try STUN.parse(r[...]).type == STUN.bindingSuccess)
        let change = request([(STUN.Attr.changeRequest, STUN.changeRequestValue(address: true, port: false))])
        guard case .respond(let e) = Reflector.answer(change[...], from: Endpoint("203.0.113.9:5000")!) else { Issue.record("no answer"); return }
        let m = try STUN.parse(e[...])
        #expect(m.type == STUN.bindingError && m.attribute(STUN.Attr.unknownAttributes) == [0, 3])
        // Malformed CHANGE-REQUEST / RESPONSE-PORT: dropped, never answered.
        for bad in [request([(STUN.Attr.changeRequest, [0, 0, 4])]), request([(STUN.Attr.responsePort, [0, 0, 0, 0])])] {
            if case .respond = Reflector.answer(bad[...], from: Endpoint("203.0.113.9:5000")!, discovery: d, receivedOn: 0).0 { Issue.record("answered a malformed request") }
        }
    }

    @Test("RFC 8489 retransmission: 0, RTO, 3 RTO, 7 RTO...; gives up 16 RTO after the last")
    func schedule() {
        let s = STUNSchedule(rto: 0.5, count: 7)
        #expect((0..<7).map { s.offset($0) } == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        #expect(s.giveUp == 39.5)  // the RFC's own example figure
        var t = STUNTransactions<String>(schedule: STUNSchedule(rto: 0.1, count: 3))
        let (tid, _) = t.begin("x", to: Endpoint("192.0.2.1:3478")!, now: 0)
        #expect(t.tick(now: 0.05).resend.isEmpty)
        #expect(t.tick(now: 0.1).resend.count == 1)
        #expect(t.tick(now: 0.2).resend.isEmpty)
        #expect(t.tick(now: 0.31).resend.count == 1)
        #expect(t.tick(now: 1.0).resend.isEmpty)  // all 3 sent
        #expect(t.tick(now: 1.85).failed.isEmpty)
        #expect(t.tick(now: 1.95).failed.count == 1)  // 0.3 + 1.6
        #expect(!t.contains(tid))
    }

    /// A simulated NAT in front of the client: its mapping and filtering rules, RFC 4787 style.
    struct SimNAT {
        var mapping: NATBehaviour.Kind, filtering: NATBehaviour.Kind, hairpin: Bool
        var publicAddress = IPAddress("198.51.100.1")!
        var contacted: [Endpoint] = []
        func mapped(towards dst: Endpoint) -> Endpoint {
            switch mapping {
            case .noNAT: return Endpoint("10.0.0.2:51820")!
            case .endpointIndependent: return Endpoint(publicAddress, port: 40000)
            case .addressDependent: return Endpoint(publicAddress, port: dst.address == IPAddress("192.0.2.1")! ? 40000 : 40001)
            default: return Endpoint(publicAddress, port: 40000 + dst.port % 100 + (dst.address == IPAddress("192.0.2.1")! ? 0 : 50))
            }
        }
        func admits(_ from: Endpoint) -> Bool {
            switch filtering {
            case .endpointIndependent, .noNAT: return true
            case .addressDependent: return contacted.contains { $0.address == from.address }
            default: return contacted.contains(from)
            }
        }
    }

    func simulate(_ nat: SimNAT) throws -> NATBehaviour {
        var nat = nat
        let server = d.primary
        let first = nat.mapped(towards: server)
        var disc = NATDiscovery(server: server, other: d.other, mapped: first, behindNAT: nat.mapping != .noNAT, schedule: STUNSchedule(rto: 0.1, count: 2))
        var now = 0.0
        var queue = disc.start(now: now)
        nat.contacted.append(server)
        for _ in 0..<200 where !disc.finished {
            var next: [(message: [UInt8], to: Endpoint)] = []
            for (msg, to) in queue {
                nat.contacted.append(to)
                let m = try STUN.parse(msg[...])
                if to == first {  // hairpinning: our own request comes back, or not
                    if nat.hairpin { next += disc.receive(m, from: first, now: now) }
                    continue
                }
                guard let received = d.sockets.firstIndex(of: to) else { continue }
                let (a, route) = Reflector.answer(msg[...], from: nat.mapped(towards: to), discovery: d, receivedOn: received)
                guard case .respond(let r) = a else { continue }
                let origin = d.sockets[Reflector.Discovery.socket(received, route)]
                if nat.admits(origin) { next += disc.receive(try STUN.parse(r[...]), from: origin, now: now) }
            }
            now += 0.05
            queue = next + disc.tick(now: now)
        }
        return try #require(disc.result)
    }

    @Test("classifies simulated NATs: every mapping and filtering kind, hairpinning, no NAT",
          arguments: [
            (NATBehaviour.Kind.endpointIndependent, NATBehaviour.Kind.endpointIndependent, true),
            (.endpointIndependent, .addressDependent, false),
            (.endpointIndependent, .addressAndPortDependent, false),
            (.addressDependent, .addressAndPortDependent, false),
            (.addressAndPortDependent, .addressAndPortDependent, true),
            (.noNAT, .endpointIndependent, false),
            (.noNAT, .addressAndPortDependent, false),
          ])
    func classify(_ mapping: NATBehaviour.Kind, _ filtering: NATBehaviour.Kind, _ hairpin: Bool) throws {
        let r = try simulate(SimNAT(mapping: mapping, filtering: filtering, hairpin: hairpin))
        #expect(r.mapping == mapping, "\(r.explanation)")
        #expect(r.filtering == filtering, "\(r.explanation)")
        #expect(r.hairpinning == (mapping == .noNAT ? nil : hairpin), "\(r.explanation)")
        // Filtering tests run before anything is sent to the other address (or they would open it).
        let order = r.tests.map(\.name)
        #expect(order.firstIndex(of: NATDiscovery.Step.mappingOtherAddress.rawValue)! > order.firstIndex(of: NATDiscovery.Step.filteringChangePort.rawValue)!)
    }

    @Test("the rate limiter's state stays bounded under a flood of new sources, and known sources keep their buckets")
    func limiterBound() {
        var l = RateLimiter(rate: 1, burst: 2, capacity: 100)
        let known = IPAddress("192.0.2.1")!
        #expect(l.allow(known, now: 0) && l.allow(known, now: 0) && !l.allow(known, now: 0))
        for i in 0..<10_000 { _ = l.allow(.v4(IPv4Address(0x0a00_0000 + UInt32(i))), now: 0.5) }
        #expect(l.tracked <= 100)
        // Idle long enough to refill: forgotten or not, it gets its burst back.
        #expect(l.allow(known, now: 10) && l.allow(known, now: 10))
    }

    @Test("fuzzed requests against the four-socket reflector and fuzzed answers into the client never trap, and answers only leave from the four sockets")
    func fuzz() throws {
        var rng = SystemRandomNumberGenerator()
        let good = request([(STUN.Attr.changeRequest, STUN.changeRequestValue(address: true, port: true)), (STUN.Attr.responsePort, [0x13, 0x88, 0, 0])])
        for cut in 0..<good.count { _ = Reflector.answer(good[..<cut], from: Endpoint("192.0.2.9:1")!, discovery: d, receivedOn: cut % 4) }
        var disc = NATDiscovery(server: d.primary, other: d.other, mapped: Endpoint("198.51.100.1:40000")!, behindNAT: true, schedule: STUNSchedule(rto: 0.1, count: 2))
        let sent = disc.start(now: 0)
        for i in 0..<5000 {
            var b = good
            for _ in 0..<Int.random(in: 1...4, using: &rng) { b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            let (a, route) = Reflector.answer(b[...], from: Endpoint("192.0.2.9:1")!, discovery: d, receivedOn: i % 4)
            #expect((0..<4).contains(Reflector.Discovery.socket(i % 4, route)))
            // The client side: a mutated copy of a real answer to one of its own requests.
            if case .respond(var r) = a, let (msg, _) = sent.first {
                for k in 8..<20 { r[k] = msg[k] }  // its transaction id
                if r.count > 24 { r[Int.random(in: 20..<r.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng) }
                if let m = try? STUN.parse(r[...]) { _ = disc.receive(m, from: d.primary, now: 0.01) }
            }
        }
    }
}

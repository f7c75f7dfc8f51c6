import Foundation
import Testing
import RelayCore

private func hex(_ s: String) -> [UInt8] { s.split(whereSeparator: { $0 == " " || $0 == "\n" }).map { UInt8($0, radix: 16)! } }

@Suite("STUN codec and reflector")
struct STUNTests {
    @Test("RFC 5769 sample IPv4 response: FINGERPRINT verifies, XOR-MAPPED-ADDRESS is 192.0.2.1:32853")
    func rfc5769Response() throws {
        let b = hex("""
        01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
        00 20 00 08 00 01 a1 47 e1 12 a6 43
        00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
        80 28 00 04 c0 7d 4c 96
        """)
        let m = try STUN.parse(b[...])
        #expect(m.type == STUN.bindingSuccess && m.hasFingerprint)
        let xma = try #require(m.attribute(STUN.Attr.xorMappedAddress))
        #expect(STUN.decodeAddress(xma, xor: true, transactionID: m.transactionID)?.description == "192.0.2.1:32853")
        var bad = b; bad[30] ^= 1
        #expect(throws: STUN.ParseError.badFingerprint) { _ = try STUN.parse(bad[...]) }
    }

    @Test("CRC-32 check value")
    func crc() { #expect(STUN.crc32(Array("123456789".utf8)[...]) == 0xCBF4_3926) }

    @Test("a binding request gets XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, SOFTWARE and FINGERPRINT, transaction id echoed")
    func binding() throws {
        let tid = (0..<12).map { UInt8($0 * 7) }
        let req = STUN.encode(type: STUN.bindingRequest, transactionID: tid, attributes: [])
        for src in ["203.0.113.7:4242", "[2001:db8::7]:5353"] {
            guard case .respond(let r) = Reflector.answer(req[...], from: Endpoint(src)!) else { Issue.record("no answer"); continue }
            let m = try STUN.parse(r[...])
            #expect(m.type == STUN.bindingSuccess && m.transactionID == tid && m.hasFingerprint)
            #expect(STUN.decodeAddress(m.attribute(STUN.Attr.xorMappedAddress)!, xor: true, transactionID: tid)?.description == src)
            #expect(STUN.decodeAddress(m.attribute(STUN.Attr.mappedAddress)!, xor: false, transactionID: tid)?.description == src)
            #expect(String(decoding: m.attribute(STUN.Attr.software)!, as: UTF8.self) == Reflector.software)
        }
    }

    @Test("unknown comprehension-required attributes get 420 listing them; optional ones are ignored")
    func unknownAttributes() throws {
        let tid = [UInt8](repeating: 9, count: 12)
        let req = STUN.encode(type: STUN.bindingRequest, transactionID: tid, attributes: [(0x7777, [1, 2, 3, 4]), (0x8123, [5])])
        guard case .respond(let r) = Reflector.answer(req[...], from: Endpoint("192.0.2.1:1")!) else { Issue.record("no answer"); return }
        let m = try STUN.parse(r[...])
        #expect(m.type == STUN.bindingError)
        #expect(m.attribute(STUN.Attr.errorCode).map { Int($0[2]) * 100 + Int($0[3]) } == 420)
        #expect(m.attribute(STUN.Attr.unknownAttributes) == [0x77, 0x77])
        let ok = STUN.encode(type: STUN.bindingRequest, transactionID: tid, attributes: [(0x8123, [5])])
        if case .respond(let r2) = Reflector.answer(ok[...], from: Endpoint("192.0.2.1:1")!) { #expect(try STUN.parse(r2[...]).type == STUN.bindingSuccess) }
    }

    @Test("RFC 3489 clients (no magic cookie) get MAPPED-ADDRESS with their 16-byte id")
    func classic() throws {
        let tid = (0..<16).map { UInt8(200 - $0) }
        let req: [UInt8] = [0, 1, 0, 0] + tid
        guard case .respond(let r) = Reflector.answer(req[...], from: Endpoint("198.51.100.2:777")!) else { Issue.record("no answer"); return }
        let m = try STUN.parse(r[...])
        #expect(m.classic && m.transactionID == tid && !m.hasFingerprint)
        #expect(STUN.decodeAddress(m.attribute(STUN.Attr.mappedAddress)!, xor: false, transactionID: [])?.description == "198.51.100.2:777")
    }

    @Test("garbage, truncated and oversized datagrams are dropped, never a trap")
    func fuzz() {
        var rng = SystemRandomNumberGenerator()
        let good = STUN.encode(type: STUN.bindingRequest, transactionID: [UInt8](repeating: 1, count: 12), attributes: [(STUN.Attr.software, [65, 66])])
        for cut in 0..<good.count { _ = Reflector.answer(good[..<cut], from: Endpoint("192.0.2.1:1")!) }
        for _ in 0..<5000 {
            var b = good
            for _ in 0..<Int.random(in: 1...4, using: &rng) { b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            _ = Reflector.answer(b[...], from: Endpoint("192.0.2.1:1")!)
        }
        #expect(Reflector.answer([UInt8](repeating: 0, count: 9000)[...], from: Endpoint("192.0.2.1:1")!) == .drop(reason: "malformed"))
        #expect(Reflector.answer(Array("GET / HTTP/1.1".utf8)[...], from: Endpoint("192.0.2.1:1")!) == .drop(reason: "malformed"))
    }

    @Test("rate limiter: a burst then the rate per source; state bounded")
    func rateLimit() {
        var r = RateLimiter(rate: 10, burst: 5, capacity: 100)
        let a = IPAddress("192.0.2.1")!
        func allow(_ now: Double) -> Bool { r.allow(a, now: now) }
        var first5 = true
        for _ in 0..<5 { first5 = first5 && allow(0) }
        #expect(first5)
        #expect(!allow(0))
        #expect(allow(0.11))
        for i in 0..<1000 { _ = r.allow(.v4(IPv4Address(UInt32(i))), now: 1) }
        #expect(r.tracked <= 100)
    }

    @Test("majority vote: one liar of three is outvoted; two disagreeing of two is no quorum; one observer is evidence only; one vote per observer")
    func vote() {
        let t = Date()
        func o(_ who: String, _ e: String, _ dt: Double = 0) -> ReflectionVote.Observation { .init(observer: who, mapped: Endpoint(e)!, at: t.addingTimeInterval(dt)) }
        let v1 = ReflectionVote.decide([o("a", "203.0.113.5:4000"), o("b", "203.0.113.5:4000"), o("liar", "198.51.100.66:1")])
        #expect(v1.address == "203.0.113.5:4000" && v1.votes == 2 && v1.quorum == 2)
        let v2 = ReflectionVote.decide([o("a", "203.0.113.5:4000"), o("b", "203.0.113.9:4000")])
        #expect(v2.address == nil && v2.explanation.contains("no quorum"))
        let v3 = ReflectionVote.decide([o("a", "203.0.113.5:4000")])
        #expect(v3.address == nil && v3.explanation.contains("evidence, not truth"))
        // A chatty liar repeating itself still has one vote.
        let v4 = ReflectionVote.decide([o("a", "203.0.113.5:4000"), o("b", "203.0.113.5:4000")] + (0..<50).map { o("liar", "198.51.100.66:1", Double($0)) })
        #expect(v4.address == "203.0.113.5:4000")
        // Same address, different ports from different observers: endpoint-dependent mapping.
        let v5 = ReflectionVote.decide([o("a", "203.0.113.5:4000"), o("b", "203.0.113.5:4001"), o("c", "203.0.113.5:4002")])
        #expect(v5.mapping == .endpointDependent && v5.address == nil)
        #expect(ReflectionVote.decide([o("a", "203.0.113.5:4000"), o("b", "203.0.113.5:4000")]).mapping == .endpointIndependent)
    }
}

@Suite("STUN fast path")
struct STUNFastPathTests {
    @Test("the allocation-free answer is byte-identical to the general one (IPv4 and IPv6, with and without FINGERPRINT); anything else falls back")
    func sameBytes() throws {
        var rng = SystemRandomNumberGenerator()
        for src in ["203.0.113.7:4242", "[2001:db8::7]:5353", "0.0.0.0:1", "[::ffff:1.2.3.4]:65535"] {
            for fp in [false, true] {
                let tid = (0..<12).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let req = STUN.encode(type: STUN.bindingRequest, transactionID: tid, attributes: [], fingerprint: fp)
                guard case .respond(let general) = Reflector.answer(req[...], from: Endpoint(src)!) else { Issue.record("no answer"); continue }
                var out = [UInt8](repeating: 0, count: 256)
                let n = req.withUnsafeBytes { r in out.withUnsafeMutableBytes { Reflector.answerFast(r, from: Endpoint(src)!, into: $0) } }
                #expect(n.map { Array(out[0..<$0]) } == general, "\(src) fingerprint \(fp)")
            }
        }
        let withAttr = STUN.encode(type: STUN.bindingRequest, transactionID: [UInt8](repeating: 1, count: 12), attributes: [(STUN.Attr.software, [65])])
        var out = [UInt8](repeating: 0, count: 256)
        #expect(withAttr.withUnsafeBytes { r in out.withUnsafeMutableBytes { Reflector.answerFast(r, from: Endpoint("1.2.3.4:5")!, into: $0) } } == nil)
        var badFP = STUN.encode(type: STUN.bindingRequest, transactionID: [UInt8](repeating: 1, count: 12), attributes: [], fingerprint: true)
        badFP[27] ^= 1
        #expect(badFP.withUnsafeBytes { r in out.withUnsafeMutableBytes { Reflector.answerFast(r, from: Endpoint("1.2.3.4:5")!, into: $0) } } == nil)
    }
}

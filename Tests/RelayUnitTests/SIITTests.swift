import Testing
import RelayCore

/// SIIT (RFC 7915) and RFC 6052 as pure logic. Checksums are verified from scratch (pseudo-header
/// sums computed here), not by the translator's own incremental arithmetic.
@Suite("SIIT translation")
struct SIITTests {
    @Test("RFC 6052 section 2.4's table: 192.0.2.33 in every allowed prefix length, and back", arguments: [
        ("2001:db8::/32", "2001:db8:c000:221::"),
        ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
        ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
        ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
        ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
        ("2001:db8:122:344::/96", "2001:db8:122:344::c000:221"),
        ("64:ff9b::/96", "64:ff9b::c000:221"),
    ])
    func rfc6052(_ prefix: String, _ expected: String) throws {
        let p = try IPPrefix(parsing: prefix)
        let v4 = IPv4Address("192.0.2.33")!
        let v6 = try #require(RFC6052.embed(v4, in: p))
        #expect(v6 == IPv6Address(expected)!)
        #expect(RFC6052.extract(v6, from: p) == v4)
        #expect(RFC6052.embed(v4, in: try IPPrefix(parsing: "2001:db8::/80")) == nil, "80 is not an RFC 6052 length")
    }

    let map = SIIT.AddressMap(
        toV6: { RFC6052.embed($0, in: try! IPPrefix(parsing: "64:ff9b:2222::/96")) },
        toV4: { RFC6052.extract($0, from: try! IPPrefix(parsing: "64:ff9b:2222::/96")) })

    func ipv4(proto: UInt8, payload: [UInt8], ttl: UInt8 = 64, flags: UInt16 = 0x4000, id: UInt16 = 0x1234, src: [UInt8] = [192, 168, 1, 20], dst: [UInt8] = [240, 2, 2, 20]) -> [UInt8] {
        var h: [UInt8] = [0x45, 0x28, 0, 0, UInt8(id >> 8), UInt8(id & 0xff), UInt8(flags >> 8), UInt8(flags & 0xff), ttl, proto, 0, 0] + src + dst
        let total = 20 + payload.count
        h[2] = UInt8(total >> 8); h[3] = UInt8(total & 0xff)
        let c = internetChecksum(h[...]); h[10] = UInt8(c >> 8); h[11] = UInt8(c & 0xff)
        return h + payload
    }

    func udp(_ data: [UInt8], src: [UInt8], dst: [UInt8], zero: Bool = false) -> [UInt8] {
        var u: [UInt8] = [0x30, 0x39, 0x23, 0x28, 0, UInt8(8 + data.count), 0, 0] + data
        if !zero {
            let c = internetChecksum((src + dst + [0, 17, 0, UInt8(u.count)] + u)[...])
            u[6] = UInt8(c >> 8); u[7] = UInt8(c & 0xff)
        }
        return u
    }

    func run(_ pkt: [UInt8], six: Bool) -> (SIIT.Outcome, [UInt8]) {
        var out = [UInt8](repeating: 0, count: 2000)
        let r = pkt.withUnsafeBytes { p in out.withUnsafeMutableBytes { o in six ? SIIT.toIPv6(p, into: o, map: map) : SIIT.toIPv4(p, into: o, map: map) } }
        if case .translated(let l) = r { return (r, Array(out[0..<l])) }
        return (r, [])
    }

    /// Transport checksum over the IPv6 pseudo-header, from scratch: 0 when valid.
    func v6TransportOK(_ p: [UInt8], next: UInt8, at: Int = 40) -> Bool {
        let l4 = Array(p[at...])
        let pseudo = Array(p[8..<40]) + [0, 0, UInt8(l4.count >> 8), UInt8(l4.count & 0xff), 0, 0, 0, next]
        return internetChecksum((pseudo + l4)[...]) == 0
    }

    @Test("UDP: header mapping (traffic class, hop limit decremented, next header), checksum valid, and back again")
    func udpRoundTrip() throws {
        let src: [UInt8] = [192, 168, 1, 20], dst: [UInt8] = [240, 2, 2, 20]
        let v4 = ipv4(proto: 17, payload: udp(Array("hello".utf8), src: src, dst: dst), src: src, dst: dst)
        let (r, v6) = run(v4, six: true)
        #expect(r == .translated(length: 40 + 13))
        #expect(v6[0] == 0x62 && v6[1] == 0x80, "traffic class = TOS 0x28")
        #expect(v6[6] == 17 && v6[7] == 63)
        #expect(IPv6Address(bytes: Array(v6[8..<24]))?.description == "64:ff9b:2222::c0a8:114")
        #expect(v6TransportOK(v6, next: 17))
        let (r2, back) = run(v6, six: false)
        #expect(r2 == .translated(length: v4.count))
        #expect(Array(back[12..<20]) == src + dst && back[8] == 62 && back[9] == 17)
        #expect(internetChecksum(back[0..<20]) == 0, "IPv4 header checksum")
        #expect(Array(back[20...]) == Array(v4[20...]), "the UDP datagram is what was sent, checksum included")
        #expect(back[6] & 0x40 == 0, "small packets leave without DF (RFC 7915 5.1: 1260 bytes or less)")
    }

    @Test("IPv4 UDP with a zero checksum gets one computed; in a fragment it is dropped")
    func zeroChecksum() {
        let src: [UInt8] = [192, 168, 1, 20], dst: [UInt8] = [240, 2, 2, 20]
        let (_, v6) = run(ipv4(proto: 17, payload: udp([1, 2, 3], src: src, dst: dst, zero: true), src: src, dst: dst), six: true)
        #expect(v6[46] != 0 || v6[47] != 0)
        #expect(v6TransportOK(v6, next: 17))
        let (r, _) = run(ipv4(proto: 17, payload: udp([1, 2, 3], src: src, dst: dst, zero: true), flags: 0x2000, src: src, dst: dst), six: true)
        #expect(r == .drop("IPv4 UDP with a zero checksum in a fragment"))
    }

    @Test("fragments carry an IPv6 Fragment header with the IPv4 identification, offset and MF; and back")
    func fragments() {
        let src: [UInt8] = [192, 168, 1, 20], dst: [UInt8] = [240, 2, 2, 20]
        let v4 = ipv4(proto: 17, payload: Array(repeating: 7, count: 16), flags: 0x2000 | 4, id: 0xBEEF, src: src, dst: dst)
        let (_, v6) = run(v4, six: true)
        #expect(v6[6] == 44 && v6[40] == 17)
        #expect(v6[42] == 0 && v6[43] == 0x21, "offset 4 (x8 bytes) and M")
        #expect(Array(v6[44..<48]) == [0, 0, 0xBE, 0xEF])
        let (_, back) = run(v6, six: false)
        #expect(back[4] == 0xBE && back[5] == 0xEF && back[6] == 0x20 && back[7] == 4)
    }

    @Test("ICMP echo maps to ICMPv6 echo with a pseudo-header checksum, and back")
    func echo() {
        let src: [UInt8] = [192, 168, 1, 20], dst: [UInt8] = [240, 2, 2, 20]
        var icmp: [UInt8] = [8, 0, 0, 0, 0x12, 0x34, 0, 1] + Array("ping".utf8)
        let c = internetChecksum(icmp[...]); icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
        let (_, v6) = run(ipv4(proto: 1, payload: icmp, src: src, dst: dst), six: true)
        #expect(v6[6] == 58 && v6[40] == 128)
        #expect(v6TransportOK(v6, next: 58))
        let (_, back) = run(v6, six: false)
        #expect(back[9] == 1 && back[20] == 8 && internetChecksum(back[20...]) == 0)
        #expect(Array(back[24...]) == Array(icmp[4...]))
    }

    @Test("ICMP errors: port unreachable and fragmentation needed map with their inner packets translated and MTUs adjusted")
    func errors() throws {
        // B's router tells A's host (as seen in IPv4) that 192.168.1.20:9000 is unreachable.
        let hostA: [UInt8] = [240, 1, 1, 20], hostB: [UInt8] = [192, 168, 1, 20]
        let innerPkt = ipv4(proto: 17, payload: udp([9], src: hostA, dst: hostB), src: hostA, dst: hostB)
        var icmp: [UInt8] = [3, 3, 0, 0, 0, 0, 0, 0] + innerPkt
        var c = internetChecksum(icmp[...]); icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
        let (r, v6) = run(ipv4(proto: 1, payload: icmp, src: hostB, dst: hostA), six: true)
        guard case .translated = r else { Issue.record("\(r)"); return }
        #expect(v6[40] == 1 && v6[41] == 4, "port unreachable")
        #expect(v6[48] >> 4 == 6 && v6[48 + 6] == 17, "inner packet is IPv6 UDP")
        #expect(IPv6Address(bytes: Array(v6[(48 + 24)..<(48 + 40)]))?.description == "64:ff9b:2222::c0a8:114")
        #expect(v6TransportOK(v6, next: 58))
        #expect(Int(v6[4]) << 8 | Int(v6[5]) == v6.count - 40)
        // Fragmentation needed, MTU 1400 -> Packet Too Big 1420; and back: 1420 -> 1400.
        icmp[0] = 3; icmp[1] = 4; icmp[6] = 0x05; icmp[7] = 0x78; icmp[2] = 0; icmp[3] = 0
        c = internetChecksum(icmp[...]); icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
        let (_, ptb) = run(ipv4(proto: 1, payload: icmp, src: hostB, dst: hostA), six: true)
        #expect(ptb[40] == 2 && Int(ptb[46]) << 8 | Int(ptb[47]) == 1420)
        let (_, fn) = run(ptb, six: false)
        #expect(fn[20] == 3 && fn[21] == 4 && Int(fn[26]) << 8 | Int(fn[27]) == 1400)
        #expect(internetChecksum(fn[20...]) == 0)
        #expect(Array(fn[(28 + 12)..<(28 + 20)]) == hostA + hostB, "inner IPv4 addresses restored")
    }

    @Test("no translation possible: unmapped addresses, expired TTL, unknown ICMP types are dropped with a reason; fuzz never traps")
    func drops() {
        let (r1, _) = run(ipv4(proto: 17, payload: udp([1], src: [10, 0, 0, 1], dst: [10, 0, 0, 2]), ttl: 1, src: [10, 0, 0, 1], dst: [10, 0, 0, 2]), six: true)
        #expect(r1 == .drop("TTL expired"))
        var v6 = [UInt8](repeating: 0, count: 48); v6[0] = 0x60; v6[5] = 8; v6[6] = 17; v6[7] = 64
        v6[8] = 0xfd; v6[24] = 0xfd  // fd00:: is not in the RFC 6052 prefix
        let (r2, _) = run(v6, six: false)
        if case .drop(let why) = r2 { #expect(why.contains("has no IPv4 mapping")) } else { Issue.record("translated an unmapped address") }
        var rng = SystemRandomNumberGenerator()
        let seeds = [ipv4(proto: 1, payload: [3, 3, 0, 0, 0, 0, 0, 0] + ipv4(proto: 17, payload: [0, 1, 0, 2, 0, 9, 0, 0, 1]), src: [192, 168, 1, 20], dst: [240, 2, 2, 20]),
                     ipv4(proto: 6, payload: [UInt8](repeating: 1, count: 20))]
        for i in 0..<20_000 {
            var b = seeds[i % 2]
            for _ in 0..<Int.random(in: 1...6, using: &rng) { b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            let (_, out) = run(b, six: true)
            if !out.isEmpty { _ = run(out, six: false) }
            _ = run(b, six: false)
        }
    }
}

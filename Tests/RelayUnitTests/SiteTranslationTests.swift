import Foundation
import Testing
import RelayCore

/// Where relayd translates and how each address maps (the two-site example with IPv6).
@Suite("site translation (SIIT on the site path)")
struct SiteTranslationTests {
    static func P(_ s: String) -> IPPrefix { IPPrefix(s)! }
    static func A4(_ s: String) -> IPv4Address { IPv4Address(s)! }
    static func A6(_ s: String) -> IPv6Address { IPv6Address(s)! }

    /// Site A's view: its own site, and peer B's site.
    static var siteA: RelayConfiguration {
        var c = RelayConfiguration()
        c.site = SiteConfig(name: "A", lan4: P("192.168.1.0/24"), virtual4: P("240.1.1.0/24"), virtual6: P("64:ff9b:1111::/96"),
                            lan6: P("fd00:cafe::/64"), virtual6Lan: P("fd11:1111::/64"), map: [ExplicitMapping(ipv4: A4("192.168.1.30"), ipv6: A6("fd00:cafe::30"))])
        c.peers = [PeerConfig(name: "gw-b", publicKey: "", sites: [SiteConfig(name: "B", lan4: P("10.2.0.0/24"), virtual4: P("240.2.2.0/24"), virtual6: P("64:ff9b:2222::/96"), virtual6Lan: P("fd22:2222::/64"))])]
        return c
    }

    @Test("which packets change family where: IPv6 to another site's RFC 6052 name leaves as IPv4; IPv4 for a mapped IPv6 host arrives as IPv6; nothing else")
    func decisions() {
        let t = SiteTranslator(Self.siteA)
        #expect(t.isActive)
        #expect(t.translatesOutbound(Self.A6("64:ff9b:2222::10.2.0.20")))
        #expect(!t.translatesOutbound(Self.A6("fd22:2222::30")), "IPv6 to IPv6 is the kernel's prefix NAT")
        #expect(!t.translatesOutbound(Self.A6("64:ff9b:1111::192.168.1.20")), "the own site's names are not sent anywhere")
        #expect(t.translatesInbound(Self.A4("240.1.1.30")))
        #expect(!t.translatesInbound(Self.A4("240.1.1.20")), "an IPv4 host stays IPv4")
        #expect(!t.translatesInbound(Self.A4("240.2.2.30")))
        #expect(!SiteTranslator(RelayConfiguration()).isActive)
    }

    @Test("address maps: explicit mappings and RFC 6052 names through the virtual prefixes, host numbers kept; outside the LAN nothing")
    func addresses() {
        let t = SiteTranslator(Self.siteA)
        #expect(t.toV4(Self.A6("fd00:cafe::30")) == Self.A4("240.1.1.30"))
        #expect(t.toV4(Self.A6("fd00:cafe::31")) == nil, "no explicit mapping, no IPv4 name")
        // B's LAN is 10.2.0.0/24 here (different from A's): the embedded LAN address moves into B's virtual4.
        #expect(t.toV4(Self.A6("64:ff9b:2222::10.2.0.20")) == Self.A4("240.2.2.20"))
        #expect(t.toV4(Self.A6("64:ff9b:2222::10.9.9.9")) == nil, "embedded address outside B's LAN")
        #expect(t.toV6(Self.A4("240.1.1.30")) == Self.A6("fd00:cafe::30"))
        #expect(t.toV6(Self.A4("240.1.1.20")) == nil)
        #expect(t.toV6(Self.A4("240.2.2.20")) == Self.A6("64:ff9b:2222::10.2.0.20"))
        #expect(t.toV6(Self.A4("240.9.9.9")) == nil)
        // The same through SIIT.AddressMap (what the packet path calls).
        #expect(t.map.toV4(Self.A6("fd00:cafe::30")) == Self.A4("240.1.1.30") && t.map.toV6(Self.A4("240.2.2.20")) == Self.A6("64:ff9b:2222::10.2.0.20"))
    }

    @Test("relayctl map: a host's names in both families, from a LAN address, a virtual one or an IPv6 host; clear errors otherwise")
    func names() throws {
        let a = try #require(Self.siteA.site)
        let n1 = try HostNames.of(.v4(Self.A4("192.168.1.20")), in: a)
        #expect(n1.lan4 == Self.A4("192.168.1.20") && n1.virtual4 == Self.A4("240.1.1.20") && n1.virtual6 == Self.A6("64:ff9b:1111::192.168.1.20") && n1.lan6 == nil)
        let n2 = try HostNames.of(.v6(Self.A6("fd00:cafe::30")), in: a)
        #expect(n2.lan4 == Self.A4("192.168.1.30") && n2.virtual4 == Self.A4("240.1.1.30") && n2.virtual6Lan == Self.A6("fd11:1111::30"))
        let n3 = try HostNames.of(.v4(Self.A4("240.1.1.30")), in: a)
        #expect(n3.lan6 == Self.A6("fd00:cafe::30") && n3.virtual6 == Self.A6("64:ff9b:1111::192.168.1.30"))
        let n4 = try HostNames.of(.v6(Self.A6("fd00:cafe::31")), in: a)
        #expect(n4.lan4 == nil && n4.virtual6Lan == Self.A6("fd11:1111::31") && n4.notes.contains { $0.contains("site.map") })
        let b = Self.siteA.peers[0].sites[0]
        let n5 = try HostNames.of(.v6(Self.A6("64:ff9b:2222::10.2.0.7")), in: b)
        #expect(n5.virtual4 == Self.A4("240.2.2.7"))
        #expect(throws: HostNamesError.self) { try HostNames.of(.v4(Self.A4("8.8.8.8")), in: a) }
        do { _ = try HostNames.of(.v6(Self.A6("64:ff9b:2222::10.9.9.9")), in: b); Issue.record("no error") } catch { #expect("\(error)".contains("outside site B's LAN")) }
    }

    @Test("fuzz: mutated packets through the site's address map never trap, and whatever comes out has the other family and a length within the buffer")
    func fuzz() {
        let t = SiteTranslator(Self.siteA)
        var rng = SystemRandomNumberGenerator()
        func v6(_ src: IPv6Address, _ dst: IPv6Address, nh: UInt8, payload: [UInt8]) -> [UInt8] {
            var h: [UInt8] = [0x60, 0, 0, 0, UInt8(payload.count >> 8), UInt8(payload.count & 0xff), nh, 64]
            for a in [src, dst] { for v in [a.high, a.low] { for i in (0..<8).reversed() { h.append(UInt8(truncatingIfNeeded: v >> (UInt64(i) * 8))) } } }
            return h + payload
        }
        let inner = v6(Self.A6("64:ff9b:2222::10.2.0.20"), Self.A6("fd00:cafe::30"), nh: 17, payload: [0, 1, 0, 2, 0, 9, 0, 0, 7])
        let seeds = [v6(Self.A6("fd00:cafe::30"), Self.A6("64:ff9b:2222::10.2.0.20"), nh: 17, payload: [0, 1, 0, 2, 0, 12, 0, 0, 1, 2, 3, 4]),
                     v6(Self.A6("fd00:cafe::30"), Self.A6("64:ff9b:2222::10.2.0.20"), nh: 58, payload: [1, 4, 0, 0, 0, 0, 0, 0] + inner),
                     v6(Self.A6("fd00:cafe::30"), Self.A6("64:ff9b:2222::10.2.0.20"), nh: 44, payload: [17, 0, 0, 1, 0, 0, 0, 9, 0, 1, 0, 2])]
        var out = [UInt8](repeating: 0, count: 4096), back = [UInt8](repeating: 0, count: 4096)
        var translated = 0
        for i in 0..<30_000 {
            var b = seeds[i % seeds.count]
            if i > 2 { for _ in 0..<Int.random(in: 1...5, using: &rng) { b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) } }
            if i % 7 == 0 { b = Array(b.prefix(Int.random(in: 0...b.count, using: &rng))) }
            let r = b.withUnsafeBytes { p in out.withUnsafeMutableBytes { SIIT.toIPv4(p, into: $0, map: t.map, decrement: false) } }
            if case .translated(let n) = r {
                translated += 1
                #expect(n >= 20 && n <= out.count && out[0] >> 4 == 4)
                _ = out[0..<n].withUnsafeBytes { p in back.withUnsafeMutableBytes { SIIT.toIPv6(p, into: $0, map: t.map, decrement: false) } }
            }
            _ = b.withUnsafeBytes { p in back.withUnsafeMutableBytes { SIIT.toIPv6(p, into: $0, map: t.map) } }
        }
        #expect(translated > 3, "the unmutated seeds translate")
    }

    @Test("inboundNames lists exactly the IPv4 destinations translatesInbound accepts")
    func inboundNamesMatchTheDecision() {
        let t = SiteTranslator(Self.siteA)
        let names = Set(t.inboundNames)
        #expect(names == [Self.A4("240.1.1.30")])
        for host in 0...255 {
            let a = IPv4Address(UInt32(240) << 24 | UInt32(1) << 16 | UInt32(1) << 8 | UInt32(host))
            #expect(names.contains(a) == t.translatesInbound(a), "\(a)")
        }
        #expect(!names.contains(Self.A4("240.2.2.30")) && !t.translatesInbound(Self.A4("240.2.2.30")))
    }
}

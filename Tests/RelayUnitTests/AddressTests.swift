import Testing
@testable import RelayCore

@Suite("addresses and prefixes")
struct AddressTests {
    @Test("IPv4 parses dotted quads and refuses everything else",
          arguments: ["1.2.3.4", "0.0.0.0", "255.255.255.255", "240.2.2.20"])
    func ipv4Valid(_ s: String) throws {
        let a = try #require(IPv4Address(s))
        #expect(a.description == s)
    }

    @Test("IPv4 rejects", arguments: ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1..2.3", "a.b.c.d", "1.2.3.4 ", "1.2.3.-4"])
    func ipv4Invalid(_ s: String) { #expect(IPv4Address(s) == nil) }

    @Test("IPv6 parses RFC 4291 forms and prints RFC 5952", arguments: [
        ("::", "::"), ("::1", "::1"), ("64:ff9b::192.168.1.20", "64:ff9b::c0a8:114"),
        ("2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("2001:db8:0:0:0:0:2:1", "2001:db8::2:1"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"), ("fe80::", "fe80::"),
        ("64:ff9b:1111::", "64:ff9b:1111::"), ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
    ])
    func ipv6Valid(_ input: String, _ canonical: String) throws {
        let a = try #require(IPv6Address(input))
        #expect(a.description == canonical)
        #expect(IPv6Address(canonical) == a)
        #expect(IPv6Address(bytes: a.bytes) == a)
    }

    @Test("IPv6 rejects", arguments: [":", ":::", "1::2::3", "1:2:3:4:5:6:7:8:9", "12345::", "g::", "1:2:3:4:5:6:7", ":1::", "1:", "::1.2.3", "1.2.3.4::"])
    func ipv6Invalid(_ s: String) { #expect(IPv6Address(s) == nil) }

    @Test("prefixes refuse host bits and name the canonical form")
    func prefixHostBits() {
        #expect(throws: PrefixError.hostBitsSet("192.168.1.1/24", canonical: "192.168.1.0/24")) {
            try IPPrefix(parsing: "192.168.1.1/24")
        }
        #expect(throws: PrefixError.lengthOutOfRange("10.0.0.0/33", max: 32)) { try IPPrefix(parsing: "10.0.0.0/33") }
        #expect(throws: PrefixError.notAPrefix("10.0.0.0")) { try IPPrefix(parsing: "10.0.0.0") }
        #expect(throws: PrefixError.notAPrefix("10.0.0.0/+8")) { try IPPrefix(parsing: "10.0.0.0/+8") }
        #expect(IPPrefix("64:ff9b:1111::/96")?.description == "64:ff9b:1111::/96")
    }

    @Test("overlap, containment, NETMAP host mapping, interval ends")
    func prefixOps() throws {
        let lan = try IPPrefix(parsing: "192.168.1.0/24"), virt = try IPPrefix(parsing: "240.2.2.0/24")
        #expect(lan.contains(IPAddress("192.168.1.77")!))
        #expect(!lan.contains(IPAddress("192.168.2.1")!))
        #expect(lan.overlaps(try IPPrefix(parsing: "192.168.0.0/16")))
        #expect(!lan.overlaps(virt))
        #expect(lan.map(IPAddress("192.168.1.20")!, into: virt) == IPAddress("240.2.2.20"))
        #expect(lan.endExclusive == IPAddress("192.168.2.0"))
        #expect(try IPPrefix(parsing: "0.0.0.0/0").endExclusive == nil)
        let v6 = try IPPrefix(parsing: "64:ff9b:1111::/96")
        #expect(v6.endExclusive == IPAddress("64:ff9b:1111:0:0:1::"))
        #expect(v6.map(IPAddress("64:ff9b:1111::c0a8:114")!, into: try IPPrefix(parsing: "fd00:2::/96")) == IPAddress("fd00:2::c0a8:114"))
    }
}

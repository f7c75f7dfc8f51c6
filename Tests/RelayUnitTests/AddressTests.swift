import Foundation
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

@Suite("NAT state wire form")
struct NATWireTests {
    @Test("round trip through JSON, both families, all lists")
    func roundTrip() throws {
        let s = NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24")), PrefixMapping(P("fd00:a::/64"), P("fd00:1::/64"))],
                         snat: [PrefixMapping(P("0.0.0.0/0"), P("0.0.0.0/0"))],
                         dnatExact: [AddressMapping(IPAddress("240.1.2.7")!, IPAddress("192.168.1.7")!)],
                         snatExact: [AddressMapping(IPAddress("fd00::1")!, IPAddress("fd00::2")!)],
                         remote: [P("240.2.2.0/24"), P("::/0")])
        let data = try JSONEncoder().encode(s)
        #expect(String(decoding: data, as: UTF8.self).contains("\"dnat\":\"240.1.1.0\\/24=192.168.1.0\\/24,fd00:a::\\/64=fd00:1::\\/64\""))
        #expect(try JSONDecoder().decode(NATState.self, from: data) == s)
        #expect(try JSONDecoder().decode(NATState.self, from: Data("{}".utf8)) == NATState())
    }

    @Test("bad entries are refused with the list, the entry number and the reason", arguments: [
        (#"{"dnat":"240.1.1.0/24"}"#, "entry 0"),
        (#"{"snat":"192.168.1.0/24=240.1.1.0/24,10.0.0.1/8=240.0.0.0/8"}"#, "did you mean 10.0.0.0/8"),
        (#"{"remote":"240.2.2.0/24,,"}"#, "entry 1"),
        (#"{"remote":"240.2.2.0/33"}"#, "0...32"),
        (#"{"remote":"240.02.2.0/24"}"#, "is not a prefix"),
        (#"{"dnatExact":"1.2.3.4=fe80::zz"}"#, "not an IP address"),
    ])
    func refusals(json: String, fragment: String) {
        do {
            _ = try JSONDecoder().decode(NATState.self, from: Data(json.utf8))
            Issue.record("accepted \(json)")
        } catch {
            #expect("\(error)".contains(fragment), "\(error)")
        }
    }

    @Test("the fast IPv4 parser agrees with the text parser on random and tricky input")
    func fastParserAgrees() {
        var rng = SystemRandomNumberGenerator()
        let tricky = ["0.0.0.0", "255.255.255.255", "256.1.1.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1..2.3", "", ".1.2.3", "1.2.3.4.", "1.2.3.-4", "1.2.3.4/24", "1000.1.1.1", "0.00.0.0"]
        for t in tricky {
            #expect(IPv4Address.parse(t.utf8[...]) == IPv4Address(t).map { $0 }, "\(t)")
        }
        for _ in 0..<2000 {
            let v = UInt32.random(in: 0...UInt32.max, using: &rng)
            let a = IPv4Address(v)
            #expect(IPv4Address.parse(a.description.utf8[...]) == a)
            let len = Int.random(in: 0...32, using: &rng)
            let p = IPPrefix(network: .v4(a), length: len)
            var s = ""; p.write(to: &s)
            #expect(s == p.description)
            #expect((try? IPPrefix(utf8: s.utf8[...])) == p)
        }
    }
}

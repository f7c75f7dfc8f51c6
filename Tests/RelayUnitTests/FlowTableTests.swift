import Testing
import RelayCore

@Suite("session bookkeeping (flow table)")
struct FlowTableTests {
    static func udp(_ src: String, _ dst: String, sport: UInt16, dport: UInt16, proto: UInt8 = 17) -> [UInt8] {
        [0x45, 0, 0, 28, 0, 0, 0, 0, 64, proto, 0, 0] + IPv4Address(src)!.bytes + IPv4Address(dst)!.bytes
            + [UInt8(sport >> 8), UInt8(sport & 0xff), UInt8(dport >> 8), UInt8(dport & 0xff), 0, 8, 0, 0]
    }

    @Test("both directions count into one flow; idle flows expire by their protocol's timeout")
    func countsAndExpiry() {
        var limits = FlowLimits(); limits.udp = 60; limits.tcp = 600
        let t = FlowTable(limits: limits)
        t.record(Self.udp("240.1.1.20", "240.2.2.20", sport: 5000, dport: 53)[...], outbound: true, peer: "b", now: 100)
        t.record(Self.udp("240.2.2.20", "240.1.1.20", sport: 53, dport: 5000)[...], outbound: false, peer: "b", now: 101)
        t.record(Self.udp("240.1.1.20", "240.2.2.20", sport: 6000, dport: 80, proto: 6)[...], outbound: true, peer: "b", now: 100)
        var (flows, stats) = t.snapshot()
        #expect(stats.active == 2)
        let u = flows.first { $0.proto == "udp" }
        #expect(u?.packetsOut == 1 && u?.packetsIn == 1 && u?.localVirtual == "240.1.1.20" && u?.remotePort == 53)
        t.expire(now: 150)
        #expect(t.snapshot().1.active == 2)
        t.expire(now: 162)
        (flows, stats) = t.snapshot()
        #expect(stats.active == 1 && stats.expired == 1 && flows.first?.proto == "tcp")
        // Activity pushes the deadline out.
        t.record(Self.udp("240.1.1.20", "240.2.2.20", sport: 6000, dport: 80, proto: 6)[...], outbound: true, peer: "b", now: 650)
        t.expire(now: 705)
        #expect(t.snapshot().1.active == 1)
        t.expire(now: 1251)
        #expect(t.snapshot().1.active == 0)
    }

    @Test("a flood cannot grow the table past its cap; evictions are counted")
    func cap() {
        var limits = FlowLimits(); limits.maxFlows = 1000
        let t = FlowTable(limits: limits)
        for i in 0..<5000 {
            t.record(Self.udp("240.1.1.20", "240.2.2.20", sport: UInt16(1000 + i), dport: 53)[...], outbound: true, peer: "b", now: 100 + Double(i) / 1000)
        }
        let s = t.snapshot().1
        #expect(s.active == 1000 && s.evicted == 4000 && s.created == 5000)
        // Garbage never counts.
        t.record([0x45, 0, 0][...], outbound: true, peer: "b", now: 200)
        t.record([][...], outbound: true, peer: "b", now: 200)
        #expect(t.snapshot().1.created == 5000)
    }
}

import RelayDaemonKit

@Suite("ICMP packet-too-big answers")
struct PacketTooBigTests {
    static func tcp(df: Bool) -> [UInt8] {
        var p: [UInt8] = [0x45, 0, 0x05, 0xdc, 0, 1, df ? 0x40 : 0, 0, 64, 6, 0, 0] + IPv4Address("240.1.1.20")!.bytes + IPv4Address("240.2.2.20")!.bytes
        p += [UInt8](repeating: 0xab, count: 1500 - 20)
        return p
    }

    @Test("IPv4: from the original destination to its source, type 3 code 4 with the MTU, valid checksums, the original quoted")
    func ipv4() throws {
        let icmp = try #require(IPHeader.packetTooBig(Self.tcp(df: true)[...], mtu: 1340))
        #expect(Array(icmp[12..<16]) == IPv4Address("240.2.2.20")!.bytes && Array(icmp[16..<20]) == IPv4Address("240.1.1.20")!.bytes)
        #expect(icmp[9] == 1 && icmp[20] == 3 && icmp[21] == 4 && Int(icmp[26]) << 8 | Int(icmp[27]) == 1340)
        #expect(IPHeader.checksum(icmp[0..<20]) == 0, "IP header checksum")
        #expect(IPHeader.checksum(icmp[20...]) == 0, "ICMP checksum")
        #expect(Array(icmp[28..<48]) == Array(Self.tcp(df: true)[0..<20]))
        #expect(icmp.count <= 548)
    }

    @Test("no answer without DF, to ICMP errors, or to garbage")
    func refusals() {
        #expect(IPHeader.packetTooBig(Self.tcp(df: false)[...], mtu: 1340) == nil)
        var err = Self.tcp(df: true); err[9] = 1; err[20] = 3
        #expect(IPHeader.packetTooBig(err[...], mtu: 1340) == nil)
        #expect(IPHeader.packetTooBig([0x45, 0, 0][...], mtu: 1340) == nil)
    }

    @Test("IPv6: packet too big with a valid checksum over the pseudo-header")
    func ipv6() throws {
        var p: [UInt8] = [0x60, 0, 0, 0, 0x05, 0x00, 17, 64] + IPv6Address("64:ff9b:1111::1")!.bytes + IPv6Address("64:ff9b:2222::1")!.bytes
        p += [UInt8](repeating: 1, count: 1280)
        let icmp = try #require(IPHeader.packetTooBig(p[...], mtu: 1280))
        #expect(icmp[6] == 58 && icmp[40] == 2 && icmp.count <= 1280)
        let len = icmp.count - 40
        let pseudo = Array(icmp[8..<40]) + [0, 0, UInt8(len >> 8), UInt8(len & 0xff), 0, 0, 0, 58]
        #expect(IPHeader.checksum((pseudo + icmp[40...])[...]) == 0)
    }
}

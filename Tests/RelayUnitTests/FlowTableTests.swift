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

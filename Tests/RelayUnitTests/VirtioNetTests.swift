import Foundation
import Testing
import RelayCore

/// TUN offloads: the virtio header, checksums, TSO segmentation and TCP coalescing, checked
/// against an independent reading of each packet (RFC 1071 checksums recomputed byte by byte,
/// payloads and sequence numbers reassembled).
@Suite("TUN offloads (virtio_net_hdr, TSO, coalescing)")
struct VirtioNetTests {
    /// A TCP packet (IPv4 or IPv6) with `payload`, timestamps option, ACK|PSH, valid checksums.
    static func tcp(v6: Bool, seq: UInt32, payload: [UInt8], flags: UInt8 = 0x18, srcPort: UInt16 = 40000, id: UInt16 = 7) -> [UInt8] {
        let opts: [UInt8] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]  // NOP NOP TS
        let tcpLen = 20 + opts.count
        var t: [UInt8] = [UInt8(srcPort >> 8), UInt8(srcPort & 0xff), 0x14, 0x51]
        t += [UInt8(seq >> 24), UInt8(seq >> 16 & 0xff), UInt8(seq >> 8 & 0xff), UInt8(seq & 0xff), 0, 0, 0x30, 0x39]
        t += [UInt8(tcpLen / 4) << 4, flags, 0x01, 0xf5, 0, 0, 0, 0] + opts + payload
        var ip: [UInt8]
        if v6 {
            ip = [0x60, 0, 0, 0, UInt8(t.count >> 8), UInt8(t.count & 0xff), 6, 64]
            ip += [0xfd, 0, 0xca, 0xfe] + [UInt8](repeating: 0, count: 11) + [0x30]
            ip += [0x64, 0, 0xff, 0x9b, 0x22, 0x22] + [UInt8](repeating: 0, count: 6) + [192, 168, 1, 20]
        } else {
            let total = 20 + t.count
            ip = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), UInt8(id >> 8), UInt8(id & 0xff), 0x40, 0, 64, 6, 0, 0, 240, 1, 1, 20, 240, 2, 2, 20]
            let c = internetChecksum(ip[...]); ip[10] = UInt8(c >> 8); ip[11] = UInt8(c & 0xff)
        }
        var p = ip + t
        let l4 = ip.count
        let c = tcpChecksum(p, l4: l4)
        p[l4 + 16] = UInt8(c >> 8); p[l4 + 17] = UInt8(c & 0xff)
        return p
    }

    /// TCP checksum computed the slow way (pseudo-header bytes + segment, RFC 1071).
    static func tcpChecksum(_ p: [UInt8], l4: Int) -> UInt16 {
        var seg = Array(p[l4...]); seg[16] = 0; seg[17] = 0
        let len = seg.count
        let addrs = p[0] >> 4 == 4 ? Array(p[12..<20]) : Array(p[8..<40])
        let pseudo = addrs + [0, 6, UInt8(len >> 8), UInt8(len & 0xff)]
        return internetChecksum((pseudo + seg)[...])
    }

    static func load32(_ p: [UInt8], _ at: Int) -> UInt32 { UInt32(p[at]) << 24 | UInt32(p[at + 1]) << 16 | UInt32(p[at + 2]) << 8 | UInt32(p[at + 3]) }

    /// Segments a TSO packet through TSOPlan into arrays.
    static func segments(_ p: [UInt8], _ h: VirtioNetHeader) throws -> [[UInt8]] {
        let plan = try p.withUnsafeBytes { try TSOPlan($0, h) }
        var out: [[UInt8]] = []
        var scratch = [UInt8](repeating: 0, count: 70000)
        for i in 0..<plan.count {
            let n = p.withUnsafeBytes { src in scratch.withUnsafeMutableBytes { plan.build(i, from: src, into: $0) } }
            out.append(Array(scratch[0..<n]))
        }
        return out
    }

    /// Pushes packets through a coalescer; returns what it wrote (virtio header + packet each).
    static func coalesce(_ pkts: [[UInt8]]) -> [[UInt8]] {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Coalescer.capacity, alignment: 16)
        defer { buf.deallocate() }
        var c = Coalescer(buffer: buf)
        var out: [[UInt8]] = []
        for p in pkts { p.withUnsafeBytes { c.push($0) { out.append(Array($0)) } } }
        c.flush { out.append(Array($0)) }
        return out
    }

    @Test func headerRoundTrip() {
        let h = VirtioNetHeader(flags: 1, gsoType: 4, hdrLen: 72, gsoSize: 1368, csumStart: 40, csumOffset: 16)
        var b = [UInt8](repeating: 0xee, count: 10)
        b.withUnsafeMutableBytes { h.write(to: $0) }
        #expect(b == [1, 4, 72, 0, 0x58, 0x05, 40, 0, 16, 0])
        #expect(b.withUnsafeBytes { VirtioNetHeader($0) } == h)
        #expect(h.isGSO)
        #expect(!VirtioNetHeader(gsoType: VirtioNetHeader.VIRTIO_NET_HDR_GSO_ECN).isGSO)
    }

    @Test func checksumMatchesRFC1071() {
        var rng = SystemRandomNumberGenerator()
        for len in Array(0...200) + [255, 256, 257, 1407, 1408, 1499, 1500, 65535] {
            let d = (0..<len).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let fast = d.withUnsafeBytes { ~UInt16(Checksum.sum($0)) }
            #expect(fast == internetChecksum(d[...]), "length \(len)")
            // Copy and sum in one pass: the same sum, the same bytes, nothing written past the end.
            var out = [UInt8](repeating: 0xa5, count: len + 64)
            let copied = d.withUnsafeBytes { src in out.withUnsafeMutableBytes { dst in
                ~UInt16(Checksum.copySum(from: src.baseAddress ?? UnsafeRawPointer(dst.baseAddress!), to: dst.baseAddress! + 1, count: len)) } }
            let same = Array(out[1..<(len + 1)]) == d && out[0] == 0xa5 && out[(len + 1)...].allSatisfy { $0 == 0xa5 }
            #expect(copied == fast && same, "copySum, length \(len)")
        }
        // All ones everywhere: the sum folds without losing carries.
        let ones = [UInt8](repeating: 0xff, count: 4096)
        #expect(ones.withUnsafeBytes { Checksum.sum($0) } == 0xffff)
    }

    @Test(arguments: [false, true])
    func tsoSegmentsLikeTheKernel(v6: Bool) throws {
        let payload = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let seq0: UInt32 = 0xffff_f000  // wraps
        var big = Self.tcp(v6: v6, seq: seq0, payload: payload, flags: 0x19 | 0x80)  // FIN PSH ACK CWR
        let l4 = v6 ? 40 : 20, hdr = l4 + 32
        big[l4 + 16] = 0; big[l4 + 17] = 0  // as the kernel hands it over: partial
        let h = VirtioNetHeader(flags: 1, gsoType: v6 ? 4 : 1, hdrLen: UInt16(hdr), gsoSize: 1368, csumStart: UInt16(l4), csumOffset: 16)
        let segs = try Self.segments(big, h)
        #expect(segs.count == (10_000 + 1367) / 1368)
        var joined: [UInt8] = []
        for (i, s) in segs.enumerated() {
            let len = min(1368, 10_000 - i * 1368)
            #expect(s.count == hdr + len)
            if v6 { #expect(Int(s[4]) << 8 | Int(s[5]) == s.count - 40) }
            else {
                #expect(Int(s[2]) << 8 | Int(s[3]) == s.count)
                #expect(Int(s[4]) << 8 | Int(s[5]) == 7 + i)
                #expect(internetChecksum(s[0..<20]) == 0)
            }
            #expect(Self.load32(s, l4 + 4) == seq0 &+ UInt32(i * 1368))
            let flags = s[l4 + 13]
            #expect(flags & 0x10 != 0)
            #expect((flags & 0x09 != 0) == (i == segs.count - 1), "FIN/PSH only on the last")
            #expect((flags & 0x80 != 0) == (i == 0), "CWR only on the first")
            #expect(UInt16(s[l4 + 16]) << 8 | UInt16(s[l4 + 17]) == Self.tcpChecksum(s, l4: l4))
            #expect(Array(s[l4 + 20..<hdr]) == Array(big[l4 + 20..<hdr]), "options copied")
            joined += s[hdr...]
        }
        #expect(joined == payload)
    }

    @Test func tsoRefusesWhatItCannotSplit() {
        let p = Self.tcp(v6: false, seq: 1, payload: [UInt8](repeating: 1, count: 3000))
        #expect(throws: TunOffload.Failure.unsupported) { try p.withUnsafeBytes { try TSOPlan($0, VirtioNetHeader(gsoType: 5, gsoSize: 1000, csumStart: 20)) } }
        #expect(throws: TunOffload.Failure.malformed) { try p.withUnsafeBytes { try TSOPlan($0, VirtioNetHeader(gsoType: 4, gsoSize: 1000, csumStart: 20)) } }  // v4 as TCPv6
        #expect(throws: TunOffload.Failure.malformed) { try p.withUnsafeBytes { try TSOPlan($0, VirtioNetHeader(gsoType: 1, gsoSize: 0, csumStart: 20)) } }
        #expect(throws: TunOffload.Failure.malformed) { try p.withUnsafeBytes { try TSOPlan($0, VirtioNetHeader(gsoType: 1, gsoSize: 1000, csumStart: 24)) } }
        #expect(throws: TunOffload.Failure.malformed) { try p[0..<30].withUnsafeBytes { try TSOPlan($0, VirtioNetHeader(gsoType: 1, gsoSize: 1000, csumStart: 20)) } }
    }

    @Test func fuzzedTSOInputNeverCrashes() {
        var rng = SystemRandomNumberGenerator()
        let base = Self.tcp(v6: false, seq: 1, payload: [UInt8](repeating: 9, count: 4000))
        var scratch = [UInt8](repeating: 0, count: 70000)
        for _ in 0..<3000 {
            var p = Array(base.prefix(Int.random(in: 0...base.count, using: &rng)))
            for _ in 0..<Int.random(in: 0...6, using: &rng) where !p.isEmpty { p[Int.random(in: 0..<p.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            let h = VirtioNetHeader(flags: 1, gsoType: [1, 4, 0x81, 3][Int.random(in: 0..<4, using: &rng)], hdrLen: 0,
                                    gsoSize: UInt16.random(in: 0...2000, using: &rng), csumStart: UInt16.random(in: 0...80, using: &rng), csumOffset: 16)
            guard let plan = try? p.withUnsafeBytes({ try TSOPlan($0, h) }) else { continue }
            for i in 0..<plan.count { _ = p.withUnsafeBytes { src in scratch.withUnsafeMutableBytes { plan.build(i, from: src, into: $0) } } }
        }
    }

    @Test(arguments: [false, true])
    func coalescingUndoesSegmentation(v6: Bool) throws {
        let payload = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let l4 = v6 ? 40 : 20, hdr = l4 + 32
        let big = Self.tcp(v6: v6, seq: 1000, payload: payload, flags: 0x18)
        let h = VirtioNetHeader(flags: 1, gsoType: v6 ? 4 : 1, hdrLen: UInt16(hdr), gsoSize: 1368, csumStart: UInt16(l4), csumOffset: 16)
        let segs = try Self.segments(big, h)
        let out = Self.coalesce(segs)
        #expect(out.count == 1)
        let w = out[0]
        let vh = w.withUnsafeBytes { VirtioNetHeader($0) }
        #expect(vh == VirtioNetHeader(flags: 1, gsoType: v6 ? 4 : 1, hdrLen: UInt16(hdr), gsoSize: 1368, csumStart: UInt16(l4), csumOffset: 16))
        let p = Array(w[10...])
        #expect(Array(p[hdr...]) == payload)
        #expect(p[l4 + 13] == 0x18, "PSH of the last segment kept")
        if v6 { #expect(Int(p[4]) << 8 | Int(p[5]) == p.count - 40) } else { #expect(Int(p[2]) << 8 | Int(p[3]) == p.count); #expect(internetChecksum(p[0..<20]) == 0) }
        // The kernel would segment it back into the same packets (CHECKSUM_PARTIAL: pseudo-header sum in the field).
        let again = try Self.segments(p, vh)
        #expect(again.count == segs.count)
        for (a, b) in zip(again, segs) {
            #expect(Array(a[hdr...]) == Array(b[hdr...]))
            #expect(Self.load32(a, l4 + 4) == Self.load32(b, l4 + 4))
            #expect(UInt16(a[l4 + 16]) << 8 | UInt16(a[l4 + 17]) == Self.tcpChecksum(a, l4: l4))
        }
    }

    @Test func coalescingKeepsFlowsAndOrderApart() throws {
        let a1 = Self.tcp(v6: false, seq: 1, payload: [UInt8](repeating: 1, count: 1000), flags: 0x10)
        let a2 = Self.tcp(v6: false, seq: 1001, payload: [UInt8](repeating: 2, count: 1000), flags: 0x10)
        let gap = Self.tcp(v6: false, seq: 5001, payload: [UInt8](repeating: 3, count: 1000), flags: 0x10)
        let other = Self.tcp(v6: false, seq: 2001, payload: [UInt8](repeating: 4, count: 1000), flags: 0x10, srcPort: 40001)
        let bigger = Self.tcp(v6: false, seq: 2001, payload: [UInt8](repeating: 5, count: 1200), flags: 0x10)
        let syn = Self.tcp(v6: false, seq: 9, payload: [], flags: 0x02)
        var udp: [UInt8] = [0x45, 0, 0, 29, 0, 0, 0x40, 0, 64, 17, 0, 0, 240, 1, 1, 20, 240, 2, 2, 20, 0, 53, 0, 53, 0, 9, 0, 0, 0x61]
        let c = internetChecksum(udp[0..<20]); udp[10] = UInt8(c >> 8); udp[11] = UInt8(c & 0xff)

        let out = Self.coalesce([syn, a1, a2, gap, other, bigger, udp])
        // syn alone; a1+a2 merged; gap (sequence jump) alone; other flow alone; bigger than the segment size alone; udp alone.
        #expect(out.map { $0.count - 10 } == [syn.count, a1.count + 1000, gap.count, other.count, bigger.count, udp.count])
        for w in out.enumerated() where w.offset != 1 {
            #expect(w.element.withUnsafeBytes { VirtioNetHeader($0) } == VirtioNetHeader(), "a packet alone goes with an empty header")
        }
        #expect(Array(out[0][10...]) == syn)
        #expect(Array(out[5][10...]) == udp)
        #expect(out[1].withUnsafeBytes { VirtioNetHeader($0) }.gsoSize == 1000)
    }

    @Test func partialChecksumCompleted() throws {
        // UDP with the pseudo-header sum in its checksum field, as the kernel hands it over.
        var p: [UInt8] = [0x45, 0, 0, 33, 0, 0, 0x40, 0, 64, 17, 0, 0, 240, 1, 1, 20, 240, 2, 2, 20, 0x30, 0x39, 0, 53, 0, 13, 0, 0, 1, 2, 3, 4, 5]
        let pseudo = p.withUnsafeBytes { Checksum.pseudoHeader($0, proto: 17, length: 13) }
        p[26] = UInt8(pseudo >> 8); p[27] = UInt8(pseudo & 0xff)
        try p.withUnsafeMutableBytes { try TunOffload.completeChecksum(UnsafeMutableRawBufferPointer(rebasing: $0[0...]), VirtioNetHeader(flags: 1, csumStart: 20, csumOffset: 6)) }
        let sum = internetChecksum(([240, 1, 1, 20, 240, 2, 2, 20, 0, 17, 0, 13] + p[20...])[...])
        #expect(sum == 0, "the completed UDP checksum verifies")
        #expect(throws: TunOffload.Failure.malformed) {
            try p.withUnsafeMutableBytes { try TunOffload.completeChecksum($0, VirtioNetHeader(flags: 1, csumStart: 40, csumOffset: 6)) }
        }
    }

    /// A UDP datagram (IPv4 or IPv6) with `payload` and valid checksums.
    static func udp(v6: Bool, payload: [UInt8], id: UInt16 = 0x1234, srcPort: UInt16 = 40000, tos: UInt8 = 0) -> [UInt8] {
        let ulen = 8 + payload.count
        var u: [UInt8] = [UInt8(srcPort >> 8), UInt8(srcPort & 0xff), 0x27, 0x0f, UInt8(ulen >> 8), UInt8(ulen & 0xff), 0, 0] + payload
        var ip: [UInt8]
        if v6 {
            ip = [0x60, tos, 0, 0, UInt8(ulen >> 8), UInt8(ulen & 0xff), 17, 64]
            ip += [0xfd, 0, 0xca, 0xfe] + [UInt8](repeating: 0, count: 11) + [0x30]
            ip += [0x64, 0, 0xff, 0x9b, 0x22, 0x22] + [UInt8](repeating: 0, count: 6) + [192, 168, 1, 20]
        } else {
            let total = 20 + ulen
            ip = [0x45, tos, UInt8(total >> 8), UInt8(total & 0xff), UInt8(id >> 8), UInt8(id & 0xff), 0x40, 0, 64, 17, 0, 0, 240, 1, 1, 20, 240, 2, 2, 20]
            let c = internetChecksum(ip[...]); ip[10] = UInt8(c >> 8); ip[11] = UInt8(c & 0xff)
        }
        let addrs = v6 ? Array(ip[8..<40]) : Array(ip[12..<20])
        var c = internetChecksum((addrs + [0, 17, UInt8(ulen >> 8), UInt8(ulen & 0xff)] + u)[...])
        if c == 0 { c = 0xffff }
        u[6] = UInt8(c >> 8); u[7] = UInt8(c & 0xff)
        return ip + u
    }

    /// What the kernel does with a UDP GSO packet (__udp_gso_segment, inet_gso_segment): the
    /// headers copied onto each `gsoSize` slice of the payload, lengths set, IPv4 identifications
    /// counting up from the first, checksums computed in full. An independent model, byte by byte.
    static func udpSplit(_ w: [UInt8]) -> [[UInt8]] {
        let vh = w.withUnsafeBytes { VirtioNetHeader($0) }
        let p = Array(w[10...])
        let v6 = p[0] >> 4 == 6, l4 = v6 ? 40 : 20, size = Int(vh.gsoSize)
        let payload = Array(p[(l4 + 8)...])
        var out: [[UInt8]] = []
        var off = 0, k = 0
        while off < payload.count {
            let chunk = Array(payload[off..<min(off + size, payload.count)])
            var ip = Array(p[0..<l4])
            let ulen = 8 + chunk.count
            if v6 { ip[4] = UInt8(ulen >> 8); ip[5] = UInt8(ulen & 0xff) } else {
                let total = 20 + ulen, id = (Int(p[4]) << 8 | Int(p[5])) + k
                ip[2] = UInt8(total >> 8); ip[3] = UInt8(total & 0xff); ip[4] = UInt8(id >> 8 & 0xff); ip[5] = UInt8(id & 0xff)
                ip[10] = 0; ip[11] = 0
                let c = internetChecksum(ip[...]); ip[10] = UInt8(c >> 8); ip[11] = UInt8(c & 0xff)
            }
            var u = Array(p[l4..<(l4 + 4)]) + [UInt8(ulen >> 8), UInt8(ulen & 0xff), 0, 0] + chunk
            let addrs = v6 ? Array(ip[8..<40]) : Array(ip[12..<20])
            var c = internetChecksum((addrs + [0, 17, UInt8(ulen >> 8), UInt8(ulen & 0xff)] + u)[...])
            if c == 0 { c = 0xffff }
            u[6] = UInt8(c >> 8); u[7] = UInt8(c & 0xff)
            out.append(ip + u)
            off += size; k += 1
        }
        return out
    }

    @Test(arguments: [false, true])
    func udpCoalescingIsUndoneByTheKernelsSplit(v6: Bool) {
        // 20 datagrams of 1200 bytes and a last one of 500, consecutive identifications (wrapping).
        let id0: UInt16 = 0xfff5
        let dgrams = (0..<21).map { i in
            Self.udp(v6: v6, payload: (0..<(i == 20 ? 500 : 1200)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) }, id: id0 &+ UInt16(i))
        }
        let out = Self.coalesce(dgrams)
        #expect(out.count == 1)
        let l4 = v6 ? 40 : 20
        let vh = out[0].withUnsafeBytes { VirtioNetHeader($0) }
        #expect(vh == VirtioNetHeader(flags: 1, gsoType: VirtioNetHeader.VIRTIO_NET_HDR_GSO_UDP_L4, hdrLen: UInt16(l4 + 8), gsoSize: 1200,
                                      csumStart: UInt16(l4), csumOffset: 6))
        let p = Array(out[0][10...])
        #expect(p.count == l4 + 8 + 20 * 1200 + 500)
        #expect(Int(p[l4 + 4]) << 8 | Int(p[l4 + 5]) == p.count - l4, "UDP length of the whole")
        if !v6 { #expect(internetChecksum(p[0..<20]) == 0) }
        // The kernel's split gives back exactly the datagrams that went in.
        let again = Self.udpSplit(out[0])
        #expect(again.count == dgrams.count)
        for (i, (a, b)) in zip(again, dgrams).enumerated() { #expect(a == b, "datagram \(i) differs after the split") }
    }

    @Test func udpCoalescingMergesOnlyWhatSplitsBackTheSame() {
        let a1 = Self.udp(v6: false, payload: [UInt8](repeating: 1, count: 1000), id: 10)
        let a2 = Self.udp(v6: false, payload: [UInt8](repeating: 2, count: 1000), id: 11)
        let idGap = Self.udp(v6: false, payload: [UInt8](repeating: 3, count: 1000), id: 20)
        let otherPort = Self.udp(v6: false, payload: [UInt8](repeating: 4, count: 1000), id: 21, srcPort: 40001)
        let otherTOS = Self.udp(v6: false, payload: [UInt8](repeating: 5, count: 1000), id: 22, tos: 0x10)
        var noSum = Self.udp(v6: false, payload: [UInt8](repeating: 6, count: 1000), id: 23); noSum[26] = 0; noSum[27] = 0
        var badSum = Self.udp(v6: false, payload: [UInt8](repeating: 7, count: 1000), id: 24); badSum[100] ^= 1
        let b1 = Self.udp(v6: false, payload: [UInt8](repeating: 8, count: 600), id: 25)
        let bigger = Self.udp(v6: false, payload: [UInt8](repeating: 9, count: 700), id: 26)
        var fragment = Self.udp(v6: false, payload: [UInt8](repeating: 10, count: 600), id: 27); fragment[6] |= 0x20
        let empty = Self.udp(v6: false, payload: [], id: 28)
        let pkts = [a1, a2, idGap, otherPort, otherTOS, noSum, badSum, b1, bigger, fragment, empty]
        let out = Self.coalesce(pkts)
        // a1+a2 merged; everything else alone and untouched (a bad checksum is not repaired).
        #expect(out.count == pkts.count - 1)
        #expect(Self.udpSplit(out[0]) == [a1, a2])
        for (w, p) in zip(out.dropFirst(), pkts.dropFirst(2)) {
            #expect(w.withUnsafeBytes { VirtioNetHeader($0) } == VirtioNetHeader())
            #expect(Array(w[10...]) == p)
        }
        // A TCP segment between two datagrams of one flow ends the run.
        let t = Self.tcp(v6: false, seq: 1, payload: [UInt8](repeating: 1, count: 100), flags: 0x10)
        let mixed = Self.coalesce([a1, t, a2])
        #expect(mixed.map { $0.count - 10 } == [a1.count, t.count, a2.count])
    }

    /// A peer (authenticated, but not trusted) can send any inner packet: mutated and truncated TCP
    /// segments and UDP datagrams through the coalescer never crash it, and everything it writes is
    /// one well-formed virtio header plus at most 64 KB, with the bytes of the packets it took.
    @Test func fuzzedCoalescerInputNeverCrashes() {
        var rng = SystemRandomNumberGenerator()
        var base: [[UInt8]] = []
        for k in 0..<8 {
            let payload = [UInt8](repeating: UInt8(k), count: 1000)
            base.append(Self.tcp(v6: k % 2 == 1, seq: UInt32(k / 2 * 1000), payload: payload, flags: 0x10))
            base.append(Self.udp(v6: k % 2 == 1, payload: payload, id: UInt16(k / 2)))
        }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Coalescer.capacity, alignment: 16)
        defer { buf.deallocate() }
        var c = Coalescer(buffer: buf)
        var written = 0, offered = 0
        for _ in 0..<20_000 {
            var p = base[Int.random(in: 0..<base.count, using: &rng)]
            if Bool.random(using: &rng) { p = Array(p.prefix(Int.random(in: 0...p.count, using: &rng))) }
            for _ in 0..<Int.random(in: 0...4, using: &rng) where !p.isEmpty { p[Int.random(in: 0..<p.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            offered += p.count
            p.withUnsafeBytes { c.push($0) { out in
                #expect(out.count > VirtioNetHeader.size && out.count <= Coalescer.capacity)
                written += out.count - VirtioNetHeader.size
            } }
        }
        c.flush { written += $0.count - VirtioNetHeader.size }
        // Merging drops repeated headers, never adds bytes; only oversized (> 64 KB) input is dropped.
        #expect(written <= offered && written > 0)
    }
}

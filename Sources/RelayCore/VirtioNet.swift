// TUN offloads: the virtio_net_hdr a TUN device with IFF_VNET_HDR puts in front of every packet,
// TCP segmentation of the large packets the kernel hands over when TSO is on (what the kernel's own
// GSO would have done), and the reverse on the receiving side: consecutive TCP segments of one flow
// coalesced into one large packet the kernel accepts with a GSO header (what GRO does).
// Pure code over caller-owned buffers; nothing here allocates.

/// `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h), little-endian as TUN uses it on
/// little-endian hosts (no TUNSETVNETBE).
public struct VirtioNetHeader: Equatable, Sendable {
    public static let size = 10
    public static let VIRTIO_NET_HDR_F_NEEDS_CSUM: UInt8 = 1
    public static let VIRTIO_NET_HDR_F_DATA_VALID: UInt8 = 2
    public static let VIRTIO_NET_HDR_GSO_NONE: UInt8 = 0
    public static let VIRTIO_NET_HDR_GSO_TCPV4: UInt8 = 1
    public static let VIRTIO_NET_HDR_GSO_UDP: UInt8 = 3
    public static let VIRTIO_NET_HDR_GSO_TCPV6: UInt8 = 4
    public static let VIRTIO_NET_HDR_GSO_UDP_L4: UInt8 = 5
    public static let VIRTIO_NET_HDR_GSO_ECN: UInt8 = 0x80

    public var flags: UInt8 = 0
    public var gsoType: UInt8 = 0
    public var hdrLen: UInt16 = 0
    public var gsoSize: UInt16 = 0
    public var csumStart: UInt16 = 0
    public var csumOffset: UInt16 = 0

    public init(flags: UInt8 = 0, gsoType: UInt8 = 0, hdrLen: UInt16 = 0, gsoSize: UInt16 = 0, csumStart: UInt16 = 0, csumOffset: UInt16 = 0) {
        self.flags = flags; self.gsoType = gsoType; self.hdrLen = hdrLen; self.gsoSize = gsoSize
        self.csumStart = csumStart; self.csumOffset = csumOffset
    }

    public init(_ p: UnsafeRawBufferPointer) {
        flags = p[0]; gsoType = p[1]
        hdrLen = UInt16(p[2]) | UInt16(p[3]) << 8
        gsoSize = UInt16(p[4]) | UInt16(p[5]) << 8
        csumStart = UInt16(p[6]) | UInt16(p[7]) << 8
        csumOffset = UInt16(p[8]) | UInt16(p[9]) << 8
    }

    public func write(to p: UnsafeMutableRawBufferPointer) {
        p[0] = flags; p[1] = gsoType
        p.storeBytes(of: hdrLen.littleEndian, toByteOffset: 2, as: UInt16.self)
        p.storeBytes(of: gsoSize.littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: csumStart.littleEndian, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: csumOffset.littleEndian, toByteOffset: 8, as: UInt16.self)
    }

    public var isGSO: Bool { gsoType & ~VirtioNetHeader.VIRTIO_NET_HDR_GSO_ECN != VirtioNetHeader.VIRTIO_NET_HDR_GSO_NONE }
}

/// The Internet checksum (RFC 1071) over raw memory, 8 bytes at a time.
public enum Checksum {
    /// The one's-complement sum of `p` as a big-endian 16-bit value (not complemented). `p` must
    /// start at an even offset of the data being summed.
    @inline(__always)
    public static func sum(_ p: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = p.baseAddress else { return 0 }
        return fold(accumulate(from: base, to: nil, count: p.count))
    }

    /// Copies `count` bytes from `src` to `dst` and returns their sum (as `sum` does) in the same
    /// pass: a TSO segment's payload is read once instead of twice.
    @inline(__always)
    public static func copySum(from src: UnsafeRawPointer, to dst: UnsafeMutableRawPointer, count: Int) -> UInt32 {
        fold(accumulate(from: src, to: dst, count: count))
    }

    /// 32-bit halves of 64-byte vectors added into 64-bit lanes: no carries to track (a 64 KB
    /// packet sums to under 2^46 per lane), eight independent lanes. Copies to `dst` on the way when
    /// it is given.
    @inline(__always)
    static func accumulate(from src: UnsafeRawPointer, to dst: UnsafeMutableRawPointer?, count n: Int) -> UInt64 {
        var v = SIMD8<UInt64>(repeating: 0)
        let low = SIMD8<UInt64>(repeating: 0xffff_ffff)
        var i = 0
        while i &+ 64 <= n {
            let w = src.loadUnaligned(fromByteOffset: i, as: SIMD8<UInt64>.self)
            dst?.storeBytes(of: w, toByteOffset: i, as: SIMD8<UInt64>.self)
            v &+= (w & low) &+ (w &>> 32)
            i &+= 64
        }
        var acc = v.wrappedSum()  // < 2^49: no overflow
        while i &+ 8 <= n {
            let w = src.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            dst?.storeBytes(of: w, toByteOffset: i, as: UInt64.self)
            acc &+= (w & 0xffff_ffff) &+ (w >> 32)
            i &+= 8
        }
        if i &+ 4 <= n {
            let w = src.loadUnaligned(fromByteOffset: i, as: UInt32.self)
            dst?.storeBytes(of: w, toByteOffset: i, as: UInt32.self)
            acc &+= UInt64(w); i &+= 4
        }
        if i &+ 2 <= n {
            let w = src.loadUnaligned(fromByteOffset: i, as: UInt16.self)
            dst?.storeBytes(of: w, toByteOffset: i, as: UInt16.self)
            acc &+= UInt64(w); i &+= 2
        }
        if i < n {
            let b = src.load(fromByteOffset: i, as: UInt8.self)
            dst?.storeBytes(of: b, toByteOffset: i, as: UInt8.self)
            acc &+= UInt64(b)  // a last odd byte starts a zero-padded word: its low byte in native order
        }
        return acc
    }

    /// Folds native-order lanes to 16 bits, then to network order (RFC 1071 §2(B)).
    @inline(__always)
    static func fold(_ acc: UInt64) -> UInt32 {
        var f = (acc & 0xffff_ffff) &+ (acc >> 32)
        f = (f & 0xffff) &+ (f >> 16)
        f = (f & 0xffff) &+ (f >> 16)
        f = (f & 0xffff) &+ (f >> 16)
        return UInt32(UInt16(truncatingIfNeeded: f).bigEndian)
    }

    @inline(__always)
    public static func add(_ a: UInt32, _ b: UInt32) -> UInt32 {
        var s = a &+ b
        s = (s & 0xffff) &+ (s >> 16)
        return (s & 0xffff) &+ (s >> 16)
    }

    /// The pseudo-header sum for an upper-layer length (IPv4 or IPv6 by the packet's version).
    @inline(__always)
    public static func pseudoHeader(_ pkt: UnsafeRawBufferPointer, proto: UInt8, length: Int) -> UInt32 {
        let addrs = pkt[0] >> 4 == 4 ? UnsafeRawBufferPointer(rebasing: pkt[12..<20]) : UnsafeRawBufferPointer(rebasing: pkt[8..<40])
        return add(add(sum(addrs), UInt32(proto)), UInt32(length & 0xffff) &+ UInt32(length >> 16))
    }

    @inline(__always) static func store(_ v: UInt16, _ p: UnsafeMutableRawBufferPointer, _ at: Int) {
        p[at] = UInt8(v >> 8); p[at + 1] = UInt8(truncatingIfNeeded: v)
    }
    @inline(__always) static func load16(_ p: UnsafeRawBufferPointer, _ at: Int) -> UInt16 { UInt16(p[at]) << 8 | UInt16(p[at + 1]) }
    @inline(__always) static func load32(_ p: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(p[at]) << 24 | UInt32(p[at + 1]) << 16 | UInt32(p[at + 2]) << 8 | UInt32(p[at + 3])
    }

    /// Recomputes an IPv4 header's checksum in place.
    @inline(__always)
    public static func fixIPv4Header(_ p: UnsafeMutableRawBufferPointer) {
        let ihl = Int(p[0] & 0x0f) * 4
        p[10] = 0; p[11] = 0
        store(~UInt16(sum(UnsafeRawBufferPointer(rebasing: p[0..<ihl]))), p, 10)
    }
}

/// What the sending side does with one read from an offloading TUN device.
public enum TunOffload {
    public enum Failure: Error, Equatable { case malformed, unsupported }

    /// Completes a checksum the kernel left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field at
    /// csum_start + csum_offset holds the pseudo-header sum, the rest is summed over the packet.
    public static func completeChecksum(_ p: UnsafeMutableRawBufferPointer, _ h: VirtioNetHeader) throws {
        let start = Int(h.csumStart), at = start + Int(h.csumOffset)
        guard start < p.count, at + 2 <= p.count else { throw Failure.malformed }
        var c = ~UInt16(Checksum.sum(UnsafeRawBufferPointer(rebasing: p[start...])))
        // UDP: a computed zero goes out as all ones (RFC 768).
        if c == 0 && h.csumOffset == 6 { c = 0xffff }
        Checksum.store(c, p, at)
    }
}

/// How one TSO packet (`gso_type` TCPv4 or TCPv6) splits into segments of at most `gso_size`
/// payload bytes, as the kernel's GSO would split it: IPv4 total length, ID (+1 per segment) and
/// header checksum, IPv6 payload length, TCP sequence numbers, FIN/PSH only on the last, CWR only
/// on the first, full TCP checksums.
public struct TSOPlan: Sendable {
    public let count: Int
    /// The bytes of all segments together (headers repeated).
    public var totalBytes: Int { count * hdr + payload }
    let l4: Int, hdr: Int, mss: Int, payload: Int, v4: Bool, seq0: UInt32, id0: UInt16, flags0: UInt8

    public init(_ p: UnsafeRawBufferPointer, _ h: VirtioNetHeader) throws {
        let type = h.gsoType & ~VirtioNetHeader.VIRTIO_NET_HDR_GSO_ECN
        guard type == VirtioNetHeader.VIRTIO_NET_HDR_GSO_TCPV4 || type == VirtioNetHeader.VIRTIO_NET_HDR_GSO_TCPV6 else { throw TunOffload.Failure.unsupported }
        guard p.count >= 40 else { throw TunOffload.Failure.malformed }
        v4 = p[0] >> 4 == 4
        guard v4 == (type == VirtioNetHeader.VIRTIO_NET_HDR_GSO_TCPV4), v4 || p[0] >> 4 == 6 else { throw TunOffload.Failure.malformed }
        l4 = Int(h.csumStart)
        if v4 { guard l4 == Int(p[0] & 0x0f) * 4, p[9] == 6 else { throw TunOffload.Failure.malformed } }
        else { guard l4 >= 40 else { throw TunOffload.Failure.malformed } }
        guard l4 + 20 <= p.count else { throw TunOffload.Failure.malformed }
        let tcpLen = Int(p[l4 + 12] >> 4) * 4
        hdr = l4 + tcpLen
        mss = Int(h.gsoSize)
        guard tcpLen >= 20, hdr <= p.count, mss > 0, hdr + mss <= 65535 else { throw TunOffload.Failure.malformed }
        payload = p.count - hdr
        seq0 = Checksum.load32(p, l4 + 4)
        id0 = v4 ? Checksum.load16(p, 4) : 0
        flags0 = p[l4 + 13]
        count = max(1, (payload + mss - 1) / mss)
    }

    /// Builds segment `i` of `p` (the packet the plan was made for) into `out`; returns its length.
    public func build(_ i: Int, from p: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int {
        let off = i * mss, len = max(0, min(mss, payload - off))
        let total = hdr + len
        precondition(out.count >= total)
        let seg = UnsafeMutableRawBufferPointer(rebasing: out[0..<total])
        seg.copyMemory(from: UnsafeRawBufferPointer(rebasing: p[0..<hdr]))
        precondition(hdr + off + len <= p.count)
        // The payload is copied and summed in one pass (it starts at an even offset from l4).
        let payloadSum = len > 0 ? Checksum.copySum(from: p.baseAddress! + hdr + off, to: seg.baseAddress! + hdr, count: len) : 0
        if v4 {
            Checksum.store(UInt16(total), seg, 2)
            Checksum.store(id0 &+ UInt16(truncatingIfNeeded: i), seg, 4)
            Checksum.fixIPv4Header(seg)
        } else {
            Checksum.store(UInt16(total - 40), seg, 4)
        }
        let seq = seq0 &+ UInt32(truncatingIfNeeded: off)
        seg[l4 + 4] = UInt8(seq >> 24); seg[l4 + 5] = UInt8(truncatingIfNeeded: seq >> 16)
        seg[l4 + 6] = UInt8(truncatingIfNeeded: seq >> 8); seg[l4 + 7] = UInt8(truncatingIfNeeded: seq)
        var f = flags0
        if i != count - 1 { f &= ~0x09 }  // FIN, PSH
        if i != 0 { f &= ~0x80 }          // CWR
        seg[l4 + 13] = f
        seg[l4 + 16] = 0; seg[l4 + 17] = 0
        let s = Checksum.add(Checksum.add(Checksum.pseudoHeader(UnsafeRawBufferPointer(seg), proto: 6, length: total - l4),
                                          Checksum.sum(UnsafeRawBufferPointer(rebasing: seg[l4..<hdr]))), payloadSum)
        Checksum.store(~UInt16(s), seg, l4 + 16)
        return total
    }
}

/// The receiving side, like the kernel's GRO: consecutive packets of one flow are merged into one
/// packet written with a GSO header, so the kernel handles one large packet instead of many until
/// it reaches the host (or a device that cannot take it, where the kernel splits it again).
/// - TCP segments (tcp_gro_receive's rules): the same addresses, ports, IP fields, ACK, window and
///   options; sequence numbers that follow on; equal sizes but the last.
/// - UDP datagrams (what `UDP_SEGMENT` would have sent): the same addresses, ports and IP fields,
///   IPv4 identifications that count up by one (the kernel numbers the datagrams it splits off that
///   way, so each comes out byte for byte as it went in), a checksum that verifies (an IPv4
///   datagram without one passes alone: splitting would add one), equal sizes but the last.
/// Anything else passes through alone. The buffer holds [virtio_net_hdr][IP][TCP or UDP][payload...].
public struct Coalescer {
    public let buffer: UnsafeMutableRawBufferPointer
    /// Bytes of the packet in `buffer` after the virtio header; 0 when empty.
    public private(set) var length = 0
    public private(set) var segments = 0
    var l4 = 0, hdr = 0, mss = 0, nextSeq: UInt32 = 0, nextID: UInt16 = 0, udp = false, closed = false

    public static let capacity = VirtioNetHeader.size + 65535
    public static let maxSegments = 64

    public init(buffer: UnsafeMutableRawBufferPointer) { precondition(buffer.count >= Coalescer.capacity); self.buffer = buffer }

    var packet: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(rebasing: buffer[VirtioNetHeader.size..<(VirtioNetHeader.size + length)]) }

    /// Where the transport header starts and how long IP + TCP headers are, for a TCP packet this
    /// coalescer can merge (IPv4 without options or fragments, IPv6 without extension headers).
    static func shape(_ p: UnsafeRawBufferPointer) -> (l4: Int, hdr: Int)? {
        guard p.count >= 40 else { return nil }
        let l4: Int
        switch p[0] >> 4 {
        case 4:
            guard p[0] & 0x0f == 5, p[9] == 6, Int(Checksum.load16(p, 2)) == p.count, Checksum.load16(p, 6) & 0x3fff == 0 else { return nil }
            l4 = 20
        case 6:
            guard p[6] == 6, Int(Checksum.load16(p, 4)) + 40 == p.count, p.count >= 60 else { return nil }
            l4 = 40
        default: return nil
        }
        let tcpLen = Int(p[l4 + 12] >> 4) * 4
        guard tcpLen >= 20, l4 + tcpLen <= p.count else { return nil }
        return (l4, l4 + tcpLen)
    }

    /// Where the UDP header starts, for a datagram with a payload this coalescer can merge (IPv4
    /// without options or fragments, IPv6 without extension headers, lengths that agree, a
    /// checksum that verifies).
    static func udpShape(_ p: UnsafeRawBufferPointer) -> Int? {
        guard p.count > 28 else { return nil }
        let l4: Int
        switch p[0] >> 4 {
        case 4:
            guard p[0] & 0x0f == 5, p[9] == 17, Int(Checksum.load16(p, 2)) == p.count, Checksum.load16(p, 6) & 0x3fff == 0,
                  Checksum.load16(p, 26) != 0 else { return nil }
            l4 = 20
        case 6:
            guard p.count > 48, p[6] == 17, Int(Checksum.load16(p, 4)) + 40 == p.count else { return nil }
            l4 = 40
        default: return nil
        }
        guard Int(Checksum.load16(p, l4 + 4)) == p.count - l4,
              Checksum.add(Checksum.pseudoHeader(p, proto: 17, length: p.count - l4), Checksum.sum(UnsafeRawBufferPointer(rebasing: p[l4...]))) == 0xffff
        else { return nil }
        return l4
    }

    /// Offers one packet. When it cannot join the packet being built, that one is flushed first
    /// (`write` gets [virtio_net_hdr][packet]); a packet that cannot be merged at all is flushed
    /// alone at once.
    public mutating func push(_ p: UnsafeRawBufferPointer, _ write: (UnsafeRawBufferPointer) -> Void) {
        if length > 0 && !append(p) { flush(write) }
        guard length == 0 else { if closed { flush(write) }; return }
        // Start a new one.
        guard p.count <= 65535 else { return }
        UnsafeMutableRawBufferPointer(rebasing: buffer[VirtioNetHeader.size..<(VirtioNetHeader.size + p.count)]).copyMemory(from: p)
        length = p.count
        segments = 1
        closed = true
        udp = false
        if let (l4, hdr) = Coalescer.shape(p), p.count > hdr {
            let flags = p[l4 + 13]
            // Plain ACK data (PSH allowed, then the packet is closed): others never merge.
            if flags & ~0x08 == 0x10 {
                self.l4 = l4; self.hdr = hdr; mss = p.count - hdr
                nextSeq = Checksum.load32(p, l4 + 4) &+ UInt32(mss)
                closed = flags & 0x08 != 0
            }
        } else if let l4 = Coalescer.udpShape(p) {
            self.l4 = l4; hdr = l4 + 8; mss = p.count - hdr; udp = true
            nextID = l4 == 20 ? Checksum.load16(p, 4) &+ 1 : 0
            closed = false
        }
        if closed { flush(write) }
    }

    /// Appends `p` to the packet being built when it continues it; false otherwise.
    mutating func append(_ p: UnsafeRawBufferPointer) -> Bool {
        guard !closed, segments < Coalescer.maxSegments else { return false }
        let cur = UnsafeRawBufferPointer(packet)
        guard p.count > hdr, p.count - hdr <= mss, length + p.count - hdr <= 65535 else { return false }
        let flags: UInt8
        if udp {
            // The checksum pass (udpShape) last, once the cheap fields match.
            if l4 == 20 { guard Checksum.load16(p, 4) == nextID else { return false } }
            flags = 0
        } else {
            guard let (l4b, hdrb) = Coalescer.shape(p), l4b == l4, hdrb == hdr else { return false }
            flags = p[l4 + 13]
            guard flags & ~0x08 == 0x10, Checksum.load32(p, l4 + 4) == nextSeq else { return false }
        }
        if l4 == 20 {
            // Version/IHL, TOS; TTL, protocol; addresses.
            guard p[0] == cur[0], p[1] == cur[1], p[8] == cur[8], p[9] == cur[9],
                  p[6] & 0x40 == cur[6] & 0x40,
                  memcmpEqual(p, cur, 12, 8) else { return false }
        } else {
            // Version, traffic class, flow label; next header, hop limit; addresses.
            guard memcmpEqual(p, cur, 0, 4), p[6] == cur[6], p[7] == cur[7], memcmpEqual(p, cur, 8, 32) else { return false }
        }
        if udp {
            // Ports; then lengths and the checksum.
            guard memcmpEqual(p, cur, l4, 4), Coalescer.udpShape(p) == l4 else { return false }
        } else {
            // Ports, ACK number, window, options.
            guard memcmpEqual(p, cur, l4, 4), memcmpEqual(p, cur, l4 + 8, 4), memcmpEqual(p, cur, l4 + 14, 2),
                  memcmpEqual(p, cur, l4 + 20, hdr - l4 - 20) else { return false }
        }
        let n = p.count - hdr
        UnsafeMutableRawBufferPointer(rebasing: buffer[(VirtioNetHeader.size + length)..<(VirtioNetHeader.size + length + n)])
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: p[hdr...]))
        length += n
        segments += 1
        if udp { nextID = nextID &+ 1 } else { nextSeq = nextSeq &+ UInt32(n) }
        if flags & 0x08 != 0 { buffer[VirtioNetHeader.size + l4 + 13] |= 0x08; closed = true }
        if n < mss { closed = true }
        return true
    }

    /// Writes out the packet being built (if any).
    public mutating func flush(_ write: (UnsafeRawBufferPointer) -> Void) {
        guard length > 0 else { return }
        let all = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(VirtioNetHeader.size + length)])
        if segments == 1 {
            VirtioNetHeader().write(to: all)
        } else {
            let p = packet
            let v4 = l4 == 20
            if v4 { Checksum.store(UInt16(length), p, 2); Checksum.fixIPv4Header(p) } else { Checksum.store(UInt16(length - 40), p, 4) }
            // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel completes the rest
            // (for UDP, of each datagram it splits off, with that datagram's length).
            let check = udp ? l4 + 6 : l4 + 16
            if udp { Checksum.store(UInt16(length - l4), p, l4 + 4) }
            p[check] = 0; p[check + 1] = 0
            Checksum.store(UInt16(Checksum.pseudoHeader(UnsafeRawBufferPointer(p), proto: udp ? 17 : 6, length: length - l4)), p, check)
            let gso = udp ? VirtioNetHeader.VIRTIO_NET_HDR_GSO_UDP_L4 : v4 ? VirtioNetHeader.VIRTIO_NET_HDR_GSO_TCPV4 : VirtioNetHeader.VIRTIO_NET_HDR_GSO_TCPV6
            VirtioNetHeader(flags: VirtioNetHeader.VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: gso, hdrLen: UInt16(hdr), gsoSize: UInt16(mss),
                            csumStart: UInt16(l4), csumOffset: udp ? 6 : 16).write(to: all)
        }
        write(UnsafeRawBufferPointer(all))
        length = 0; segments = 0; closed = false
    }
}

@inline(__always)
func memcmpEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ at: Int, _ n: Int) -> Bool {
    var i = at
    while i < at + n { if a[i] != b[i] { return false }; i += 1 }
    return true
}

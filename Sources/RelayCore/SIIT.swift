/// RFC 6052: IPv4 addresses embedded in IPv6 prefixes of length 32, 40, 48, 56, 64 or 96; bits
/// 64–71 (the "u" octet) are always zero.
public enum RFC6052 {
    @inline(__always) static func byte(_ a: IPv6Address, _ i: Int) -> UInt8 {
        i < 8 ? UInt8(truncatingIfNeeded: a.high >> UInt64((7 - i) * 8)) : UInt8(truncatingIfNeeded: a.low >> UInt64((15 - i) * 8))
    }
    @inline(__always) static func setByte(_ a: inout IPv6Address, _ i: Int, _ v: UInt8) {
        if i < 8 {
            let sh = UInt64((7 - i) * 8); a.high = a.high & ~(0xff << sh) | UInt64(v) << sh
        } else {
            let sh = UInt64((15 - i) * 8); a.low = a.low & ~(0xff << sh) | UInt64(v) << sh
        }
    }

    /// The IPv6 address that embeds `v4` in `prefix` (nil for a length RFC 6052 does not allow).
    /// No allocation: it runs per packet.
    public static func embed(_ v4: IPv4Address, in prefix: IPPrefix) -> IPv6Address? {
        guard case .v6(var b) = prefix.address, rfc6052Lengths.contains(prefix.length) else { return nil }
        var i = prefix.length / 8, k = 0
        while k < 4 {
            if i != 8 { setByte(&b, i, UInt8(truncatingIfNeeded: v4.value >> UInt32((3 - k) * 8))); k += 1 }
            i += 1
        }
        setByte(&b, 8, 0)
        // Suffix after the embedded address: zero (for /96 nothing follows).
        while i < 16 { setByte(&b, i, 0); i += 1 }
        return b
    }

    /// The IPv4 address embedded in `v6` if it lies in `prefix` (and its u octet is zero).
    public static func extract(_ v6: IPv6Address, from prefix: IPPrefix) -> IPv4Address? {
        guard rfc6052Lengths.contains(prefix.length), prefix.contains(.v6(v6)), byte(v6, 8) == 0 else { return nil }
        var v: UInt32 = 0, i = prefix.length / 8, k = 0
        while k < 4 {
            if i != 8 { v = v << 8 | UInt32(byte(v6, i)); k += 1 }
            i += 1
        }
        return IPv4Address(v)
    }
}

/// Stateless IP/ICMP translation (SIIT, RFC 7915) of one packet, IPv4 to IPv6 and back, into a
/// caller's buffer (no allocation per packet). Addresses are mapped by the caller's functions
/// (RFC 6052 embedding, RFC 7757 explicit mappings); ICMP errors have their inner packet
/// translated too, so traceroute and path MTU discovery work across.
public enum SIIT {
    public enum Outcome: Equatable {
        /// `length` bytes of translated packet were written.
        case translated(length: Int)
        /// Dropped: the reason names the rule (and the caller counts it).
        case drop(String)
    }

    /// How addresses map between the families; nil means "cannot be translated".
    public struct AddressMap {
        public var toV6: (IPv4Address) -> IPv6Address?
        public var toV4: (IPv6Address) -> IPv4Address?
        public init(toV6: @escaping (IPv4Address) -> IPv6Address?, toV4: @escaping (IPv6Address) -> IPv4Address?) { self.toV6 = toV6; self.toV4 = toV4 }
    }

    static func be16(_ p: UnsafeRawBufferPointer, _ i: Int) -> UInt16 { UInt16(p[i]) << 8 | UInt16(p[i + 1]) }
    static func put16(_ p: UnsafeMutableRawBufferPointer, _ i: Int, _ v: UInt16) { p[i] = UInt8(v >> 8); p[i + 1] = UInt8(v & 0xff) }
    static func sum(_ p: UnsafeRawBufferPointer, _ from: Int, _ count: Int, _ initial: UInt32 = 0) -> UInt32 {
        var s = initial, i = from
        let end = from + count
        while i + 1 < end { s += UInt32(p[i]) << 8 | UInt32(p[i + 1]); i += 2 }
        if i < end { s += UInt32(p[i]) << 8 }
        return s
    }
    static func fold(_ s: UInt32) -> UInt16 { var s = s; while s >> 16 != 0 { s = (s & 0xffff) + (s >> 16) }; return UInt16(s) }
    static func sumAddress(_ a: IPv4Address) -> UInt32 { (a.value >> 16) + (a.value & 0xffff) }
    static func sumAddress(_ a: IPv6Address) -> UInt32 {
        func words(_ v: UInt64) -> UInt32 { UInt32(v >> 48) + UInt32(v >> 32 & 0xffff) + UInt32(v >> 16 & 0xffff) + UInt32(v & 0xffff) }
        return words(a.high) + words(a.low)
    }
    public static func load6(_ p: UnsafeRawBufferPointer, _ i: Int) -> IPv6Address {
        IPv6Address(high: UInt64(bigEndian: p.loadUnaligned(fromByteOffset: i, as: UInt64.self)),
                    low: UInt64(bigEndian: p.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)))
    }
    static func store6(_ out: UnsafeMutableRawBufferPointer, _ i: Int, _ a: IPv6Address) {
        out.storeBytes(of: a.high.bigEndian, toByteOffset: i, as: UInt64.self)
        out.storeBytes(of: a.low.bigEndian, toByteOffset: i + 8, as: UInt64.self)
    }
    static func store4(_ out: UnsafeMutableRawBufferPointer, _ i: Int, _ a: IPv4Address) {
        out.storeBytes(of: a.value.bigEndian, toByteOffset: i, as: UInt32.self)
    }

    /// RFC 1624 incremental update of a checksum field when pseudo-header words change.
    static func adjust(_ old: UInt16, removing: UInt32, adding: UInt32) -> UInt16 {
        // ~C' = ~C + ~m + m'  (all ones' complement sums)
        let r = UInt32(~fold(removing))
        return ~fold(UInt32(~old) + r + adding)
    }

    // MARK: IPv4 -> IPv6 (RFC 7915 section 4)

    /// Translates an IPv4 packet; `inner` is for the packet inside an ICMP error (no TTL change,
    /// lengths as they are, checksum of a truncated transport header left alone).
    /// `decrement`: lower the TTL/hop limit by one (RFC 7915, a translator acting as a router). A
    /// translator inside a router that already did so (relayd behind the kernel's forwarding) passes false.
    public static func toIPv6(_ p: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, map: AddressMap, inner: Bool = false, decrement: Bool = true) -> Outcome {
        guard p.count >= 20, p[0] >> 4 == 4 else { return .drop("not IPv4") }
        let ihl = Int(p[0] & 0x0f) * 4
        guard ihl >= 20, p.count >= ihl else { return .drop("bad IPv4 header length") }
        let total = Int(be16(p, 2))
        guard inner || total == p.count else { return .drop("IPv4 total length does not match") }
        let end = inner ? p.count : total
        let ttl = p[8], proto = p[9]
        guard inner || !decrement || ttl > 1 else { return .drop("TTL expired") }
        let flags = be16(p, 6)
        let mf = flags & 0x2000 != 0, offset = flags & 0x1fff
        let fragment = mf || offset != 0
        let src = IPv4Address(p[12], p[13], p[14], p[15]), dst = IPv4Address(p[16], p[17], p[18], p[19])
        guard let s6 = map.toV6(src) else { return .drop("source \(src) has no IPv6 mapping") }
        guard let d6 = map.toV6(dst) else { return .drop("destination \(dst) has no IPv6 mapping") }
        let header = 40 + (fragment ? 8 : 0)
        let payload = end - ihl
        guard out.count >= header + payload + 8 else { return .drop("no room") }
        let nh: UInt8 = proto == 1 ? 58 : proto
        out[0] = 0x60 | p[1] >> 4; out[1] = (p[1] & 0x0f) << 4; out[2] = 0; out[3] = 0
        put16(out, 4, UInt16(payload + (fragment ? 8 : 0)))
        out[6] = fragment ? 44 : nh
        out[7] = inner || !decrement ? ttl : ttl - 1
        store6(out, 8, s6); store6(out, 24, d6)
        if fragment {
            out[40] = nh; out[41] = 0
            put16(out, 42, offset << 3 | (mf ? 1 : 0))
            out[44] = 0; out[45] = 0; out[46] = p[4]; out[47] = p[5]
        }
        // Transport: copy, then fix checksums.
        for i in 0..<payload { out[header + i] = p[ihl + i] }
        let l4 = UnsafeMutableRawBufferPointer(rebasing: out[header..<(header + payload)])
        let old4 = sumAddress(src) + sumAddress(dst), new6 = sumAddress(s6) + sumAddress(d6)
        switch proto {
        case 6 where offset == 0 && payload >= 18:
            put16(l4, 16, adjust(be16(UnsafeRawBufferPointer(l4), 16), removing: old4, adding: new6))
        case 17 where offset == 0 && payload >= 8:
            let c = be16(UnsafeRawBufferPointer(l4), 6)
            if c == 0 {
                // RFC 7915 section 4.5: compute it, unless the datagram is fragmented.
                guard !fragment, !inner else { return .drop("IPv4 UDP with a zero checksum in a fragment") }
                var s = new6 + UInt32(payload) + 17
                s = sum(UnsafeRawBufferPointer(l4), 0, payload, s)
                var v = ~fold(s); if v == 0 { v = 0xffff }
                put16(l4, 6, v)
            } else if !inner || payload >= 8 {
                var v = adjust(c, removing: old4, adding: new6); if v == 0 { v = 0xffff }
                put16(l4, 6, v)
            }
        case 1:
            guard !fragment else { return .drop("fragmented ICMP") }
            guard payload >= 8 else { return .drop("short ICMP") }
            let r = icmp4to6(p, ihl: ihl, end: end, out: out, at: header, map: map, inner: inner)
            guard case .translated(let l) = r else { return r }
            // Payload length may have changed (inner packet grew by 20 bytes).
            put16(out, 4, UInt16(l - 40))
            let m = UnsafeMutableRawBufferPointer(rebasing: out[40..<l])
            put16(m, 2, 0)
            if !inner || l - 40 <= 65535 {
                let s = sum(UnsafeRawBufferPointer(m), 0, l - 40, new6 + UInt32(l - 40) + 58)
                put16(m, 2, ~fold(s))
            }
            return .translated(length: l)
        default: break
        }
        return .translated(length: header + payload)
    }

    /// ICMPv4 -> ICMPv6 type/code (RFC 7915 section 4.2), writing at `at`; returns the new end.
    static func icmp4to6(_ p: UnsafeRawBufferPointer, ihl: Int, end: Int, out: UnsafeMutableRawBufferPointer, at: Int, map: AddressMap, inner: Bool) -> Outcome {
        let type = p[ihl], code = p[ihl + 1]
        var t: UInt8, c: UInt8 = 0
        var error = true
        var rest = UInt32(be16(p, ihl + 4)) << 16 | UInt32(be16(p, ihl + 6))
        switch type {
        case 8: t = 128; error = false
        case 0: t = 129; error = false
        case 3:
            switch code {
            case 0, 1, 5, 6, 7, 8, 11, 12: t = 1; c = 0
            case 2: t = 4; c = 1; rest = 6  // protocol unreachable: parameter problem, pointer to next header
            case 3: t = 1; c = 4
            case 4:
                t = 2
                let mtu = UInt32(be16(p, ihl + 6))
                rest = max(1280, mtu == 0 ? 1280 : mtu + 20)
            case 9, 10, 13, 15: t = 1; c = 1
            default: return .drop("ICMPv4 unreachable code \(code) has no ICMPv6 equivalent")
            }
        case 11: t = 3; c = code
        case 12:
            guard code == 0 || code == 2 else { return .drop("ICMPv4 parameter problem code \(code)") }
            // RFC 7915 section 4.2, figure 3.
            let np: UInt32
            switch p[ihl + 4] {
            case 0: np = 0
            case 1: np = 1
            case 2, 3: np = 4
            case 8: np = 7
            case 9: np = 6
            case 12...15: np = 8
            case 16...19: np = 24
            default: return .drop("ICMPv4 parameter problem pointer has no IPv6 equivalent")
            }
            t = 4; c = 0; rest = np
        default: return .drop("ICMPv4 type \(type) is not translated")
        }
        out[at] = t; out[at + 1] = c; out[at + 2] = 0; out[at + 3] = 0
        if error {
            guard !inner else { return .drop("ICMP error inside an ICMP error") }
            out[at + 4] = UInt8(rest >> 24); out[at + 5] = UInt8(rest >> 16 & 0xff); out[at + 6] = UInt8(rest >> 8 & 0xff); out[at + 7] = UInt8(rest & 0xff)
            let innerIn = UnsafeRawBufferPointer(rebasing: p[(ihl + 8)..<end])
            let innerOut = UnsafeMutableRawBufferPointer(rebasing: out[(at + 8)...])
            // The inner packet travelled the other way: its addresses map the same way.
            guard case .translated(let l) = toIPv6(innerIn, into: innerOut, map: map, inner: true) else { return .drop("inner packet cannot be translated") }
            // RFC 7915: the whole ICMPv6 error must fit the IPv6 minimum MTU.
            return .translated(length: min(at + 8 + l, 1280))
        }
        for i in 4..<(end - ihl) { out[at + i] = p[ihl + i] }
        return .translated(length: at + end - ihl)
    }

    // MARK: IPv6 -> IPv4 (RFC 7915 section 5)

    public static func toIPv4(_ p: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, map: AddressMap, inner: Bool = false, decrement: Bool = true) -> Outcome {
        guard p.count >= 40, p[0] >> 4 == 6 else { return .drop("not IPv6") }
        let plen = Int(be16(p, 4))
        guard inner || plen + 40 == p.count else { return .drop("IPv6 payload length does not match") }
        let end = inner ? p.count : plen + 40
        let hop = p[7]
        guard inner || !decrement || hop > 1 else { return .drop("hop limit expired") }
        let s6 = load6(p, 8), d6 = load6(p, 24)
        // Extension headers: hop-by-hop, destination options, routing (segments left 0), fragment.
        var nh = p[6], off = 40
        var fragID: (UInt16, UInt16, Bool)?  // id low 16, offset, more
        while true {
            if nh == 0 || nh == 60 || nh == 43 {
                guard off + 8 <= end else { return .drop("truncated extension header") }
                if nh == 43 && p[off + 3] != 0 { return .drop("routing header with segments left") }
                nh = p[off]; off += (Int(p[off + 1]) + 1) * 8
            } else if nh == 44 {
                guard off + 8 <= end else { return .drop("truncated fragment header") }
                let fo = be16(p, off + 2)
                fragID = (be16(p, off + 6), fo >> 3, fo & 1 != 0)
                nh = p[off]; off += 8
            } else { break }
        }
        guard off <= end else { return .drop("truncated extension header") }
        // RFC 7915 section 5.1 / RFC 6791: an ICMPv6 error from a router without an IPv4 name (a hop
        // inside the IPv6 network) gets a translatable source, here the inner packet's destination,
        // as the kernel's NAT does for errors about NATed flows; otherwise traceroute loses the hop.
        var errorSource: IPv4Address? = nil
        if !inner, nh == 58, off + 48 <= end, p[off] < 128, p[off + 8] >> 4 == 6 { errorSource = map.toV4(load6(p, off + 8 + 24)) }
        guard let s4 = map.toV4(s6) ?? errorSource else { return .drop("source \(s6) has no IPv4 mapping") }
        guard let d4 = map.toV4(d6) else { return .drop("destination \(d6) has no IPv4 mapping") }
        let payload = end - off
        guard out.count >= 20 + payload else { return .drop("no room") }
        let proto: UInt8 = nh == 58 ? 1 : nh
        out[0] = 0x45; out[1] = p[0] << 4 | p[1] >> 4
        put16(out, 2, UInt16(20 + payload))
        if let f = fragID {
            put16(out, 4, f.0)
            put16(out, 6, (f.2 ? 0x2000 : 0) | f.1)
        } else {
            // RFC 7915 section 5.1: DF set unless the packet is 1260 bytes or less; no identification.
            put16(out, 4, 0)
            put16(out, 6, 20 + payload > 1260 ? 0x4000 : 0)
        }
        out[8] = inner || !decrement ? hop : hop - 1
        out[9] = proto
        store4(out, 12, s4); store4(out, 16, d4)
        for i in 0..<payload { out[20 + i] = p[off + i] }
        let l4 = UnsafeMutableRawBufferPointer(rebasing: out[20..<(20 + payload)])
        let old6 = sumAddress(s6) + sumAddress(d6), new4 = sumAddress(s4) + sumAddress(d4)
        let first = fragID.map { $0.1 == 0 } ?? true
        var length = 20 + payload
        switch nh {
        case 6 where first && payload >= 18:
            put16(l4, 16, adjust(be16(UnsafeRawBufferPointer(l4), 16), removing: old6, adding: new4))
        case 17 where first && payload >= 8:
            var v = adjust(be16(UnsafeRawBufferPointer(l4), 6), removing: old6, adding: new4); if v == 0 { v = 0xffff }
            put16(l4, 6, v)
        case 58:
            guard fragID == nil else { return .drop("fragmented ICMPv6") }
            guard payload >= 8 else { return .drop("short ICMPv6") }
            let r = icmp6to4(p, at: off, end: end, out: out, map: map, inner: inner)
            guard case .translated(let l) = r else { return r }
            length = l
            put16(out, 2, UInt16(l))
            let m = UnsafeMutableRawBufferPointer(rebasing: out[20..<l])
            put16(m, 2, 0)
            put16(m, 2, ~fold(sum(UnsafeRawBufferPointer(m), 0, l - 20)))
        default: break
        }
        put16(out, 10, 0)
        put16(out, 10, ~fold(sum(UnsafeRawBufferPointer(out), 0, 20)))
        return .translated(length: length)
    }

    static func icmp6to4(_ p: UnsafeRawBufferPointer, at: Int, end: Int, out: UnsafeMutableRawBufferPointer, map: AddressMap, inner: Bool) -> Outcome {
        let type = p[at], code = p[at + 1]
        var t: UInt8, c: UInt8 = 0, error = true
        var rest = UInt32(be16(p, at + 4)) << 16 | UInt32(be16(p, at + 6))
        switch type {
        case 128: t = 8; error = false
        case 129: t = 0; error = false
        case 1:
            t = 3
            switch code {
            case 0, 2, 3: c = 1
            case 1: c = 10
            case 4: c = 3
            default: return .drop("ICMPv6 unreachable code \(code) has no ICMPv4 equivalent")
            }
            rest = 0
        case 2:
            t = 3; c = 4
            let mtu = rest > 20 ? rest - 20 : 0
            rest = min(mtu, 0xffff)
        case 3: t = 11; c = code; rest = 0
        case 4:
            if code == 1 { t = 3; c = 2; rest = 0 }
            else if code == 0 {
                // RFC 7915 section 5.2, figure 6.
                let np: UInt32
                switch rest {
                case 0: np = 0
                case 1: np = 1
                case 4, 5: np = 2
                case 6: np = 9
                case 7: np = 8
                case 8...23: np = 12
                case 24...39: np = 16
                default: return .drop("ICMPv6 parameter problem pointer has no IPv4 equivalent")
                }
                t = 12; c = 0; rest = np << 24
            } else { return .drop("ICMPv6 parameter problem code \(code)") }
        default: return .drop("ICMPv6 type \(type) is not translated")
        }
        out[20] = t; out[21] = c; out[22] = 0; out[23] = 0
        if error {
            guard !inner else { return .drop("ICMP error inside an ICMP error") }
            out[24] = UInt8(rest >> 24); out[25] = UInt8(rest >> 16 & 0xff); out[26] = UInt8(rest >> 8 & 0xff); out[27] = UInt8(rest & 0xff)
            let innerIn = UnsafeRawBufferPointer(rebasing: p[(at + 8)..<end])
            let innerOut = UnsafeMutableRawBufferPointer(rebasing: out[28...])
            guard case .translated(let l) = toIPv4(innerIn, into: innerOut, map: map, inner: true) else { return .drop("inner packet cannot be translated") }
            return .translated(length: 28 + l)
        }
        for i in 4..<(end - at) { out[20 + i] = p[at + i] }
        return .translated(length: 20 + end - at)
    }
}

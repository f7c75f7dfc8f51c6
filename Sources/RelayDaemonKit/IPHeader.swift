import RelayCore

/// Just enough of IPv4/IPv6 headers for routing decisions.
public enum IPHeader {
    /// The source address of an IPv4 or IPv6 packet (nil when too short or neither).
    @inline(__always)
    public static func source(_ p: UnsafeRawBufferPointer) -> IPAddress? { address(p, v4: 12, v6: 8) }

    /// The destination address of an IPv4 or IPv6 packet (nil when too short or neither).
    @inline(__always)
    public static func destination(_ p: UnsafeRawBufferPointer) -> IPAddress? { address(p, v4: 16, v6: 24) }

    @inline(__always)
    static func address(_ p: UnsafeRawBufferPointer, v4: Int, v6: Int) -> IPAddress? {
        guard let first = p.first else { return nil }
        switch first >> 4 {
        case 4: return p.count >= 20 ? .v4(IPv4Address(p[v4], p[v4 + 1], p[v4 + 2], p[v4 + 3])) : nil
        case 6: return p.count >= 40 ? .v6(SIIT.load6(p, v6)) : nil
        default: return nil
        }
    }

    public static func addresses(_ p: ArraySlice<UInt8>) -> (src: IPAddress, dst: IPAddress)? {
        guard let first = p.first else { return nil }
        let s = p.startIndex
        switch first >> 4 {
        case 4:
            guard p.count >= 20 else { return nil }
            return (.v4(IPv4Address(p[s + 12], p[s + 13], p[s + 14], p[s + 15])), .v4(IPv4Address(p[s + 16], p[s + 17], p[s + 18], p[s + 19])))
        case 6:
            guard p.count >= 40 else { return nil }
            let (a, b) = p.withUnsafeBytes { (SIIT.load6($0, 8), SIIT.load6($0, 24)) }  // no allocation per packet
            return (.v6(a), .v6(b))
        default: return nil
        }
    }
}

extension IPHeader {
    /// The Internet checksum (RFC 1071); 0 over data that includes a correct checksum.
    public static func checksum(_ b: ArraySlice<UInt8>) -> UInt16 { internetChecksum(b) }

    /// Why relayd refuses a packet, as an ICMP/ICMPv6 error (RFC 792/1191, RFC 4443).
    public enum ICMPError: Equatable, Sendable {
        /// Fragmentation needed / packet too big, with the MTU that fits.
        case tooBig(mtu: Int)
        /// No site owns the destination: net unreachable / no route.
        case noRoute
        /// The destination cannot be translated (e.g. an embedded address outside the site's LAN):
        /// host unreachable / address unreachable.
        case addressUnreachable
        /// The source has no name in the other family (no explicit mapping): communication
        /// administratively prohibited (ICMPv4 type 3 code 13, ICMPv6 type 1 code 1).
        case sourcePolicy

        var v4: (type: UInt8, code: UInt8) {
            switch self { case .tooBig: return (3, 4); case .noRoute: return (3, 0); case .addressUnreachable: return (3, 1); case .sourcePolicy: return (3, 13) }
        }
        var v6: (type: UInt8, code: UInt8) {
            switch self { case .tooBig: return (2, 0); case .noRoute: return (1, 0); case .addressUnreachable: return (1, 3); case .sourcePolicy: return (1, 1) }
        }
    }

    /// The ICMP error that tells `original`'s sender to send smaller packets: IPv4 "fragmentation
    /// needed" (RFC 1191) with the next-hop MTU, or ICMPv6 "packet too big" (RFC 4443).
    public static func packetTooBig(_ original: ArraySlice<UInt8>, mtu: Int) -> [UInt8]? { icmpError(original, .tooBig(mtu: mtu)) }

    /// The ICMP/ICMPv6 error about `original`, addressed to its sender. It comes from the original
    /// destination, so the sender's conntrack sees it as related to its flow (and the tunnel's
    /// source check accepts it). nil when no error may be sent: not IPv4/IPv6, an ICMP error itself
    /// (RFC 1122/4443: never about an error), "too big" for IPv4 without DF.
    public static func icmpError(_ original: ArraySlice<UInt8>, _ kind: ICMPError) -> [UInt8]? {
        guard let (src, dst) = addresses(original) else { return nil }
        let o = Array(original)
        var rest: UInt32 = 0
        if case .tooBig(let mtu) = kind { rest = UInt32(mtu) }
        switch (src, dst) {
        case (.v4(let s), .v4(let d)):
            let ihl = Int(o[0] & 0x0f) * 4
            guard ihl >= 20, o.count >= ihl else { return nil }
            if case .tooBig = kind, o[6] & 0x40 == 0 { return nil }                          // DF not set: it may fragment
            if o[9] == 1, o.count > ihl, [3, 4, 5, 11, 12].contains(o[ihl]) { return nil }   // never answer an ICMP error
            if o[6] & 0x1f != 0 || o[7] != 0 { return nil }                                   // only about first fragments
            let quote = Array(o.prefix(min(o.count, 548 - 28)))
            var icmp: [UInt8] = [kind.v4.type, kind.v4.code, 0, 0, 0, 0, UInt8(rest >> 8 & 0xff), UInt8(rest & 0xff)] + quote
            let c = checksum(icmp[...]); icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
            let total = 20 + icmp.count
            var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 0, 0, 0, 64, 1, 0, 0] + d.bytes + s.bytes
            let h = checksum(ip[...]); ip[10] = UInt8(h >> 8); ip[11] = UInt8(h & 0xff)
            return ip + icmp
        case (.v6(let s), .v6(let d)):
            if o[6] == 58, o.count > 40, o[40] < 128 { return nil }                     // an ICMPv6 error
            let quote = Array(o.prefix(min(o.count, 1280 - 48)))
            var icmp: [UInt8] = [kind.v6.type, kind.v6.code, 0, 0, UInt8(rest >> 24 & 0xff), UInt8(rest >> 16 & 0xff), UInt8(rest >> 8 & 0xff), UInt8(rest & 0xff)] + quote
            // Checksum over the pseudo-header (source, destination, length, next header 58).
            let len = UInt32(icmp.count)
            var pseudo = d.bytes + s.bytes
            pseudo += [UInt8(len >> 24), UInt8(len >> 16 & 0xff), UInt8(len >> 8 & 0xff), UInt8(len & 0xff), 0, 0, 0, 58]
            let c = checksum((pseudo + icmp)[...]); icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
            var ip: [UInt8] = [0x60, 0, 0, 0, UInt8(icmp.count >> 8), UInt8(icmp.count & 0xff), 58, 64]
            ip += d.bytes + s.bytes
            return ip + icmp
        default: return nil
        }
    }
}

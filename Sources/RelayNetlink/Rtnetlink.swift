#if canImport(Glibc)
import Glibc
#endif
import RelayCore

/// rtnetlink constants under their kernel names (linux/rtnetlink.h, if_link.h, if_addr.h).
public enum RTNL {
    public static let RTM_NEWLINK: UInt16 = 16
    public static let RTM_DELLINK: UInt16 = 17
    public static let RTM_GETLINK: UInt16 = 18
    public static let RTM_NEWADDR: UInt16 = 20
    public static let RTM_DELADDR: UInt16 = 21
    public static let RTM_GETADDR: UInt16 = 22
    public static let RTM_NEWROUTE: UInt16 = 24
    public static let RTM_DELROUTE: UInt16 = 25
    public static let RTM_GETROUTE: UInt16 = 26

    public static let IFLA_ADDRESS: UInt16 = 1
    public static let IFLA_IFNAME: UInt16 = 3
    public static let IFLA_MTU: UInt16 = 4
    public static let IFLA_LINKINFO: UInt16 = 18
    public static let IFLA_INFO_KIND: UInt16 = 1
    public static let IFLA_STATS64: UInt16 = 23
    public static let IFLA_AF_SPEC: UInt16 = 26
    public static let IFLA_INET6_ADDR_GEN_MODE: UInt16 = 8
    public static let IN6_ADDR_GEN_MODE_NONE: UInt8 = 1
    public static let IFF_UP: UInt32 = 0x1
    /// Carrier: for a TUN device, some process has it open (attached).
    public static let IFF_LOWER_UP: UInt32 = 0x10000

    public static let IFA_ADDRESS: UInt16 = 1
    public static let IFA_LOCAL: UInt16 = 2
    public static let IFA_FLAGS: UInt16 = 8
    public static let IFA_F_NODAD: UInt32 = 0x02
    public static let IFA_F_NOPREFIXROUTE: UInt32 = 0x200
    public static let IFA_F_PERMANENT: UInt8 = 0x80

    public static let RTA_DST: UInt16 = 1
    public static let RTA_OIF: UInt16 = 4
    public static let RTA_PRIORITY: UInt16 = 6
    public static let RTA_TABLE: UInt16 = 15
    public static let RT_TABLE_UNSPEC: UInt8 = 0
    public static let RT_TABLE_COMPAT: UInt8 = 252
    public static let RT_SCOPE_UNIVERSE: UInt8 = 0
    public static let RT_SCOPE_LINK: UInt8 = 253
    public static let RT_SCOPE_NOWHERE: UInt8 = 255
    public static let RTN_UNICAST: UInt8 = 1
    public static let RT_SCOPE_HOST: UInt8 = 254

    public static func family(_ f: IPFamily) -> UInt8 { f == .ipv4 ? UInt8(AF_INET) : UInt8(AF_INET6) }
}

/// A network device as RTM_GETLINK reports it.
public struct LinkInfo: Sendable, Equatable {
    public var index: Int32
    public var name: String
    public var mtu: Int
    public var flags: UInt32
    public var kind: String?
    public var rxPackets: UInt64
    public var txPackets: UInt64
    public var isUp: Bool { flags & RTNL.IFF_UP != 0 }
    /// For a TUN device: a process holds it open.
    public var hasCarrier: Bool { flags & RTNL.IFF_LOWER_UP != 0 }
}

/// A route as RTM_GETROUTE reports it.
public struct RouteInfo: Sendable, Equatable {
    public var destination: IPPrefix
    public var oif: Int32?
    public var table: UInt32
    public var protocolNumber: UInt8
    public var scope: UInt8
    public var type: UInt8
    public var metric: UInt32?
}

/// rtnetlink requests as pure bytes (golden-testable). Each says which `ip` command it equals.
public enum RtnetlinkRequests {
    static func ifinfomsg(index: Int32, flags: UInt32 = 0, change: UInt32 = 0) -> [UInt8] {
        var b: [UInt8] = [UInt8(AF_UNSPEC), 0, 0, 0]
        withUnsafeBytes(of: index.littleEndian) { b += $0 }
        withUnsafeBytes(of: flags.littleEndian) { b += $0 }
        withUnsafeBytes(of: change.littleEndian) { b += $0 }
        return b
    }

    static func ifaddrmsg(_ a: InterfaceAddress, index: Int32, scope: UInt8 = 0) -> [UInt8] {
        var b: [UInt8] = [RTNL.family(a.family), UInt8(a.length), 0, scope]
        withUnsafeBytes(of: UInt32(bitPattern: index).littleEndian) { b += $0 }
        return b
    }

    static func rtmsg(family: IPFamily, dstLen: Int, table: UInt32, protocolNumber: UInt8, scope: UInt8, type: UInt8) -> [UInt8] {
        [RTNL.family(family), UInt8(dstLen), 0, 0, table < 256 ? UInt8(table) : RTNL.RT_TABLE_UNSPEC, protocolNumber, scope, type, 0, 0, 0, 0]
    }

    /// `ip link set dev <index> mtu <mtu> up`
    public static func linkSet(index: Int32, mtu: Int?, up: Bool?, seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_NEWLINK, flags: NL.NLM_F_REQUEST | NL.NLM_F_ACK, seq: seq)
        b.header(ifinfomsg(index: index, flags: up == true ? RTNL.IFF_UP : 0, change: up == nil ? 0 : RTNL.IFF_UP))
        if let mtu { b.attrU32(RTNL.IFLA_MTU, UInt32(mtu)) }
        return b.finish()
    }

    /// `ip link set dev <index> addrgenmode none`: no IPv6 link-local address, so no fe80::/64
    /// route the helper did not ask for.
    public static func linkNoAddrGen(index: Int32, seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_NEWLINK, flags: NL.NLM_F_REQUEST | NL.NLM_F_ACK, seq: seq)
        b.header(ifinfomsg(index: index))
        let spec = b.beginNest(RTNL.IFLA_AF_SPEC)
        let inet6 = b.beginNest(UInt16(AF_INET6))
        b.attrU8(RTNL.IFLA_INET6_ADDR_GEN_MODE, RTNL.IN6_ADDR_GEN_MODE_NONE)
        b.endNest(inet6)
        b.endNest(spec)
        return b.finish()
    }

    /// `ip link del dev <index>`
    public static func linkDelete(index: Int32, seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_DELLINK, flags: NL.NLM_F_REQUEST | NL.NLM_F_ACK, seq: seq)
        b.header(ifinfomsg(index: index))
        return b.finish()
    }

    /// `ip -s link show` (dump)
    public static func linkDump(seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_GETLINK, flags: NL.NLM_F_REQUEST | NL.NLM_F_DUMP, seq: seq)
        b.header(ifinfomsg(index: 0))
        return b.finish()
    }

    /// `ip addr replace <address> dev <index> noprefixroute` (IPv6 also `nodad`: a tunnel has no
    /// neighbours to ask). No prefix route: the kernel would otherwise route the address's whole
    /// prefix into the device by itself; routes are the helper's to add, each checked on its own.
    public static func addressReplace(_ a: InterfaceAddress, index: Int32, seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_NEWADDR, flags: NL.NLM_F_REQUEST | NL.NLM_F_ACK | NL.NLM_F_CREATE | NL.NLM_F_REPLACE, seq: seq)
        b.header(ifaddrmsg(a, index: index))
        b.attr(RTNL.IFA_LOCAL, a.address.bytes)
        b.attr(RTNL.IFA_ADDRESS, a.address.bytes)
        b.attrU32(RTNL.IFA_FLAGS, RTNL.IFA_F_NOPREFIXROUTE | (a.family == .ipv6 ? RTNL.IFA_F_NODAD : 0))
        return b.finish()
    }

    /// `ip addr del <address> dev <index>`
    public static func addressDelete(_ a: InterfaceAddress, index: Int32, seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_DELADDR, flags: NL.NLM_F_REQUEST | NL.NLM_F_ACK, seq: seq)
        b.header(ifaddrmsg(a, index: index))
        b.attr(RTNL.IFA_LOCAL, a.address.bytes)
        b.attr(RTNL.IFA_ADDRESS, a.address.bytes)
        return b.finish()
    }

    /// `ip addr show` (dump)
    public static func addressDump(seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_GETADDR, flags: NL.NLM_F_REQUEST | NL.NLM_F_DUMP, seq: seq)
        b.header([UInt8(AF_UNSPEC), 0, 0, 0, 0, 0, 0, 0])
        return b.finish()
    }

    /// `ip route replace <dst> dev <oif> table <table> proto <protocol> [metric <m>]`
    /// (scope link for IPv4 device routes, universe for IPv6, as iproute2 chooses).
    public static func routeReplace(_ dst: IPPrefix, oif: Int32, table: UInt32, protocolNumber: UInt8, metric: UInt32?, seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_NEWROUTE, flags: NL.NLM_F_REQUEST | NL.NLM_F_ACK | NL.NLM_F_CREATE | NL.NLM_F_REPLACE, seq: seq)
        let scope = dst.family == .ipv4 ? RTNL.RT_SCOPE_LINK : RTNL.RT_SCOPE_UNIVERSE
        b.header(rtmsg(family: dst.family, dstLen: dst.length, table: table, protocolNumber: protocolNumber, scope: scope, type: RTNL.RTN_UNICAST))
        routeAttributes(&b, dst, oif: oif, table: table, metric: metric)
        return b.finish()
    }

    /// `ip route del <dst> dev <oif> table <table> proto <protocol> [metric <m>]`: the protocol makes
    /// the kernel match only a route carrying it, so another owner's route is never removed.
    public static func routeDelete(_ dst: IPPrefix, oif: Int32?, table: UInt32, protocolNumber: UInt8, metric: UInt32?, seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_DELROUTE, flags: NL.NLM_F_REQUEST | NL.NLM_F_ACK, seq: seq)
        b.header(rtmsg(family: dst.family, dstLen: dst.length, table: table, protocolNumber: protocolNumber, scope: RTNL.RT_SCOPE_NOWHERE, type: 0 /* RTN_UNSPEC */))
        routeAttributes(&b, dst, oif: oif, table: table, metric: metric)
        return b.finish()
    }

    /// Attributes in iproute2's order: RTA_DST, RTA_PRIORITY, RTA_TABLE (only for tables >= 256;
    /// smaller ones travel in rtm_table), RTA_OIF.
    static func routeAttributes(_ b: inout NetlinkRequestBuilder, _ dst: IPPrefix, oif: Int32?, table: UInt32, metric: UInt32?) {
        if dst.length > 0 { b.attr(RTNL.RTA_DST, dst.address.bytes) }
        if let metric { b.attrU32(RTNL.RTA_PRIORITY, metric) }
        if table >= 256 { b.attrU32(RTNL.RTA_TABLE, table) }
        if let oif { b.attrU32(RTNL.RTA_OIF, UInt32(bitPattern: oif)) }
    }

    /// `ip route show table all` for one family (dump; filtered by the caller)
    public static func routeDump(family: IPFamily, seq: UInt32) -> [UInt8] {
        var b = NetlinkRequestBuilder(type: RTNL.RTM_GETROUTE, flags: NL.NLM_F_REQUEST | NL.NLM_F_DUMP, seq: seq)
        b.header(rtmsg(family: family, dstLen: 0, table: 0, protocolNumber: 0, scope: 0, type: 0))
        return b.finish()
    }
}

/// Decoders for dump replies. Malformed replies yield nil (skipped), never a trap.
public enum RtnetlinkReplies {
    static func u64(_ s: ArraySlice<UInt8>, _ at: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(s[s.startIndex + at + i]) << (8 * UInt64(i)) }
        return v
    }

    public static func link(_ m: NetlinkMessage) -> LinkInfo? {
        let p = m.payload
        guard m.type == RTNL.RTM_NEWLINK, p.count >= 16 else { return nil }
        let s = p.startIndex
        let index = Int32(bitPattern: UInt32(p[s + 4]) | UInt32(p[s + 5]) << 8 | UInt32(p[s + 6]) << 16 | UInt32(p[s + 7]) << 24)
        let flags = UInt32(p[s + 8]) | UInt32(p[s + 9]) << 8 | UInt32(p[s + 10]) << 16 | UInt32(p[s + 11]) << 24
        var info = LinkInfo(index: index, name: "", mtu: 0, flags: flags, kind: nil, rxPackets: 0, txPackets: 0)
        for a in NetlinkAttributes(p.dropFirst(16)) {
            switch a.type {
            case RTNL.IFLA_IFNAME: info.name = a.string
            case RTNL.IFLA_MTU: info.mtu = Int(a.u32 ?? 0)
            case RTNL.IFLA_STATS64 where a.payload.count >= 16:
                info.rxPackets = u64(a.payload, 0); info.txPackets = u64(a.payload, 8)
            case RTNL.IFLA_LINKINFO:
                for n in NetlinkAttributes(a.payload) where n.type == RTNL.IFLA_INFO_KIND { info.kind = n.string }
            default: break
            }
        }
        return info.name.isEmpty ? nil : info
    }

    public static func address(_ m: NetlinkMessage) -> (index: Int32, address: InterfaceAddress, flags: UInt32)? {
        let p = m.payload
        guard m.type == RTNL.RTM_NEWADDR, p.count >= 8 else { return nil }
        let s = p.startIndex
        let fam = p[s], len = Int(p[s + 1])
        let index = Int32(bitPattern: UInt32(p[s + 4]) | UInt32(p[s + 5]) << 8 | UInt32(p[s + 6]) << 16 | UInt32(p[s + 7]) << 24)
        var local: IPAddress?, addr: IPAddress?
        var flags = UInt32(p[s + 2])  // ifa_flags; IFA_FLAGS carries all 32 bits when present
        for a in NetlinkAttributes(p.dropFirst(8)) {
            if a.type == RTNL.IFA_LOCAL { local = ip(fam, a.payload) }
            if a.type == RTNL.IFA_ADDRESS { addr = ip(fam, a.payload) }
            if a.type == RTNL.IFA_FLAGS, let f = a.u32 { flags = f }
        }
        guard let chosen = local ?? addr, len <= (chosen.family == .ipv4 ? 32 : 128) else { return nil }
        return (index, InterfaceAddress(chosen, length: len), flags)
    }

    static func ip(_ fam: UInt8, _ b: ArraySlice<UInt8>) -> IPAddress? {
        if fam == UInt8(AF_INET), b.count == 4 {
            let s = b.startIndex
            return .v4(IPv4Address(b[s], b[s + 1], b[s + 2], b[s + 3]))
        }
        if fam == UInt8(AF_INET6), b.count == 16, let a = IPv6Address(bytes: Array(b)) { return .v6(a) }
        return nil
    }

    public static func route(_ m: NetlinkMessage) -> RouteInfo? {
        let p = m.payload
        guard m.type == RTNL.RTM_NEWROUTE, p.count >= 12 else { return nil }
        let s = p.startIndex
        let fam = p[s], dstLen = Int(p[s + 1])
        var table = UInt32(p[s + 4])
        var dst: IPAddress? = fam == UInt8(AF_INET) ? .v4(IPv4Address(0)) : fam == UInt8(AF_INET6) ? .v6(IPv6Address(high: 0, low: 0)) : nil
        var oif: Int32?, metric: UInt32?
        for a in NetlinkAttributes(p.dropFirst(12)) {
            switch a.type {
            case RTNL.RTA_DST: dst = ip(fam, a.payload)
            case RTNL.RTA_OIF: oif = a.u32.map { Int32(bitPattern: $0) }
            case RTNL.RTA_TABLE: table = a.u32 ?? table
            case RTNL.RTA_PRIORITY: metric = a.u32
            default: break
            }
        }
        guard let d = dst, dstLen <= (d.family == .ipv4 ? 32 : 128) else { return nil }
        return RouteInfo(destination: IPPrefix(network: d, length: dstLen), oif: oif, table: table,
                         protocolNumber: p[s + 5], scope: p[s + 6], type: p[s + 7], metric: metric)
    }
}

/// rtnetlink operations over one NETLINK_ROUTE socket; one method per `ip` verb.
public final class Rtnetlink {
    let sock: NetlinkSocket

    public init() throws { sock = try NetlinkSocket(protocol: NL.NETLINK_ROUTE, sendBuffer: 1 << 20) }

    /// Sends one request and waits for its ack; a refusal becomes a NetlinkError naming `context`.
    func request(_ build: (UInt32) -> [UInt8], context: String) throws {
        let seq = sock.reserveSequence()
        let bytes = build(seq)
        try bytes.withUnsafeBytes { try sock.send($0) }
        if let (_, e) = try sock.collectAcks(expected: [seq]) {
            var err = e
            err.context = context
            throw err
        }
    }

    func dump(_ build: (UInt32) -> [UInt8]) throws -> [NetlinkMessage] {
        var attempt = 0
        while true {
            let seq = sock.reserveSequence()
            let bytes = build(seq)
            do { return try bytes.withUnsafeBytes { try sock.dump($0, seq: seq) } } catch let e as NetlinkError where e.code == .interrupted && attempt < 5 {
                attempt += 1
            }
        }
    }

    /// `ip -s link show`
    public func links() throws -> [LinkInfo] { try dump { RtnetlinkRequests.linkDump(seq: $0) }.compactMap(RtnetlinkReplies.link) }

    public func link(named name: String) throws -> LinkInfo? { try links().first { $0.name == name } }

    /// `ip link set dev X mtu M up`
    public func linkSet(index: Int32, mtu: Int?, up: Bool?) throws {
        try request({ RtnetlinkRequests.linkSet(index: index, mtu: mtu, up: up, seq: $0) }, context: "ip link set dev #\(index)")
    }

    /// `ip link set dev X addrgenmode none`
    public func linkNoAddrGen(index: Int32) throws {
        try request({ RtnetlinkRequests.linkNoAddrGen(index: index, seq: $0) }, context: "ip link set dev #\(index) addrgenmode none")
    }

    /// `ip link del dev X`
    public func linkDelete(index: Int32) throws {
        try request({ RtnetlinkRequests.linkDelete(index: index, seq: $0) }, context: "ip link del dev #\(index)")
    }

    /// `ip addr show` → (interface index, address, IFA_F_* flags)
    public func addresses() throws -> [(index: Int32, address: InterfaceAddress, flags: UInt32)] {
        try dump { RtnetlinkRequests.addressDump(seq: $0) }.compactMap(RtnetlinkReplies.address)
    }

    /// `ip addr replace A dev X`
    public func addressReplace(_ a: InterfaceAddress, index: Int32) throws {
        try request({ RtnetlinkRequests.addressReplace(a, index: index, seq: $0) }, context: "ip addr replace \(a) dev #\(index)")
    }

    /// `ip addr del A dev X`
    public func addressDelete(_ a: InterfaceAddress, index: Int32) throws {
        try request({ RtnetlinkRequests.addressDelete(a, index: index, seq: $0) }, context: "ip addr del \(a) dev #\(index)")
    }

    /// `ip route show table all` (both families)
    public func routes() throws -> [RouteInfo] {
        try [IPFamily.ipv4, .ipv6].flatMap { f in try dump { RtnetlinkRequests.routeDump(family: f, seq: $0) }.compactMap(RtnetlinkReplies.route) }
    }

    /// `ip route replace DST dev X table T proto P [metric M]`
    public func routeReplace(_ dst: IPPrefix, oif: Int32, table: UInt32, protocolNumber: UInt8, metric: UInt32?) throws {
        try request({ RtnetlinkRequests.routeReplace(dst, oif: oif, table: table, protocolNumber: protocolNumber, metric: metric, seq: $0) },
                    context: "ip route replace \(dst) dev #\(oif) table \(table) proto \(protocolNumber)")
    }

    /// `ip route del DST [dev X] table T proto P [metric M]`
    public func routeDelete(_ dst: IPPrefix, oif: Int32?, table: UInt32, protocolNumber: UInt8, metric: UInt32?) throws {
        try request({ RtnetlinkRequests.routeDelete(dst, oif: oif, table: table, protocolNumber: protocolNumber, metric: metric, seq: $0) },
                    context: "ip route del \(dst) table \(table) proto \(protocolNumber)")
    }
}

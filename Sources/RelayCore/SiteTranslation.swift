/// Where relayd translates between IPv4 and IPv6 on the site path, and how each address maps.
///
/// The rule: a packet changes family at the gateway of the site whose IPv6 host takes part, and
/// between gateways it travels as IPv4 between virtual4 addresses. That gateway knows everything
/// needed (its own LAN and explicit mappings; the peers' virtual4, virtual6 and LAN prefixes):
///
/// - Outbound (read from the TUN device): an IPv6 packet to a peer site's `virtual6` (RFC 6052) is
///   translated to IPv4. Its destination is the embedded LAN address, moved into the site's
///   `virtual4` (host bits kept); its source is the sending host's IPv4 name from `site.map`
///   (RFC 7757), in this site's `virtual4`.
/// - Inbound (from a peer, after authentication): an IPv4 packet to one of this site's `virtual4`
///   addresses whose LAN number is an explicit mapping is translated to IPv6: the destination is the
///   mapped IPv6 host, the source the sender's LAN address embedded in its site's `virtual6`.
///
/// IPv6-to-IPv6 traffic to a peer's `virtual6_lan` is never translated (the kernel's IPv6 prefix
/// NAT handles it, like virtual4). All lookups are allocation-free; the maps are built once per
/// configuration.
public struct SiteTranslator: @unchecked Sendable {
    public struct Remote: Sendable {
        public var name: String
        public var lan4: IPPrefix
        public var virtual4: IPPrefix
        public var virtual6: IPPrefix
    }
    public let lan4: IPPrefix?
    public let virtual4: IPPrefix?
    public let virtual6: IPPrefix?
    /// LAN IPv4 name -> IPv6 host, and back.
    let eam4: [IPv4Address: IPv6Address]
    let eam6: [IPv6Address: IPv4Address]
    public let remotes: [Remote]

    public init(_ cfg: RelayConfiguration) {
        lan4 = cfg.site?.lan4; virtual4 = cfg.site?.virtual4; virtual6 = cfg.site?.virtual6
        var a: [IPv4Address: IPv6Address] = [:], b: [IPv6Address: IPv4Address] = [:]
        for m in cfg.site?.map ?? [] { a[m.ipv4] = m.ipv6; b[m.ipv6] = m.ipv4 }
        eam4 = a; eam6 = b
        remotes = cfg.peers.flatMap { p in
            p.sites.compactMap { s in
                guard let l = s.lan4, let v4 = s.virtual4, let v6 = s.virtual6 else { return nil }
                return Remote(name: s.name, lan4: l, virtual4: v4, virtual6: v6)
            }
        }
        let me = self
        map = SIIT.AddressMap(toV6: { me.toV6($0) }, toV4: { me.toV4($0) })
    }

    /// True when there is anything to translate at all.
    public var isActive: Bool { !remotes.isEmpty || !eam4.isEmpty }

    /// The virtual4 names of this site's mapped IPv6 hosts: exactly the IPv4 destinations that
    /// `translatesInbound` accepts (for a lookup table on the packet path).
    public var inboundNames: [IPv4Address] {
        guard let v = virtual4, let lan = lan4 else { return [] }
        return eam4.keys.compactMap { a in
            guard case .v4(let name)? = lan.map(.v4(a), into: v) else { return nil }
            return name
        }
    }

    /// Outbound: is this IPv6 destination another site's RFC 6052 name?
    public func translatesOutbound(_ dst: IPv6Address) -> Bool {
        for r in remotes where r.virtual6.contains(.v6(dst)) { return true }
        return false
    }

    /// Inbound: is this IPv4 destination (in this site's virtual4) an IPv6 host's IPv4 name?
    public func translatesInbound(_ dst: IPv4Address) -> Bool {
        guard !eam4.isEmpty, let v = virtual4, let lan = lan4, case .v4(let l)? = v.map(.v4(dst), into: lan) else { return false }
        return eam4[l] != nil
    }

    /// IPv6 -> IPv4: this site's mapped IPv6 hosts to their virtual4 names; another site's RFC 6052
    /// names to its virtual4 (the embedded address must lie in its LAN).
    public func toV4(_ a: IPv6Address) -> IPv4Address? {
        if let l = eam6[a], let lan = lan4, let v = virtual4, case .v4(let x)? = lan.map(.v4(l), into: v) { return x }
        for r in remotes where r.virtual6.contains(.v6(a)) {
            guard let e = RFC6052.extract(a, from: r.virtual6), case .v4(let x)? = r.lan4.map(.v4(e), into: r.virtual4) else { return nil }
            return x
        }
        return nil
    }

    /// IPv4 -> IPv6: this site's virtual4 names of mapped hosts to the IPv6 hosts; another site's
    /// virtual4 addresses to its RFC 6052 names.
    public func toV6(_ a: IPv4Address) -> IPv6Address? {
        if let v = virtual4, let lan = lan4, case .v4(let l)? = v.map(.v4(a), into: lan) { return eam4[l] }
        for r in remotes where r.virtual4.contains(.v4(a)) {
            guard case .v4(let l)? = r.virtual4.map(.v4(a), into: r.lan4) else { return nil }
            return RFC6052.embed(l, in: r.virtual6)
        }
        return nil
    }

    /// The address functions for `SIIT` (built once: calling them allocates nothing).
    public private(set) var map: SIIT.AddressMap = SIIT.AddressMap(toV6: { _ in nil }, toV4: { _ in nil })
}

/// A host's names: how it is reached from the other sites, in each family (`relayctl map`).
public struct HostNames: Codable, Equatable, Sendable {
    public var site: String
    /// The address asked about, as given.
    public var host: IPAddress
    /// Its LAN IPv4 address (itself, or its RFC 7757 IPv4 name for an IPv6 host), when it has one.
    public var lan4: IPv4Address?
    /// Its real IPv6 address in the LAN, when it is an IPv6 host.
    public var lan6: IPv6Address?
    public var virtual4: IPv4Address?
    /// RFC 6052: its LAN IPv4 address embedded in the site's virtual6.
    public var virtual6: IPv6Address?
    /// Its IPv6 address in the site's virtual6_lan (kernel IPv6 prefix NAT), for IPv6 hosts.
    public var virtual6Lan: IPv6Address?
    public var notes: [String]
    public init(site: String, host: IPAddress) { self.site = site; self.host = host; notes = [] }

    /// The names of `host` (a LAN address, IPv4 or IPv6, or one of the site's virtual addresses).
    /// Explicit mappings are only known for the own site.
    public static func of(_ host: IPAddress, in s: SiteConfig) throws -> HostNames {
        var n = HostNames(site: s.name, host: host)
        switch host {
        case .v4(let a):
            if let lan = s.lan4, lan.contains(host) { n.lan4 = a }
            else if let v = s.virtual4, let lan = s.lan4, case .v4(let l)? = v.map(host, into: lan) { n.lan4 = l }
            else if let v = s.virtual4, v.contains(host) {
                n.virtual4 = a
                n.notes.append("site \(s.name)'s LAN prefix is not configured here: only its virtual4 name is known")
                return n
            } else {
                throw HostNamesError("\(a) is neither in site \(s.name)'s LAN (\(s.lan4.map { "\($0)" } ?? "not configured")) nor in its virtual4 (\(s.virtual4.map { "\($0)" } ?? "not configured"))")
            }
        case .v6(let a):
            if let v = s.virtual6, let e = RFC6052.extract(a, from: v) {
                guard s.lan4?.contains(.v4(e)) ?? true else { throw HostNamesError("\(a) embeds \(e), which is outside site \(s.name)'s LAN \(s.lan4!): it cannot be translated") }
                n.lan4 = e
            } else if let lan6 = s.lan6, lan6.contains(host) {
                n.lan6 = a
            } else if let v = s.virtual6Lan, let lan6 = s.lan6, case .v6(let l)? = v.map(host, into: lan6) {
                n.lan6 = l
            } else if let v = s.virtual6Lan, v.contains(host) {
                n.virtual6Lan = a
                return n
            } else {
                throw HostNamesError("\(a) is in none of site \(s.name)'s IPv6 prefixes (lan6 \(s.lan6.map { "\($0)" } ?? "-"), virtual6 \(s.virtual6.map { "\($0)" } ?? "-"), virtual6_lan \(s.virtual6Lan.map { "\($0)" } ?? "-"))")
            }
            if let l6 = n.lan6 {
                if let m = s.map.first(where: { $0.ipv6 == l6 }) { n.lan4 = m.ipv4 } else { n.notes.append("no IPv4 name: add { ipv4 = ..., ipv6 = \"\(l6)\" } to site.map to reach it from IPv4 hosts") }
                if let v = s.virtual6Lan, let lan6 = s.lan6, case .v6(let x)? = lan6.map(.v6(l6), into: v) { n.virtual6Lan = x }
            }
        }
        if let l = n.lan4 {
            if n.lan6 == nil, let m = s.map.first(where: { $0.ipv4 == l }) {
                n.lan6 = m.ipv6
                if let v = s.virtual6Lan, let lan6 = s.lan6, case .v6(let x)? = lan6.map(.v6(m.ipv6), into: v) { n.virtual6Lan = x }
            }
            if let v = s.virtual4, let lan = s.lan4, case .v4(let x)? = lan.map(.v4(l), into: v) { n.virtual4 = x }
            if let v = s.virtual6 { n.virtual6 = RFC6052.embed(l, in: v) }
        }
        return n
    }
}

public struct HostNamesError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

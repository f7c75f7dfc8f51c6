/// One prefix translated to another of the same size, host bits kept (NETMAP semantics).
public struct PrefixMapping: Codable, Hashable, Sendable, CustomStringConvertible {
    public var match: IPPrefix
    public var translate: IPPrefix
    public init(_ match: IPPrefix, _ translate: IPPrefix) { self.match = match; self.translate = translate }
    public var description: String { "\(match) : \(translate)" }
}

/// One address translated to another (RFC 7757-style explicit mapping).
public struct AddressMapping: Codable, Hashable, Sendable, CustomStringConvertible {
    public var match: IPAddress
    public var translate: IPAddress
    public init(_ match: IPAddress, _ translate: IPAddress) { self.match = match; self.translate = translate }
    public var description: String { "\(match) : \(translate)" }
}

/// The whole desired content of the helper's nftables table: declarative, applied atomically.
///
/// - `dnat`: packets whose destination is in `match` get it rewritten into `translate` (inbound: a
///   site's virtual prefix back to its LAN).
/// - `snat`: packets whose source is in `match` and whose destination is in `remote` get their
///   source rewritten (outbound: the LAN into the site's virtual prefix).
/// - `dnatExact`/`snatExact`: the same for single addresses; checked before the prefix maps.
public struct NATState: Codable, Equatable, Sendable {
    public var dnat: [PrefixMapping]
    public var snat: [PrefixMapping]
    public var dnatExact: [AddressMapping]
    public var snatExact: [AddressMapping]
    public var remote: [IPPrefix]

    public init(dnat: [PrefixMapping] = [], snat: [PrefixMapping] = [], dnatExact: [AddressMapping] = [],
                snatExact: [AddressMapping] = [], remote: [IPPrefix] = []) {
        self.dnat = dnat; self.snat = snat; self.dnatExact = dnatExact; self.snatExact = snatExact; self.remote = remote
    }

    public var elementCount: Int { dnat.count + snat.count + dnatExact.count + snatExact.count + remote.count }

    /// Structural problems (independent of any policy): mixed families, different sizes, overlaps
    /// inside one map. Each says where and what to change.
    public func problems() -> [String] {
        var out: [String] = []
        for (name, maps) in [("dnat", dnat), ("snat", snat)] {
            for (i, m) in maps.enumerated() {
                if m.match.family != m.translate.family {
                    out.append("\(name)[\(i)] \(m): both sides must be the same family (SIIT translation is relayd's job)")
                } else if m.match.length != m.translate.length {
                    out.append("\(name)[\(i)] \(m): prefixes must be the same size to keep host bits (/\(m.match.length) vs /\(m.translate.length))")
                }
            }
            out += NATState.overlaps(maps.map(\.match), name)
        }
        for (name, maps) in [("dnatExact", dnatExact), ("snatExact", snatExact)] {
            var seen = Set<IPAddress>()
            for (i, m) in maps.enumerated() {
                if m.match.family != m.translate.family { out.append("\(name)[\(i)] \(m): both sides must be the same family") }
                if !seen.insert(m.match).inserted { out.append("\(name)[\(i)]: \(m.match) is mapped twice") }
            }
        }
        out += NATState.overlaps(remote, "remote")
        return out
    }

    static func overlaps(_ prefixes: [IPPrefix], _ name: String) -> [String] {
        let sorted = prefixes.enumerated().sorted { $0.element < $1.element }
        var out: [String] = []
        for k in sorted.indices.dropFirst() {
            let (i, a) = sorted[k - 1], (j, b) = sorted[k]
            if a.overlaps(b) { out.append("\(name)[\(i)] \(a) and \(name)[\(j)] \(b) overlap: an address may match only one entry") }
        }
        return out
    }
}

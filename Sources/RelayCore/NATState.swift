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

// MARK: - Wire form
//
// Maps can hold hundreds of thousands of entries, so each list travels as ONE JSON string instead
// of an array of objects (decoding 100k JSON objects cost more than programming the kernel):
//   "dnat": "240.1.1.0/24=192.168.1.0/24,fd00:a::/64=fd00:1::/64"
//   "dnatExact": "240.1.2.7=192.168.1.7"
//   "remote": "240.2.2.0/24,fd00:b::/64"
// An empty list is "". Parsing is strict (host bits, lengths) and names the entry that is wrong.
extension NATState {
    enum CodingKeys: String, CodingKey { case dnat, snat, dnatExact, snatExact, remote }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func list(_ k: CodingKeys) throws -> [Substring.UTF8View] {
            guard let s = try c.decodeIfPresent(String.self, forKey: k), !s.isEmpty else { return [] }
            return s.utf8[...].split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        }
        func fail(_ k: CodingKeys, _ i: Int, _ why: String) -> DecodingError {
            DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath + [k], debugDescription: "entry \(i): \(why)"))
        }
        func pairs(_ k: CodingKeys) throws -> [(Substring.UTF8View, Substring.UTF8View)] {
            try list(k).enumerated().map { i, e in
                guard let eq = e.firstIndex(of: UInt8(ascii: "=")) else { throw fail(k, i, "'\(Substring(e).prefix(80))' is not MATCH=TRANSLATE") }
                return (e[..<eq], e[e.index(after: eq)...])
            }
        }
        func prefix(_ k: CodingKeys, _ i: Int, _ s: Substring.UTF8View) throws -> IPPrefix {
            do { return try IPPrefix(utf8: s) } catch { throw fail(k, i, "\(error)") }
        }
        func address(_ k: CodingKeys, _ i: Int, _ s: Substring.UTF8View) throws -> IPAddress {
            guard let a = IPAddress(utf8: s) else { throw fail(k, i, "'\(Substring(s).prefix(80))' is not an IP address") }
            return a
        }
        dnat = try pairs(.dnat).enumerated().map { i, p in PrefixMapping(try prefix(.dnat, i, p.0), try prefix(.dnat, i, p.1)) }
        snat = try pairs(.snat).enumerated().map { i, p in PrefixMapping(try prefix(.snat, i, p.0), try prefix(.snat, i, p.1)) }
        dnatExact = try pairs(.dnatExact).enumerated().map { i, p in AddressMapping(try address(.dnatExact, i, p.0), try address(.dnatExact, i, p.1)) }
        snatExact = try pairs(.snatExact).enumerated().map { i, p in AddressMapping(try address(.snatExact, i, p.0), try address(.snatExact, i, p.1)) }
        remote = try list(.remote).enumerated().map { i, s in try prefix(.remote, i, s) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        func join<T>(_ xs: [T], _ f: (T, inout String) -> Void) -> String {
            var s = ""
            s.reserveCapacity(xs.count * 32)
            for (i, x) in xs.enumerated() {
                if i > 0 { s.append(",") }
                f(x, &s)
            }
            return s
        }
        try c.encode(join(dnat) { m, s in m.match.write(to: &s); s.append("="); m.translate.write(to: &s) }, forKey: .dnat)
        try c.encode(join(snat) { m, s in m.match.write(to: &s); s.append("="); m.translate.write(to: &s) }, forKey: .snat)
        try c.encode(join(dnatExact) { m, s in s.append(m.match.description); s.append("="); s.append(m.translate.description) }, forKey: .dnatExact)
        try c.encode(join(snatExact) { m, s in s.append(m.match.description); s.append("="); s.append(m.translate.description) }, forKey: .snatExact)
        try c.encode(join(remote) { p, s in p.write(to: &s) }, forKey: .remote)
    }
}

extension IPPrefix {
    /// Appends "address/length" without intermediate strings for IPv4.
    public func write(to s: inout String) {
        if case .v4(let a) = address {
            let v = a.value
            s.append(String(v >> 24)); s.append(".")
            s.append(String(v >> 16 & 0xff)); s.append(".")
            s.append(String(v >> 8 & 0xff)); s.append(".")
            s.append(String(v & 0xff))
        } else {
            s.append(address.description)
        }
        s.append("/")
        s.append(String(length))
    }

    /// Strict parse from UTF-8 (fast path for IPv4; IPv6 goes through the text parser).
    public init(utf8 s: Substring.UTF8View) throws {
        if let slash = s.firstIndex(of: UInt8(ascii: "/")), let a = IPv4Address.parse(s[..<slash]) {
            var len = 0, digits = 0
            for b in s[s.index(after: slash)...] {
                guard b >= 48 && b <= 57, digits < 3 else { throw PrefixError.notAPrefix(String(Substring(s))) }
                len = len * 10 + Int(b - 48); digits += 1
            }
            guard digits > 0 else { throw PrefixError.notAPrefix(String(Substring(s))) }
            guard len <= 32 else { throw PrefixError.lengthOutOfRange(String(Substring(s)), max: 32) }
            let masked = IPPrefix(network: .v4(a), length: len)
            guard masked.address == .v4(a) else { throw PrefixError.hostBitsSet(String(Substring(s)), canonical: "\(masked)") }
            self = masked
            return
        }
        try self.init(parsing: String(Substring(s)))
    }
}

extension IPv4Address {
    /// Dotted quad from UTF-8 bytes, strict (no leading zeros, four parts); nil otherwise.
    public static func parse(_ s: Substring.UTF8View) -> IPv4Address? {
        var value: UInt32 = 0, part: UInt32 = 0, digits = 0, parts = 0, leadingZero = false
        for b in s {
            if b == UInt8(ascii: ".") {
                guard digits > 0, parts < 3 else { return nil }
                value = value << 8 | part; part = 0; digits = 0; parts += 1; leadingZero = false
            } else if b >= 48 && b <= 57 {
                if digits == 1 && leadingZero { return nil }
                if digits == 0 && b == 48 { leadingZero = true }
                part = part * 10 + UInt32(b - 48); digits += 1
                guard part <= 255 else { return nil }
            } else { return nil }
        }
        guard digits > 0, parts == 3 else { return nil }
        return IPv4Address(value << 8 | part)
    }
}

extension IPAddress {
    public init?(utf8 s: Substring.UTF8View) {
        if let a = IPv4Address.parse(s) { self = .v4(a); return }
        guard let a = IPv6Address(String(Substring(s))) else { return nil }
        self = .v6(a)
    }
}

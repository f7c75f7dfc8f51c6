/// Why a text is not a usable prefix; the message says what to write instead.
public enum PrefixError: Error, Equatable, Sendable, CustomStringConvertible {
    case notAPrefix(String)
    case lengthOutOfRange(String, max: Int)
    case hostBitsSet(String, canonical: String)

    public var description: String {
        switch self {
        case .notAPrefix(let s): return "'\(s)' is not a prefix: write ADDRESS/LENGTH, e.g. 192.168.1.0/24 or 64:ff9b:1::/96"
        case .lengthOutOfRange(let s, let max): return "'\(s)': prefix length must be 0...\(max)"
        case .hostBitsSet(let s, let c): return "'\(s)' has host bits set: did you mean \(c)?"
        }
    }
}

/// A network prefix with its host bits zero.
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible, Codable, Comparable {
    public let address: IPAddress
    public let length: Int

    public var family: IPFamily { address.family }
    public var maxLength: Int { family == .ipv4 ? 32 : 128 }
    public var hostBits: Int { maxLength - length }

    /// Strict: refuses host bits (so that typos such as 192.168.1.1/24 are caught).
    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let addr = IPAddress(String(parts[0])),
              !parts[1].isEmpty, parts[1].utf8.count <= 3, let len = Int(parts[1]), parts[1].allSatisfy(\.isNumber)
        else { throw PrefixError.notAPrefix(text) }
        let max = addr.family == .ipv4 ? 32 : 128
        guard (0...max).contains(len) else { throw PrefixError.lengthOutOfRange(text, max: max) }
        let masked = IPPrefix.mask(addr, len)
        guard masked == addr else { throw PrefixError.hostBitsSet(text, canonical: "\(masked)/\(len)") }
        address = addr
        length = len
    }

    /// Masks host bits away.
    public init(network address: IPAddress, length: Int) {
        precondition(length >= 0 && length <= (address.family == .ipv4 ? 32 : 128))
        self.address = IPPrefix.mask(address, length)
        self.length = length
    }

    public init?(_ text: String) { try? self.init(parsing: text) }

    static func mask(_ a: IPAddress, _ len: Int) -> IPAddress {
        switch a {
        case .v4(let v):
            let m: UInt32 = len == 0 ? 0 : ~UInt32(0) << UInt32(32 - len)
            return .v4(IPv4Address(v.value & m))
        case .v6(let v):
            let (mh, ml) = mask128(len)
            return .v6(IPv6Address(high: v.high & mh, low: v.low & ml))
        }
    }

    static func mask128(_ len: Int) -> (UInt64, UInt64) {
        let mh: UInt64 = len >= 64 ? ~0 : (len == 0 ? 0 : ~UInt64(0) << UInt64(64 - len))
        let ml: UInt64 = len <= 64 ? 0 : (len >= 128 ? ~0 : ~UInt64(0) << UInt64(128 - len))
        return (mh, ml)
    }

    public func contains(_ other: IPAddress) -> Bool {
        guard other.family == family else { return false }
        return IPPrefix.mask(other, length) == address
    }

    /// True when the two prefixes share at least one address.
    public func overlaps(_ other: IPPrefix) -> Bool {
        guard other.family == family else { return false }
        let shorter = min(length, other.length)
        return IPPrefix.mask(address, shorter) == IPPrefix.mask(other.address, shorter)
    }

    /// The last address of the prefix (all host bits one).
    public var lastAddress: IPAddress {
        switch address {
        case .v4(let v):
            let hostMask: UInt32 = length == 0 ? ~0 : (length == 32 ? 0 : ~(~UInt32(0) << UInt32(32 - length)))
            return .v4(IPv4Address(v.value | hostMask))
        case .v6(let v):
            let (mh, ml) = IPPrefix.mask128(length)
            return .v6(IPv6Address(high: v.high | ~mh, low: v.low | ~ml))
        }
    }

    /// The address one past the end, or nil when the prefix ends at the top of the address space.
    /// (nftables interval sets store [start, end) pairs.)
    public var endExclusive: IPAddress? {
        switch lastAddress {
        case .v4(let v): return v.value == .max ? nil : .v4(IPv4Address(v.value + 1))
        case .v6(let v):
            if v.high == .max && v.low == .max { return nil }
            let (low, carry) = v.low.addingReportingOverflow(1)
            return .v6(IPv6Address(high: carry ? v.high + 1 : v.high, low: low))
        }
    }

    /// NETMAP: keeps the host bits of `address` (inside self) and puts them into `target` (same size).
    public func map(_ host: IPAddress, into target: IPPrefix) -> IPAddress? {
        guard contains(host), target.family == family, target.length == length else { return nil }
        switch (host, target.address) {
        case (.v4(let h), .v4(let t)):
            let hostMask: UInt32 = length == 0 ? ~0 : (length == 32 ? 0 : ~(~UInt32(0) << UInt32(32 - length)))
            return .v4(IPv4Address(t.value | (h.value & hostMask)))
        case (.v6(let h), .v6(let t)):
            let (mh, ml) = IPPrefix.mask128(length)
            return .v6(IPv6Address(high: t.high | (h.high & ~mh), low: t.low | (h.low & ~ml)))
        default: return nil
        }
    }

    /// The prefix covering exactly [start, endExclusive) (endExclusive nil = to the top of the
    /// address space), or nil when that range is not a prefix. Inverse of `endExclusive`.
    public init?(start: IPAddress, endExclusive: IPAddress?) {
        let maxLen = start.family == .ipv4 ? 32 : 128
        if let e = endExclusive, e.family != start.family { return nil }
        for len in stride(from: maxLen, through: 0, by: -1) {
            let p = IPPrefix(network: start, length: len)
            guard p.address == start else { return nil }  // start has bits set below this length
            if p.endExclusive == endExclusive { self = p; return }
        }
        return nil
    }

    public var description: String { "\(address)/\(length)" }
    public static func < (l: Self, r: Self) -> Bool { (l.address, l.length) < (r.address, r.length) }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(parsing: s) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "\(error)"))
        }
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

// Addresses and prefixes, parsed and printed in pure Swift (no inet_pton: this module imports no C).

/// An IPv4 address, host byte order in `value`.
public struct IPv4Address: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    public var value: UInt32
    public init(_ value: UInt32) { self.value = value }
    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Dotted quad, exactly four decimal octets 0–255 without leading zeros (as `ip` prints them).
    public init?(_ text: Substring) {
        guard let a = IPv4Address.parse(text.utf8) else { return nil }
        self = a
    }
    public init?(_ text: String) { self.init(Substring(text)) }

    public var bytes: [UInt8] { [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)] }
    public var description: String { "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)" }
    public static func < (l: Self, r: Self) -> Bool { l.value < r.value }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let a = IPv4Address(s) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an IPv4 address: \(s)"))
        }
        self = a
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// An IPv6 address as two 64-bit halves (network order of bits: `high` holds bits 0–63).
public struct IPv6Address: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    public var high: UInt64
    public var low: UInt64
    public init(high: UInt64, low: UInt64) { self.high = high; self.low = low }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        var h: UInt64 = 0, l: UInt64 = 0
        for i in 0..<8 { h = h << 8 | UInt64(bytes[i]) }
        for i in 8..<16 { l = l << 8 | UInt64(bytes[i]) }
        high = h; low = l
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: 16)
        for i in 0..<8 { out[i] = UInt8(truncatingIfNeeded: high >> UInt64(56 - 8 * i)) }
        for i in 0..<8 { out[8 + i] = UInt8(truncatingIfNeeded: low >> UInt64(56 - 8 * i)) }
        return out
    }

    /// The eight 16-bit groups.
    public var groups: [UInt16] {
        (0..<8).map { i in
            let half = i < 4 ? high : low
            return UInt16(truncatingIfNeeded: half >> UInt64(48 - 16 * (i % 4)))
        }
    }

    public init?(groups: [UInt16]) {
        guard groups.count == 8 else { return nil }
        var h: UInt64 = 0, l: UInt64 = 0
        for i in 0..<4 { h = h << 16 | UInt64(groups[i]) }
        for i in 4..<8 { l = l << 16 | UInt64(groups[i]) }
        high = h; low = l
    }

    /// RFC 4291 text forms, including `::` and a trailing dotted quad. No zone ids.
    public init?(_ text: Substring) {
        guard !text.isEmpty, text.utf8.count <= 45 else { return nil }
        var head: [UInt16] = []
        var tail: [UInt16] = []
        var sawDoubleColon = false
        let s = Array(text.utf8)
        var i = 0
        if s.starts(with: [UInt8(ascii: ":"), UInt8(ascii: ":")]) {
            sawDoubleColon = true
            i = 2
            if i == s.count { self.init(high: 0, low: 0); return }
        } else if s.first == UInt8(ascii: ":") {
            return nil
        }
        while i < s.count {
            // Parse one group or a trailing IPv4.
            var j = i
            while j < s.count && s[j] != UInt8(ascii: ":") { j += 1 }
            let token = s[i..<j]
            guard !token.isEmpty else { return nil }
            if token.contains(UInt8(ascii: ".")) {
                guard j == s.count, let v4 = IPv4Address(Substring(decoding: token, as: UTF8.self)) else { return nil }
                let pair = [UInt16(v4.value >> 16), UInt16(v4.value & 0xffff)]
                if sawDoubleColon { tail += pair } else { head += pair }
                i = j
                break
            }
            guard token.count <= 4 else { return nil }
            var g: UInt16 = 0
            for c in token {
                guard let d = hexValue(c) else { return nil }
                g = g << 4 | UInt16(d)
            }
            if sawDoubleColon { tail.append(g) } else { head.append(g) }
            if j == s.count { i = j; break }
            // j points at ':'
            if j + 1 < s.count && s[j + 1] == UInt8(ascii: ":") {
                guard !sawDoubleColon else { return nil }
                sawDoubleColon = true
                i = j + 2
                if i == s.count { break }
            } else {
                i = j + 1
                guard i < s.count else { return nil } // trailing single colon
            }
        }
        let total = head.count + tail.count
        if sawDoubleColon {
            guard total <= 7 else { return nil }
            self.init(groups: head + [UInt16](repeating: 0, count: 8 - total) + tail)
        } else {
            guard total == 8 else { return nil }
            self.init(groups: head)
        }
    }
    public init?(_ text: String) { self.init(Substring(text)) }

    /// RFC 5952 canonical text: lower case, longest run (≥2) of zero groups as `::`, first on ties.
    public var description: String {
        let g = groups
        var bestStart = -1, bestLen = 0, runStart = -1
        for i in 0...8 {
            if i < 8 && g[i] == 0 {
                if runStart < 0 { runStart = i }
            } else if runStart >= 0 {
                let len = i - runStart
                if len > bestLen && len >= 2 { bestStart = runStart; bestLen = len }
                runStart = -1
            }
        }
        func hex(_ v: UInt16) -> String { String(v, radix: 16) }
        if bestStart < 0 { return g.map(hex).joined(separator: ":") }
        let left = g[..<bestStart].map(hex).joined(separator: ":")
        let right = g[(bestStart + bestLen)...].map(hex).joined(separator: ":")
        return left + "::" + right
    }

    public static func < (l: Self, r: Self) -> Bool { (l.high, l.low) < (r.high, r.low) }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let a = IPv6Address(s) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an IPv6 address: \(s)"))
        }
        self = a
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

@inline(__always) private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
    default: return nil
    }
}

public enum IPFamily: String, Sendable, Codable, Hashable {
    case ipv4, ipv6
}

/// Either family.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible, Codable, Comparable {
    case v4(IPv4Address)
    case v6(IPv6Address)

    public init?(_ text: String) {
        if let a = IPv4Address(text) { self = .v4(a) } else if let a = IPv6Address(text) { self = .v6(a) } else { return nil }
    }
    public var family: IPFamily { if case .v4 = self { return .ipv4 }; return .ipv6 }
    public var bytes: [UInt8] { switch self { case .v4(let a): return a.bytes; case .v6(let a): return a.bytes } }
    public var description: String { switch self { case .v4(let a): return a.description; case .v6(let a): return a.description } }
    public static func < (l: Self, r: Self) -> Bool {
        switch (l, r) {
        case (.v4(let a), .v4(let b)): return a < b
        case (.v6(let a), .v6(let b)): return a < b
        case (.v4, .v6): return true
        case (.v6, .v4): return false
        }
    }
    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let a = IPAddress(s) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an IP address: \(s)"))
        }
        self = a
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// The Internet checksum (RFC 1071): 0 over data that already includes a correct checksum.
public func internetChecksum(_ b: ArraySlice<UInt8>) -> UInt16 {
    var sum: UInt32 = 0
    var i = b.startIndex
    while i + 1 < b.endIndex { sum += UInt32(b[i]) << 8 | UInt32(b[i + 1]); i += 2 }
    if i < b.endIndex { sum += UInt32(b[i]) << 8 }
    while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
    return ~UInt16(sum)
}

import Foundation

/// STUN (RFC 8489) messages: just what a Binding reflector and client need, parsed strictly.
public enum STUN {
    public static let magicCookie: UInt32 = 0x2112_A442
    public static let bindingRequest: UInt16 = 0x0001
    public static let bindingSuccess: UInt16 = 0x0101
    public static let bindingError: UInt16 = 0x0111

    public enum Attr {
        public static let mappedAddress: UInt16 = 0x0001
        public static let changeRequest: UInt16 = 0x0003
        /// RFC 3489's names for RESPONSE-ORIGIN and OTHER-ADDRESS.
        public static let sourceAddress: UInt16 = 0x0004
        public static let changedAddress: UInt16 = 0x0005
        public static let errorCode: UInt16 = 0x0009
        public static let unknownAttributes: UInt16 = 0x000A
        public static let xorMappedAddress: UInt16 = 0x0020
        public static let padding: UInt16 = 0x0026
        public static let responsePort: UInt16 = 0x0027
        public static let software: UInt16 = 0x8022
        public static let fingerprint: UInt16 = 0x8028
        public static let responseOrigin: UInt16 = 0x802B
        public static let otherAddress: UInt16 = 0x802C
        /// Comprehension-required attributes this implementation understands.
        public static let understood: Set<UInt16> = [mappedAddress, xorMappedAddress, errorCode, unknownAttributes, changeRequest]
    }

    public struct Message: Equatable, Sendable {
        public var type: UInt16
        /// 12 bytes (RFC 5389+); for an RFC 3489 message, the whole 16-byte id with no cookie.
        public var transactionID: [UInt8]
        public var classic: Bool
        public var attributes: [(type: UInt16, value: [UInt8])]
        public var hasFingerprint: Bool

        public static func == (l: Message, r: Message) -> Bool {
            l.type == r.type && l.transactionID == r.transactionID && l.classic == r.classic && l.hasFingerprint == r.hasFingerprint
                && l.attributes.map(\.type) == r.attributes.map(\.type) && l.attributes.map(\.value) == r.attributes.map(\.value)
        }

        public func attribute(_ t: UInt16) -> [UInt8]? { attributes.first { $0.type == t }?.value }
    }

    public enum ParseError: Error, Equatable { case tooShort, notSTUN, badLength, badAttribute, badFingerprint }

    /// True when the first bytes look like STUN (two top bits zero, and the magic cookie): lets the
    /// tunnel port tell STUN from Relay's own messages (whose first byte has its top bits set).
    public static func looksLikeSTUN(_ b: ArraySlice<UInt8>) -> Bool {
        guard b.count >= 20 else { return false }
        let s = b.startIndex
        return b[s] & 0xC0 == 0 && be32(b, 4) == magicCookie
    }

    static func be16(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt16 { UInt16(b[b.startIndex + at]) << 8 | UInt16(b[b.startIndex + at + 1]) }
    static func be32(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt32 { UInt32(be16(b, at)) << 16 | UInt32(be16(b, at + 2)) }

    /// Parses one message. A FINGERPRINT, when present, must be last and correct.
    public static func parse(_ b: ArraySlice<UInt8>, allowClassic: Bool = true) throws -> Message {
        guard b.count >= 20 else { throw ParseError.tooShort }
        let s = b.startIndex
        guard b[s] & 0xC0 == 0 else { throw ParseError.notSTUN }
        let type = be16(b, 0), len = Int(be16(b, 2))
        guard len % 4 == 0, b.count == 20 + len else { throw ParseError.badLength }
        let classic = be32(b, 4) != magicCookie
        if classic && !allowClassic { throw ParseError.notSTUN }
        var m = Message(type: type, transactionID: Array(b[(s + (classic ? 4 : 8))..<(s + 20)]), classic: classic, attributes: [], hasFingerprint: false)
        var off = 20
        while off < b.count {
            guard off + 4 <= b.count else { throw ParseError.badAttribute }
            let t = be16(b, off), l = Int(be16(b, off + 2))
            let padded = (l + 3) & ~3
            guard off + 4 + padded <= b.count else { throw ParseError.badAttribute }
            let value = Array(b[(s + off + 4)..<(s + off + 4 + l)])
            if m.hasFingerprint { throw ParseError.badAttribute }  // nothing may follow FINGERPRINT
            if t == Attr.fingerprint {
                guard l == 4 else { throw ParseError.badAttribute }
                let want = crc32(b[s..<(s + off)]) ^ 0x5354_554e
                guard be32(value[...], 0) == want else { throw ParseError.badFingerprint }
                m.hasFingerprint = true
            } else {
                m.attributes.append((t, value))
            }
            off += 4 + padded
        }
        return m
    }

    /// Encodes a message; `fingerprint` appends FINGERPRINT (not for classic messages).
    public static func encode(type: UInt16, transactionID: [UInt8], classic: Bool = false, attributes: [(UInt16, [UInt8])], fingerprint: Bool = true) -> [UInt8] {
        var body: [UInt8] = []
        for (t, v) in attributes {
            body += [UInt8(t >> 8), UInt8(t & 0xff), UInt8(v.count >> 8), UInt8(v.count & 0xff)] + v
            while body.count % 4 != 0 { body.append(0) }
        }
        func header(_ len: Int) -> [UInt8] {
            var h: [UInt8] = [UInt8(type >> 8), UInt8(type & 0xff), UInt8(len >> 8), UInt8(len & 0xff)]
            if !classic { h += [0x21, 0x12, 0xA4, 0x42] }
            return h + transactionID
        }
        guard fingerprint && !classic else { return header(body.count) + body }
        let withFP = header(body.count + 8) + body
        let crc = crc32(withFP[...]) ^ 0x5354_554e
        return withFP + [0x80, 0x28, 0, 4, UInt8(crc >> 24), UInt8(crc >> 16 & 0xff), UInt8(crc >> 8 & 0xff), UInt8(crc & 0xff)]
    }

    /// (X)OR-MAPPED-ADDRESS value for an endpoint.
    public static func addressValue(_ e: Endpoint, xor: Bool, transactionID: [UInt8]) -> [UInt8] {
        let cookie: [UInt8] = [0x21, 0x12, 0xA4, 0x42]
        let port = xor ? e.port ^ 0x2112 : e.port
        var addr = e.address.bytes
        if xor {
            let mask = cookie + transactionID
            for i in addr.indices { addr[i] ^= mask[i] }
        }
        return [0, e.address.family == .ipv4 ? 1 : 2, UInt8(port >> 8), UInt8(port & 0xff)] + addr
    }

    /// Decodes a (XOR-)MAPPED-ADDRESS value.
    public static func decodeAddress(_ v: [UInt8], xor: Bool, transactionID: [UInt8]) -> Endpoint? {
        guard v.count >= 8 else { return nil }
        var port = UInt16(v[2]) << 8 | UInt16(v[3])
        var addr = Array(v[4...])
        if xor {
            port ^= 0x2112
            let mask: [UInt8] = [0x21, 0x12, 0xA4, 0x42] + transactionID
            for i in addr.indices where i < mask.count { addr[i] ^= mask[i] }
        }
        switch (v[1], addr.count) {
        case (1, 4): return Endpoint(.v4(IPv4Address(addr[0], addr[1], addr[2], addr[3])), port: port)
        case (2, 16): return IPv6Address(bytes: addr).map { Endpoint(.v6($0), port: port) }
        default: return nil
        }
    }

    /// A CHANGE-REQUEST value (RFC 5780 section 7.2).
    public static func changeRequestValue(address: Bool, port: Bool) -> [UInt8] {
        [0, 0, 0, (address ? 0x04 : 0) | (port ? 0x02 : 0)]
    }

    public static func errorValue(_ code: Int, _ reason: String) -> [UInt8] {
        [0, 0, UInt8(code / 100), UInt8(code % 100)] + Array(reason.utf8)
    }

    static let crcTable: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// CRC-32 (ISO 3309 / ITU-T V.42, as FINGERPRINT uses).
    public static func crc32(_ b: ArraySlice<UInt8>) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for x in b { c = crcTable[Int((c ^ UInt32(x)) & 0xff)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}

/// The reflector's decision for one datagram (pure: the service does the I/O).
public enum ReflectorAnswer: Equatable {
    case respond([UInt8])
    case drop(reason: String)
}

/// Where a reflector with RFC 5780 behaviour discovery sends an answer: from which of its four
/// sockets (the receiving one, with the address and/or port changed as CHANGE-REQUEST asked) and to
/// which port (RESPONSE-PORT, else the source's).
public struct ReflectorRoute: Equatable, Sendable {
    public var changeAddress = false
    public var changePort = false
    public var responsePort: UInt16?
    public init(changeAddress: Bool = false, changePort: Bool = false, responsePort: UInt16? = nil) {
        self.changeAddress = changeAddress; self.changePort = changePort; self.responsePort = responsePort
    }
}

public enum Reflector {
    public static let software = "Relay reflector"

    /// An RFC 5780 reflector's view of one receiving socket: the transport address it is bound to
    /// (RESPONSE-ORIGIN is derived from it) and the alternate address and port (OTHER-ADDRESS).
    public struct Discovery: Equatable, Sendable {
        public var primary: Endpoint
        public var other: Endpoint
        public init(primary: Endpoint, other: Endpoint) { self.primary = primary; self.other = other }

        /// The four sockets, in the order `socket(changeAddress:changePort:)` indexes them.
        public var sockets: [Endpoint] {
            [primary, Endpoint(primary.address, port: other.port), Endpoint(other.address, port: primary.port), other]
        }
        /// The socket that answers a request received on socket `i` with these changes.
        public static func socket(_ i: Int, _ r: ReflectorRoute) -> Int { i ^ (r.changeAddress ? 2 : 0) ^ (r.changePort ? 1 : 0) }
        /// OTHER-ADDRESS for a request received on socket `i`: both address and port differ from it.
        public func otherAddress(receivedOn i: Int) -> Endpoint { sockets[i ^ 3] }
    }

    /// Answers a Binding request from `source` (its transport address as this server sees it).
    /// Unknown comprehension-required attributes get 420; anything that is not a well-formed Binding
    /// request is dropped (the caller counts it).
    public static func answer(_ datagram: ArraySlice<UInt8>, from source: Endpoint, software: String = Reflector.software) -> ReflectorAnswer {
        answer(datagram, from: source, software: software, discovery: nil, receivedOn: 0).0
    }

    /// The same for a reflector that may have RFC 5780 behaviour discovery (`discovery` non-nil,
    /// the request having arrived on socket `receivedOn` of `discovery.sockets`).
    public static func answer(_ datagram: ArraySlice<UInt8>, from source: Endpoint, software: String = Reflector.software,
                              discovery: Discovery?, receivedOn: Int) -> (ReflectorAnswer, ReflectorRoute) {
        let m: STUN.Message
        do { m = try STUN.parse(datagram) } catch { return (.drop(reason: "malformed"), ReflectorRoute()) }
        guard m.type == STUN.bindingRequest else { return (.drop(reason: "not a binding request"), ReflectorRoute()) }
        var unknown = m.attributes.map(\.type).filter { $0 < 0x8000 && !STUN.Attr.understood.contains($0) && $0 != STUN.Attr.responsePort }
        var route = ReflectorRoute()
        if let c = m.attribute(STUN.Attr.changeRequest) {
            guard c.count == 4 else { return (.drop(reason: "malformed CHANGE-REQUEST"), route) }
            route.changeAddress = c[3] & 0x04 != 0
            route.changePort = c[3] & 0x02 != 0
            // A reflector without a second address cannot change anything: RFC 5780 section 7.2
            // says to answer 420 rather than pretend. (Flags zero, as RFC 3489 clients send in
            // their first test, is just a request.)
            if discovery == nil && (route.changeAddress || route.changePort) { unknown.append(STUN.Attr.changeRequest) }
        }
        if let p = m.attribute(STUN.Attr.responsePort) {
            // RFC 5780 section 7.5: answer to the source address at this port (never another host).
            guard p.count == 4, !m.classic else { return (.drop(reason: "malformed RESPONSE-PORT"), route) }
            route.responsePort = UInt16(p[0]) << 8 | UInt16(p[1])
            if route.responsePort == 0 { return (.drop(reason: "RESPONSE-PORT 0"), route) }
        }
        if !unknown.isEmpty {
            var list: [UInt8] = []
            for t in unknown { list += [UInt8(t >> 8), UInt8(t & 0xff)] }
            return (.respond(STUN.encode(type: STUN.bindingError, transactionID: m.transactionID, classic: m.classic, attributes: [
                (STUN.Attr.errorCode, STUN.errorValue(420, "Unknown Attribute")),
                (STUN.Attr.unknownAttributes, list),
                (STUN.Attr.software, Array(software.utf8)),
            ], fingerprint: !m.classic)), ReflectorRoute(responsePort: route.responsePort))
        }
        if m.classic {
            // RFC 3489 clients: MAPPED-ADDRESS (and, with a second address, CHANGED-ADDRESS and
            // SOURCE-ADDRESS), their 16-byte id echoed, no FINGERPRINT.
            guard source.address.family == .ipv4 else { return (.drop(reason: "classic request over IPv6"), route) }
            var attrs: [(UInt16, [UInt8])] = [(STUN.Attr.mappedAddress, STUN.addressValue(source, xor: false, transactionID: []))]
            if let d = discovery {
                attrs.append((STUN.Attr.sourceAddress, STUN.addressValue(d.sockets[Discovery.socket(receivedOn, route)], xor: false, transactionID: [])))
                attrs.append((STUN.Attr.changedAddress, STUN.addressValue(d.otherAddress(receivedOn: receivedOn), xor: false, transactionID: [])))
            }
            return (.respond(STUN.encode(type: STUN.bindingSuccess, transactionID: m.transactionID, classic: true, attributes: attrs, fingerprint: false)), route)
        }
        var attrs: [(UInt16, [UInt8])] = [
            (STUN.Attr.xorMappedAddress, STUN.addressValue(source, xor: true, transactionID: m.transactionID)),
            (STUN.Attr.mappedAddress, STUN.addressValue(source, xor: false, transactionID: m.transactionID)),
        ]
        if let d = discovery {
            // RFC 5780 section 7.3: where the answer comes from, and the other address and port.
            attrs.append((STUN.Attr.responseOrigin, STUN.addressValue(d.sockets[Discovery.socket(receivedOn, route)], xor: false, transactionID: [])))
            attrs.append((STUN.Attr.otherAddress, STUN.addressValue(d.otherAddress(receivedOn: receivedOn), xor: false, transactionID: [])))
        }
        attrs.append((STUN.Attr.software, Array(software.utf8)))
        return (.respond(STUN.encode(type: STUN.bindingSuccess, transactionID: m.transactionID, attributes: attrs)), route)
    }
}

/// Token bucket per source address with bounded state: at most `capacity` sources tracked. When
/// full, sources idle long enough to have a full bucket again are forgotten (that changes nothing
/// for them); if none are, an arbitrary one is. Each decision is one hash lookup; a flood of new
/// sources costs at most one sweep per second.
public struct RateLimiter {
    public let rate: Double, burst: Double, capacity: Int
    private var buckets: [IPAddress: Bucket] = [:]
    private var lastSweep = -Double.infinity
    struct Bucket { var tokens: Double; var last: Double }
    public init(rate: Double = 20, burst: Double = 40, capacity: Int = 4096) {
        self.rate = rate; self.burst = burst; self.capacity = capacity
        buckets.reserveCapacity(capacity + 1)
    }

    public mutating func allow(_ a: IPAddress, now: Double) -> Bool {
        if let i = buckets.index(forKey: a) {
            var ok = false
            buckets.values.withUnsafeMutableBufferPointerIfPossible(i) { b in
                b.tokens = min(burst, b.tokens + (now - b.last) * rate)
                b.last = now
                if b.tokens >= 1 { b.tokens -= 1; ok = true }
            }
            return ok
        }
        if buckets.count >= capacity { evict(now: now) }
        buckets[a] = Bucket(tokens: burst - 1, last: now)
        return true
    }

    mutating func evict(now: Double) {
        if now - lastSweep >= 1 {
            lastSweep = now
            let full = burst / rate
            buckets = buckets.filter { now - $0.value.last < full }
        }
        if buckets.count >= capacity, let k = buckets.first?.key { buckets[k] = nil }
    }
    public var tracked: Int { buckets.count }
}

extension Dictionary.Values {
    /// Mutates one value in place (no rehash, no copy).
    mutating func withUnsafeMutableBufferPointerIfPossible(_ i: Dictionary.Index, _ body: (inout Value) -> Void) { body(&self[i]) }
}

/// Majority vote over reflectors' observations of this node's public address (per family).
public struct ReflectionVote: Codable, Equatable, Sendable {
    public struct Observation: Codable, Equatable, Sendable {
        public var observer: String
        public var mapped: Endpoint
        public var at: Date
        public init(observer: String, mapped: Endpoint, at: Date) { self.observer = observer; self.mapped = mapped; self.at = at }
    }
    public enum Mapping: String, Codable, Sendable { case endpointIndependent = "endpoint-independent", endpointDependent = "endpoint-dependent", unknown }

    /// The address a quorum of distinct observers agree on, or nil.
    public var address: String?
    public var votes: Int
    public var observers: Int
    public var quorum: Int
    public var mapping: Mapping
    public var explanation: String

    /// One vote per observer (its latest observation): a chatty observer cannot outvote others.
    /// Quorum: a strict majority of the distinct observers, and at least 2.
    public static func decide(_ obs: [Observation]) -> ReflectionVote {
        var latest: [String: Observation] = [:]
        for o in obs where latest[o.observer].map({ $0.at < o.at }) ?? true { latest[o.observer] = o }
        let n = latest.count
        let quorum = max(2, n / 2 + 1)
        var counts: [String: Int] = [:]
        for o in latest.values { counts[o.mapped.description, default: 0] += 1 }
        let best = counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }
        let addresses = Set(latest.values.map { $0.mapped.address })
        let ports = Set(latest.values.map { $0.mapped.port })
        // RFC 4787 terms from one local socket: the same mapped port towards every observer means
        // endpoint-independent mapping (a multi-homed NAT may show other addresses on other sides);
        // a different port per observer means endpoint-dependent mapping.
        _ = addresses
        let mapping: Mapping = n < 2 ? .unknown : (ports.count == 1 ? .endpointIndependent : (ports.count == n ? .endpointDependent : .unknown))
        if let best, best.value >= quorum {
            return ReflectionVote(address: best.key, votes: best.value, observers: n, quorum: quorum, mapping: mapping,
                                  explanation: "\(best.value) of \(n) observers agree")
        }
        let why = n < 2 ? "only \(n) observer: evidence, not truth (need \(quorum) agreeing)"
                        : "no quorum: \(counts.count) different answers from \(n) observers (need \(quorum) agreeing)"
        return ReflectionVote(address: nil, votes: best?.value ?? 0, observers: n, quorum: quorum, mapping: mapping, explanation: why)
    }
}

extension Reflector {
    /// The common case without allocations: an RFC 8489 Binding request with no attributes, or
    /// only a valid FINGERPRINT. Writes the success response into `out` (at least 128 bytes) and
    /// returns its length; nil means "take the general path" (which handles everything else).
    public static func answerFast(_ req: UnsafeRawBufferPointer, from source: Endpoint, into out: UnsafeMutableRawBufferPointer) -> Int? {
        guard req.count == 20 || req.count == 28, out.count >= 128,
              req[0] == 0x00, req[1] == 0x01, req[2] == 0x00, Int(req[3]) == req.count - 20,
              req[4] == 0x21, req[5] == 0x12, req[6] == 0xA4, req[7] == 0x42 else { return nil }
        if req.count == 28 {
            guard req[20] == 0x80, req[21] == 0x28, req[22] == 0, req[23] == 4 else { return nil }
            let want = STUN.crc32(UnsafeRawBufferPointer(rebasing: req[0..<20])) ^ 0x5354_554e
            let have = UInt32(req[24]) << 24 | UInt32(req[25]) << 16 | UInt32(req[26]) << 8 | UInt32(req[27])
            guard want == have else { return nil }
        }
        var n = 20
        func put(_ b: UInt8) { out[n] = b; n += 1 }
        func put16(_ v: UInt16) { put(UInt8(v >> 8)); put(UInt8(v & 0xff)) }
        let v4: Bool, addr: (UInt64, UInt64)
        switch source.address {
        case .v4(let a): v4 = true; addr = (UInt64(a.value), 0)
        case .v6(let a): v4 = false; addr = (a.high, a.low)
        }
        func address(xor: Bool) {
            put16(xor ? STUN.Attr.xorMappedAddress : STUN.Attr.mappedAddress); put16(v4 ? 8 : 20)
            put(0); put(v4 ? 1 : 2); put16(xor ? source.port ^ 0x2112 : source.port)
            if v4 {
                let x = UInt32(truncatingIfNeeded: addr.0) ^ (xor ? STUN.magicCookie : 0)
                put(UInt8(x >> 24)); put(UInt8(x >> 16 & 0xff)); put(UInt8(x >> 8 & 0xff)); put(UInt8(x & 0xff))
            } else {
                for i in 0..<16 {
                    let word = i < 8 ? addr.0 : addr.1
                    var b = UInt8(truncatingIfNeeded: word >> (UInt64(7 - i % 8) * 8))
                    if xor { b ^= i < 4 ? UInt8(truncatingIfNeeded: STUN.magicCookie >> (UInt32(3 - i) * 8)) : req[8 + i - 4] }
                    put(b)
                }
            }
        }
        address(xor: true)
        address(xor: false)
        let sw = software.utf8
        put16(STUN.Attr.software); put16(UInt16(sw.count))
        for b in sw { put(b) }
        while n % 4 != 0 { put(0) }
        let length = n - 20 + 8
        out[0] = 0x01; out[1] = 0x01; out[2] = UInt8(length >> 8); out[3] = UInt8(length & 0xff)
        for i in 4..<20 { out[i] = req[i] }
        let crc = STUN.crc32(UnsafeRawBufferPointer(rebasing: out[0..<n])) ^ 0x5354_554e
        put16(STUN.Attr.fingerprint); put16(4)
        put(UInt8(crc >> 24)); put(UInt8(crc >> 16 & 0xff)); put(UInt8(crc >> 8 & 0xff)); put(UInt8(crc & 0xff))
        return n
    }
}

extension STUN {
    public static func crc32(_ b: UnsafeRawBufferPointer) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        crcTable.withUnsafeBufferPointer { t in
            for x in b { c = t[Int((c ^ UInt32(x)) & 0xff)] ^ (c >> 8) }
        }
        return c ^ 0xFFFF_FFFF
    }
}

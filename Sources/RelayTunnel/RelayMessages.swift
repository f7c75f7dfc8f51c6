import Crypto
import CRelayCrypto
import RelayCore

/// The relay protocol's datagrams (docs/relay-protocol.md): a node registers with a relay by a Noise
/// IK handshake against the relay's pinned static key, then every datagram between them is a frame
/// authenticated under the keys of that handshake (a SipHash-2-4-128 tag over the frame's header
/// and covered bytes, a counter in a replay window). A relay forwards node-to-node datagrams that are already sealed end to end:
/// it never holds the session keys of the tunnels it carries.
public enum RelayMessage: Equatable {
    /// Node to relay: Noise IK message 1 (payload: 8-byte timestamp, then an optional token),
    /// with mac1/mac2 as on tunnel handshakes (mac1 keyed by the relay's public key).
    case register(sender: UInt32, noise: ArraySlice<UInt8>)
    /// Relay to node: Noise IK message 2 (payload: the node's id at the relay, the heartbeat
    /// interval in seconds, flags). Always smaller than the register it answers.
    case registered(sender: UInt32, receiver: UInt32, noise: ArraySlice<UInt8>)
    /// Relay to node, unauthenticated (a hint: the node backs off): why a register was refused.
    case refused(receiver: UInt32, reason: RelayRefusal)
    /// Either way after registration: `session` is the receiver's index of the registration.
    case frame(kind: RelayFrameKind, session: UInt32, counter: UInt64, body: ArraySlice<UInt8>)
    /// Relay to node under load: a cookie for the node's address (sealed, bound to the register's
    /// mac1); the node sends its register again with mac2 under it. Smaller than a register.
    case cookie(receiver: UInt32, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>)

    public static let registerType: UInt8 = 0xD1, registeredType: UInt8 = 0xD2, refusedType: UInt8 = 0xD3, frameType: UInt8 = 0xD4, cookieType: UInt8 = 0xD5

    /// True for the first byte of a relay message (the tunnel's own types are 0xC1-0xC4, STUN's 0x00/0x01).
    @inline(__always) public static func isRelay(_ first: UInt8) -> Bool { first >= 0xD1 && first <= 0xD5 }
    /// Type, receiver, a 12-byte nonce, the sealed 16-byte cookie and its tag.
    public static let cookieSize = 8 + 12 + 32

    public static let registerSize = 8 + 32 + 48 + 8 + 16 + HandshakeMAC.size   // without a token: 144
    public static let maxToken = 64
    public static let registeredSize = 12 + 32 + 8 + 16                         // 68
    public static let refusedSize = 9
    /// Frame header (type, kind, 2 reserved, session, counter) and tag.
    public static let frameHeader = 16, tagSize = 16
    /// What a frame adds around its body.
    public static let frameOverhead = frameHeader + tagSize
    /// What forwarding adds around a sealed tunnel datagram: frame overhead and the 4-byte id.
    public static let forwardOverhead = frameOverhead + 4

    public static func parse(_ b: ArraySlice<UInt8>) -> RelayMessage? {
        guard b.count >= 4, isRelay(b[b.startIndex]) else { return nil }
        let s = b.startIndex
        switch b[s] {
        case registerType:
            guard b[s + 1] == 0, b[s + 2] == 0, b[s + 3] == 0, b.count >= registerSize, b.count <= registerSize + maxToken else { return nil }
            return .register(sender: le32(b, 4), noise: b.dropFirst(8).dropLast(HandshakeMAC.size))
        case registeredType:
            guard b[s + 1] == 0, b[s + 2] == 0, b[s + 3] == 0, b.count == registeredSize else { return nil }
            return .registered(sender: le32(b, 4), receiver: le32(b, 8), noise: b.dropFirst(12))
        case refusedType:
            guard b.count == refusedSize, let r = RelayRefusal(rawValue: b[s + 8]) else { return nil }
            return .refused(receiver: le32(b, 4), reason: r)
        case cookieType:
            guard b[s + 1] == 0, b[s + 2] == 0, b[s + 3] == 0, b.count == cookieSize else { return nil }
            return .cookie(receiver: le32(b, 4), nonce: b[(s + 8)..<(s + 20)], sealed: b[(s + 20)...])
        default:
            guard b.count >= frameOverhead, let k = RelayFrameKind(rawValue: b[s + 1]), b[s + 2] == 0, b[s + 3] == 0 else { return nil }
            return .frame(kind: k, session: le32(b, 4), counter: le64(b, 8), body: b.dropFirst(frameHeader).dropLast(tagSize))
        }
    }

    // MARK: building

    /// The cookie reply to a register (its sender index and mac1), sealed for the node with the
    /// relay's cookie key.
    public static func cookie(receiver: UInt32, cookie: [UInt8], registerMac1: ArraySlice<UInt8>, key: SymmetricKey) -> [UInt8] {
        var r = HandshakeMAC.cookieReply(receiver: receiver, cookie: cookie, mac1: registerMac1, key: key)
        if !r.isEmpty { r[0] = cookieType }
        return r
    }

    public static func register(sender: UInt32, noise: [UInt8], mac1Key: SymmetricKey, cookie: [UInt8]? = nil) -> [UInt8] {
        var out: [UInt8] = [registerType, 0, 0, 0]
        put32(sender, &out)
        return HandshakeMAC.append(to: out + noise, key: mac1Key, cookie: cookie)
    }

    public static func registered(sender: UInt32, receiver: UInt32, noise: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [registeredType, 0, 0, 0]
        put32(sender, &out); put32(receiver, &out)
        return out + noise
    }

    public static func refused(receiver: UInt32, reason: RelayRefusal) -> [UInt8] {
        var out: [UInt8] = [refusedType, 0, 0, 0]
        put32(receiver, &out)
        return out + [reason.rawValue]
    }

    /// A frame: header, body, and the tag over both under `key` and `counter`.
    public static func frame(_ kind: RelayFrameKind, session: UInt32, counter: UInt64, body: ArraySlice<UInt8>, key: SymmetricKey) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: frameOverhead + body.count)
        out.withUnsafeMutableBytes { o in
            writeHeader(kind, session: session, counter: counter, into: o.baseAddress!)
            body.withUnsafeBytes { if $0.count > 0 { (o.baseAddress! + frameHeader).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            tag(key: key, UnsafeRawBufferPointer(rebasing: o[0..<(frameHeader + body.count)]), into: o.baseAddress! + frameHeader + body.count)
        }
        return out
    }

    /// Writes a frame header (16 bytes) at `out`.
    @inline(__always)
    public static func writeHeader(_ kind: RelayFrameKind, session: UInt32, counter: UInt64, into out: UnsafeMutableRawPointer) {
        out.storeBytes(of: frameType, as: UInt8.self)
        out.storeBytes(of: kind.rawValue, toByteOffset: 1, as: UInt8.self)
        out.storeBytes(of: UInt16(0), toByteOffset: 2, as: UInt16.self)
        out.storeBytes(of: session.littleEndian, toByteOffset: 4, as: UInt32.self)
        out.storeBytes(of: counter.littleEndian, toByteOffset: 8, as: UInt64.self)
    }

    /// The 16-byte tag of the frame `authenticated` (header and body, without the tag), written at
    /// `out`: SipHash-2-4-128 under the first 16 bytes of `key` over the frame's covered bytes and its
    /// length (docs/relay-protocol.md, "frame"; `CRelayCrypto_relay_tag`). The counter is in the
    /// header, so it is covered.
    @inline(__always)
    public static func tag(key: SymmetricKey, _ authenticated: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        key.withUnsafeBytes { k in
            CRelayCrypto_relay_tag(k.baseAddress!.assumingMemoryBound(to: UInt8.self), authenticated.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                   authenticated.count, out.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// True when a whole frame's tag is valid under `key` (the counter is the frame's own).
    public static func verify(_ frame: ArraySlice<UInt8>, key: SymmetricKey) -> Bool {
        frame.withUnsafeBytes { verify($0, key: key) }
    }

    /// The same over raw bytes, without allocating; compared in constant time.
    public static func verify(_ f: UnsafeRawBufferPointer, key: SymmetricKey) -> Bool {
        guard f.count >= frameOverhead else { return false }
        var want = (UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &want) { tag(key: key, UnsafeRawBufferPointer(rebasing: f[0..<(f.count - tagSize)]), into: $0.baseAddress!) }
        let got0 = f.loadUnaligned(fromByteOffset: f.count - 16, as: UInt64.self), got1 = f.loadUnaligned(fromByteOffset: f.count - 8, as: UInt64.self)
        return (want.0 ^ got0) | (want.1 ^ got1) == 0
    }
}

public enum RelayFrameKind: UInt8, Sendable {
    /// Node to relay: forward the body's datagram (after a 4-byte destination id).
    case forward = 1
    /// Relay to node: a datagram from the node with the body's first 4 bytes as its id.
    case deliver = 2
    /// Node to relay: heartbeat (empty body); the relay answers pong with the node's address as
    /// it sees it (family 4/6, 16 address bytes, port).
    case ping = 3, pong = 4
    /// Node to relay: where is this 32-byte key? Answered found (key, id) or notHere.
    case lookup = 5, found = 6
    /// Relay to node: nobody registered here under that key (32 bytes) or id (4 bytes).
    case notHere = 7
    /// Node to relay: end this registration.
    case leave = 8
    /// Node to relay: claim a callsign (body: flags, bit 0 = listed, then the callsign in ASCII).
    /// Relay to node: the answer (body: a `RelayClaimResult` byte, then the callsign).
    case claim = 9, claimed = 10
}

/// The relay's answer to a callsign claim.
public enum RelayClaimResult: UInt8, Sendable, CustomStringConvertible {
    case claimed = 0, alreadyYours = 1, taken = 2, invalid = 3, quota = 4, blocked = 5, unavailable = 6
    /// A short name for log lines.
    public var code: String { ["claimed", "already_yours", "taken", "invalid", "quota", "blocked", "unavailable"][Int(rawValue)] }
    public var description: String {
        switch self {
        case .claimed: return "claimed"
        case .alreadyYours: return "already yours"
        case .taken: return "taken by another key"
        case .invalid: return "not a valid callsign (3-32 of A-Z 0-9 -) or reserved"
        case .quota: return "this key holds as many callsigns as the relay allows"
        case .blocked: return "blocked by the relay's operator"
        case .unavailable: return "the relay's store is unavailable"
        }
    }
}

public enum RelayRefusal: UInt8, Sendable, CustomStringConvertible {
    /// The key is not on the relay's list and no valid token came with it.
    case notAdmitted = 1
    /// Too many registrations from this address (or in all) just now: try again later.
    case rateLimited = 2
    /// The relay holds as many nodes as it is configured for.
    case full = 3
    public var description: String {
        switch self {
        case .notAdmitted: return "not admitted (the relay does not list this node's key, and no valid token was given)"
        case .rateLimited: return "rate limited (too many registrations from this address or in all)"
        case .full: return "full (the relay holds its maximum number of nodes)"
        }
    }
}

/// The Noise payload of `registered`: the node's id at the relay, the heartbeat interval.
public struct RelayGrant: Equatable, Sendable {
    public var id: UInt32
    public var heartbeatSeconds: UInt16
    public init(id: UInt32, heartbeatSeconds: UInt16) { self.id = id; self.heartbeatSeconds = heartbeatSeconds }
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        put32(id, &out)
        out += [UInt8(heartbeatSeconds & 0xff), UInt8(heartbeatSeconds >> 8), 0, 0]
        return out
    }
    public init?(_ b: [UInt8]) {
        guard b.count == 8 else { return nil }
        id = le32(b[...], 0); heartbeatSeconds = UInt16(b[4]) | UInt16(b[5]) << 8
    }
}

/// An address in a pong body: family (4 or 6), 16 address bytes (IPv4 in the last 4), port.
public enum RelayAddressBody {
    public static let size = 19
}

/// An address in a pong: family (4 or 6), 16 address bytes (IPv4 in the last four), port (big-endian).
public enum RelayAddress {
    public static func encode(_ e: Endpoint) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 19)
        switch e.address {
        case .v4(let a): out[0] = 4; for i in 0..<4 { out[13 + i] = a.bytes[i] }
        case .v6(let a): out[0] = 6; for i in 0..<16 { out[1 + i] = a.bytes[i] }
        }
        out[17] = UInt8(e.port >> 8); out[18] = UInt8(e.port & 0xff)
        return out
    }
    public static func decode(_ b: ArraySlice<UInt8>) -> Endpoint? {
        guard b.count == 19 else { return nil }
        let a = Array(b), port = UInt16(a[17]) << 8 | UInt16(a[18])
        switch a[0] {
        case 4: return Endpoint(.v4(IPv4Address(a[13], a[14], a[15], a[16])), port: port)
        case 6: return IPv6Address(bytes: Array(a[1..<17])).map { Endpoint(.v6($0), port: port) }
        default: return nil
        }
    }
}

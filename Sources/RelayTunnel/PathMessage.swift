import RelayCore

/// Path messages: what two nodes tell each other inside their tunnel session to find a direct path
/// (docs/paths.md). They travel as the plaintext of ordinary data messages, sealed with the
/// session's keys and under its replay window, so nobody but the peer can make one; their first
/// byte (0x11...0x13) is no IP version, so they never reach the TUN device.
///
/// - `candidates` ("call me"): a generation and up to 16 endpoints where the sender may be reached
///   directly, each with its kind.
/// - `probe`: sent straight to one of the peer's candidates; a transaction id.
/// - `probeAck`: the answer, sent back to where the probe came from, with that source (the peer
///   learns its own address as seen from here: a peer-reflexive candidate).
public enum PathMessage: Equatable, Sendable {
    case candidates(generation: UInt16, [Candidate])
    case probe(tx: UInt64)
    case probeAck(tx: UInt64, seen: Endpoint)

    public struct Candidate: Hashable, Sendable, CustomStringConvertible {
        public enum Kind: UInt8, Sendable { case local = 1, reflexive = 2, peerReflexive = 3 }
        public var kind: Kind
        public var endpoint: Endpoint
        public init(kind: Kind, endpoint: Endpoint) { self.kind = kind; self.endpoint = endpoint }
        public var description: String { "\(endpoint) (\(kind))" }
    }

    public static let candidatesType: UInt8 = 0x11, probeType: UInt8 = 0x12, ackType: UInt8 = 0x13
    /// At most this many candidates in a message, and accepted from a peer.
    public static let maxCandidates = 16

    /// True for a plaintext that is a path message (no IP packet starts with 0x1).
    public static func isPathMessage(_ first: UInt8) -> Bool { first >> 4 == 1 }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        switch self {
        case .candidates(let g, let list):
            out = [Self.candidatesType, UInt8(g >> 8), UInt8(g & 0xff), UInt8(min(list.count, Self.maxCandidates))]
            for c in list.prefix(Self.maxCandidates) { out.append(c.kind.rawValue); out += RelayAddress.encode(c.endpoint) }
        case .probe(let tx):
            out = [Self.probeType]; Self.put64(tx, &out)
        case .probeAck(let tx, let seen):
            out = [Self.ackType]; Self.put64(tx, &out); out += RelayAddress.encode(seen)
        }
        return out
    }

    static func put64(_ v: UInt64, _ out: inout [UInt8]) { for i in (0..<8).reversed() { out.append(UInt8(truncatingIfNeeded: v >> (UInt64(i) * 8))) } }

    /// Why a path message was refused (each is counted).
    public enum Failure: Error, Equatable { case unknownType, truncated, badAddress, tooMany }

    public static func parse(_ b: UnsafeRawBufferPointer) -> Result<PathMessage, Failure> {
        guard let t = b.first else { return .failure(.truncated) }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(b[at + $1]) } }
        // One encoding per address: IPv4 with anything but zeros before it is refused.
        func address(_ at: Int) -> Endpoint? {
            let raw = Array(b[at..<(at + RelayAddressBody.size)])
            guard let e = RelayAddress.decode(raw[...]), RelayAddress.encode(e) == raw else { return nil }
            return e
        }
        switch t {
        case candidatesType:
            guard b.count >= 4 else { return .failure(.truncated) }
            let n = Int(b[3])
            guard n <= maxCandidates else { return .failure(.tooMany) }
            guard b.count == 4 + n * (1 + RelayAddressBody.size) else { return .failure(.truncated) }
            var list: [Candidate] = []
            for i in 0..<n {
                let at = 4 + i * (1 + RelayAddressBody.size)
                guard let kind = Candidate.Kind(rawValue: b[at]), let e = address(at + 1) else { return .failure(.badAddress) }
                list.append(Candidate(kind: kind, endpoint: e))
            }
            return .success(.candidates(generation: UInt16(b[1]) << 8 | UInt16(b[2]), list))
        case probeType:
            guard b.count == 9 else { return .failure(.truncated) }
            return .success(.probe(tx: u64(1)))
        case ackType:
            guard b.count == 9 + RelayAddressBody.size else { return .failure(.truncated) }
            guard let e = address(9) else { return .failure(.badAddress) }
            return .success(.probeAck(tx: u64(1), seen: e))
        default:
            return .failure(.unknownType)
        }
    }

    /// An endpoint worth probing: a unicast address one could reach across networks (not
    /// unspecified, loopback, multicast, broadcast or IPv6 link-local) and a port.
    public static func probeable(_ e: Endpoint) -> Bool {
        guard e.port != 0 else { return false }
        switch e.address {
        case .v4(let a):
            let top = a.value >> 24
            return a.value != 0 && top != 127 && top != 0 && !(224...255).contains(top)
        case .v6(let a):
            if a.high == 0 && (a.low == 0 || a.low == 1) { return false }
            if a.high >> 56 == 0xff { return false }                 // multicast
            if a.high >> 54 == 0xfe80 >> 6 { return false }          // fe80::/10 link-local
            if a.high == 0 && a.low >> 32 == 0xffff { return probeable(Endpoint(.v4(IPv4Address(UInt32(truncatingIfNeeded: a.low))), port: e.port)) }
            return true
        }
    }
}

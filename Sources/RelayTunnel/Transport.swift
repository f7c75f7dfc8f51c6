import Crypto
import Foundation

/// Relay's peer-session wire format: WireGuard's model (session indexes, 64-bit counters as the
/// nonce, a replay window), its own type bytes. The first byte of every Relay datagram has its two
/// top bits set (0xC1...), so it can never be mistaken for STUN (top bits 00, RFC 8489 section 5)
/// when both share a UDP port. All integers little-endian.
///
///   initiation  C1 00 00 00 | sender u32 | Noise msg 1 (32 e + 48 s + 24 timestamp) | mac1 | mac2 = 144 bytes
///   response    C2 00 00 00 | sender u32 | receiver u32 | Noise msg 2 (32 e + 16) | mac1 | mac2     =  92 bytes
///   cookie      C3 00 00 00 | receiver u32 | nonce (12) | sealed cookie (16 + 16)             =  52 bytes
///   data        C4 00 00 00 | receiver u32 | counter u64 | ChaCha20-Poly1305 (len + 16) >= 32 bytes
///                (an empty plaintext is a keepalive)
public enum WireType: UInt8 {
    case initiation = 0xC1
    case response = 0xC2
    case cookieReply = 0xC3
    case data = 0xC4
}

public enum TunnelLimits {
    public static let initiationSize = 8 + 32 + 48 + 8 + 16 + HandshakeMAC.size
    public static let responseSize = 12 + 32 + 16 + HandshakeMAC.size
    public static let cookieReplySize = 8 + 12 + 16 + 16
    public static let dataHeader = 16
    public static let overhead = dataHeader + Noise.tagLen
    /// WireGuard's timers and limits.
    public static let rekeyAfterMessages: UInt64 = 1 << 60
    public static let rejectAfterMessages: UInt64 = UInt64.max - (1 << 13)
    public static let rekeyAfterTime: Double = 120
    public static let rejectAfterTime: Double = 180
    public static let rekeyAttemptTime: Double = 90
    public static let rekeyTimeout: Double = 5
    public static let keepaliveTimeout: Double = 10
}

@inline(__always) func le32(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt32 {
    let i = b.startIndex + at
    return UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
}
@inline(__always) func le64(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt64 {
    UInt64(le32(b, at)) | UInt64(le32(b, at + 4)) << 32
}
/// Appends `v` little-endian (the wire's byte order).
@inline(__always) public func put32(_ v: UInt32, _ out: inout [UInt8]) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
@inline(__always) func put64(_ v: UInt64, _ out: inout [UInt8]) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }

/// A datagram, parsed only as far as its header (never trusted beyond that).
public enum TunnelMessage: Equatable {
    case initiation(sender: UInt32, noise: ArraySlice<UInt8>)
    case response(sender: UInt32, receiver: UInt32, noise: ArraySlice<UInt8>)
    case cookieReply(receiver: UInt32, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>)
    case data(receiver: UInt32, counter: UInt64, ciphertext: ArraySlice<UInt8>)

    /// nil for anything that is not exactly a Relay message (dropped and counted by the caller).
    public static func parse(_ b: ArraySlice<UInt8>) -> TunnelMessage? {
        guard b.count >= 4, let t = WireType(rawValue: b[b.startIndex]),
              b[b.startIndex + 1] == 0, b[b.startIndex + 2] == 0, b[b.startIndex + 3] == 0 else { return nil }
        switch t {
        case .initiation:
            guard b.count == TunnelLimits.initiationSize else { return nil }
            return .initiation(sender: le32(b, 4), noise: b.dropFirst(8).dropLast(HandshakeMAC.size))
        case .response:
            guard b.count == TunnelLimits.responseSize else { return nil }
            return .response(sender: le32(b, 4), receiver: le32(b, 8), noise: b.dropFirst(12).dropLast(HandshakeMAC.size))
        case .cookieReply:
            guard b.count == TunnelLimits.cookieReplySize else { return nil }
            return .cookieReply(receiver: le32(b, 4), nonce: b.dropFirst(8).prefix(12), sealed: b.dropFirst(20))
        case .data:
            guard b.count >= TunnelLimits.overhead else { return nil }
            return .data(receiver: le32(b, 4), counter: le64(b, 8), ciphertext: b.dropFirst(16))
        }
    }

    /// The receiver index when `b` is a data message (as `parse` would read it), else nil: the
    /// receive path's test for runs of data messages.
    @inline(__always)
    public static func dataReceiver(_ b: UnsafeRawBufferPointer) -> UInt32? {
        guard b.count >= TunnelLimits.overhead, b[0] == WireType.data.rawValue, b[1] == 0, b[2] == 0, b[3] == 0 else { return nil }
        return b.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
    }

    /// An initiation to the holder of `mac1Key` (HandshakeMAC.key(receiver:)), with its mac1 and
    /// an empty mac2.
    public static func initiation(sender: UInt32, noise: [UInt8], mac1Key: SymmetricKey, cookie: [UInt8]? = nil) -> [UInt8] {
        var out: [UInt8] = [WireType.initiation.rawValue, 0, 0, 0]
        put32(sender, &out)
        return HandshakeMAC.append(to: out + noise, key: mac1Key, cookie: cookie)
    }
    public static func response(sender: UInt32, receiver: UInt32, noise: [UInt8], mac1Key: SymmetricKey) -> [UInt8] {
        var out: [UInt8] = [WireType.response.rawValue, 0, 0, 0]
        put32(sender, &out); put32(receiver, &out)
        return HandshakeMAC.append(to: out + noise, key: mac1Key)
    }
}

/// WireGuard's mac1 (section 5.4.4 of its paper), with Noise's hash: every handshake message ends in
/// mac1 = HMAC-SHA256(SHA256("mac1----" || receiver's static public key), message before mac1),
/// first 16 bytes, then a 16-byte mac2 (the MAC under a cookie from the receiver, or zero). Public keys are
/// public, so mac1 proves nothing about the sender; it lets the receiver drop anything not made for
/// it (scans, garbage, messages for another node) with one hash instead of a Diffie-Hellman.
public enum HandshakeMAC {
    public static let size = 32
    static let label = Array("mac1----".utf8)

    public static func key(receiver publicKey: [UInt8]) -> SymmetricKey {
        SymmetricKey(data: Array(SHA256.hash(data: label + publicKey)))
    }

    static func mac(_ body: ArraySlice<UInt8>, _ key: SymmetricKey) -> [UInt8] {
        Array(Array(HMAC<SHA256>.authenticationCode(for: body, using: key)).prefix(16))
    }

    /// `body` + mac1 + mac2 (empty without a cookie from the receiver).
    public static func append(to body: [UInt8], key: SymmetricKey, cookie: [UInt8]? = nil) -> [UInt8] {
        let withMac1 = body + mac(body[...], key)
        guard let cookie else { return withMac1 + [UInt8](repeating: 0, count: 16) }
        return withMac1 + mac(withMac1[...], SymmetricKey(data: cookie))
    }

    /// The mac1 of a whole handshake message (the cookie reply's associated data).
    public static func mac1(of message: ArraySlice<UInt8>) -> ArraySlice<UInt8> { message.dropLast(16).suffix(16) }

    // MARK: cookies (WireGuard's, section 5.4.7): a node under load answers an initiation without a
    // valid mac2 with a cookie instead of doing the handshake; the cookie is bound to the source's
    // address and port, so a sender that cannot receive there (a spoofed source) never gets one.

    static let cookieLabel = Array("cookie--".utf8)

    /// The cookie for a source (16 bytes), from a secret that changes every two minutes.
    public static func cookie(secret: SymmetricKey, source: [UInt8]) -> [UInt8] { mac(source[...], secret) }

    /// True when mac2 is the MAC of the message (up to mac2) under `cookie`.
    public static func validMac2(_ message: ArraySlice<UInt8>, cookie: [UInt8]) -> Bool {
        guard message.count > size else { return false }
        let want = mac(message.dropLast(16), SymmetricKey(data: cookie))
        var diff: UInt8 = 0
        for (a, b) in zip(want, message.suffix(16)) { diff |= a ^ b }
        return diff == 0
    }

    /// The key cookie replies from the holder of `publicKey` are sealed with.
    public static func cookieKey(sender publicKey: [UInt8]) -> SymmetricKey {
        SymmetricKey(data: Array(SHA256.hash(data: cookieLabel + publicKey)))
    }

    /// A cookie reply to `receiver` (the initiation's sender index), its cookie sealed with
    /// ChaCha20-Poly1305 under a random nonce, bound to the initiation's mac1. Smaller than the
    /// initiation it answers: no amplification.
    public static func cookieReply(receiver: UInt32, cookie: [UInt8], mac1: ArraySlice<UInt8>, key: SymmetricKey) -> [UInt8] {
        var out: [UInt8] = [WireType.cookieReply.rawValue, 0, 0, 0]
        put32(receiver, &out)
        let nonce = ChaChaPoly.Nonce()
        guard let box = try? ChaChaPoly.seal(cookie, using: key, nonce: nonce, authenticating: mac1) else { return [] }
        return out + Array(nonce) + Array(box.ciphertext) + Array(box.tag)
    }

    /// The cookie in a reply, when it opens under `key` with the mac1 of the initiation we sent.
    public static func openCookie(nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, mac1: [UInt8], key: SymmetricKey) -> [UInt8]? {
        guard sealed.count == 32, let n = try? ChaChaPoly.Nonce(data: nonce),
              let box = try? ChaChaPoly.SealedBox(nonce: n, ciphertext: sealed.prefix(16), tag: sealed.suffix(16)),
              let plain = try? ChaChaPoly.open(box, using: key, authenticating: mac1) else { return nil }
        return Array(plain)
    }

    /// True when a whole handshake message carries a valid mac1 for `key` (compared in constant time).
    public static func valid(_ message: ArraySlice<UInt8>, key: SymmetricKey) -> Bool {
        guard message.count > size else { return false }
        let body = message.dropLast(size)
        let want = mac(body, key)
        let got = message.dropLast(16).suffix(16)
        var diff: UInt8 = 0
        for (a, b) in zip(want, got) { diff |= a ^ b }
        return diff == 0
    }
}

/// Sliding replay window over 64-bit counters (RFC 6479's bitmap, 2048 bits like WireGuard).
public struct ReplayWindow: Sendable {
    static let words = 32
    static let bits = UInt64(words * 64)
    private var bitmap = [UInt64](repeating: 0, count: words)
    public private(set) var greatest: UInt64 = 0
    private var any = false

    public init() {}

    /// True when `counter` is new (and records it); false for a replay or a counter too far behind.
    public mutating func accept(_ counter: UInt64) -> Bool {
        guard counter < TunnelLimits.rejectAfterMessages else { return false }
        if any && counter <= greatest {
            if greatest - counter >= ReplayWindow.bits - 64 { return false }
        }
        if !any || counter > greatest {
            // Clear the words that slide into view.
            let oldWord = any ? greatest >> 6 : 0
            let newWord = counter >> 6
            if !any || newWord - oldWord >= UInt64(ReplayWindow.words) {
                for i in 0..<ReplayWindow.words { bitmap[i] = 0 }
            } else {
                var w = oldWord + 1
                while w <= newWord { bitmap[Int(w % UInt64(ReplayWindow.words))] = 0; w += 1 }
            }
            greatest = counter
            any = true
        }
        let idx = Int((counter >> 6) % UInt64(ReplayWindow.words)), bit = UInt64(1) << (counter & 63)
        if bitmap[idx] & bit != 0 { return false }
        bitmap[idx] |= bit
        return true
    }
}

/// One direction pair of keys after a handshake, with its index pair and counters. A class: the
/// send counter exists once, whoever holds the session (a peer replaced by a reload, a packet thread
/// that looked it up earlier), so no (key, counter) pair can be sealed twice. Its mutable state is
/// changed only under its owner's lock.
public final class TunnelSession {
    public let localIndex: UInt32
    public let remoteIndex: UInt32
    public let createdAt: Double
    public let isInitiator: Bool
    var send: Noise.CipherState
    let receiveKey: SymmetricKey
    var window = ReplayWindow()
    public private(set) var sent: UInt64 = 0

    public init(localIndex: UInt32, remoteIndex: UInt32, transport: Noise.Transport, createdAt: Double, isInitiator: Bool) {
        self.localIndex = localIndex; self.remoteIndex = remoteIndex; self.createdAt = createdAt; self.isInitiator = isInitiator
        send = transport.send; receiveKey = transport.receive.key
    }

    public func expired(now: Double) -> Bool { now - createdAt >= TunnelLimits.rejectAfterTime || send.n >= TunnelLimits.rejectAfterMessages }
    public func wantsRekey(now: Double) -> Bool { isInitiator && (now - createdAt >= TunnelLimits.rekeyAfterTime || send.n >= TunnelLimits.rekeyAfterMessages) }

    /// Seals `plaintext` into a data message.
    public func seal(_ plaintext: ArraySlice<UInt8>) -> [UInt8] {
        let (key, n, remote) = reserve()
        return TunnelSession.seal(plaintext, key: key, counter: n, remoteIndex: remote)
    }

    /// Takes the next counter (under the caller's lock); the sealing itself can then run unlocked.
    public func reserve(_ count: Int = 1) -> (SymmetricKey, UInt64, UInt32) {
        let n = send.n
        send.n += UInt64(count)
        sent += UInt64(count)
        return (send.key, n, remoteIndex)
    }

    public static func seal(_ plaintext: ArraySlice<UInt8>, key: SymmetricKey, counter n: UInt64, remoteIndex: UInt32) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: TunnelLimits.overhead + plaintext.count)
        let len = plaintext.withUnsafeBytes { p in out.withUnsafeMutableBytes { seal(p, key: key, counter: n, remoteIndex: remoteIndex, into: $0.baseAddress!) } }
        precondition(len == out.count)
        return out
    }

    /// Seals a data message into `out` (TunnelLimits.overhead + plaintext.count bytes): type,
    /// receiver index, counter, ciphertext, tag. Returns its length.
    @inline(__always)
    public static func seal(_ plaintext: UnsafeRawBufferPointer, key: SymmetricKey, counter n: UInt64, remoteIndex: UInt32, into out: UnsafeMutableRawPointer) -> Int {
        out.storeBytes(of: UInt32(WireType.data.rawValue).littleEndian, as: UInt32.self)
        out.storeBytes(of: remoteIndex.littleEndian, toByteOffset: 4, as: UInt32.self)
        out.storeBytes(of: n.littleEndian, toByteOffset: 8, as: UInt64.self)
        return 16 + Noise.seal(key: key, counter: n, plaintext, into: out + 16)
    }

    /// For unlocked decryption: the key, and whether the session may still receive.
    public func receiveState(now: Double) -> SymmetricKey? { expired(now: now) ? nil : receiveKey }

    /// Records a counter after an unlocked decryption succeeded (under the caller's lock).
    public func acceptCounter(_ c: UInt64) -> Bool { window.accept(c) }

    /// Opens a data message's ciphertext; nil when it does not authenticate or is a replay.
    /// (The counter is recorded only after authentication, so forgeries cannot move the window.)
    public func open(counter: UInt64, _ ciphertext: ArraySlice<UInt8>, now: Double) -> [UInt8]? {
        guard !expired(now: now) else { return nil }
        guard let pt = try? Noise.open(key: receiveKey, counter: counter, ad: [], ciphertext) else { return nil }
        guard window.accept(counter) else { return nil }
        return pt
    }
}

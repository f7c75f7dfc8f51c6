import Crypto
import CRelayCrypto
import Foundation

/// Noise_IK_25519_ChaChaPoly_SHA256 (noiseprotocol.org, revision 34), the handshake of Relay's peer
/// sessions. A pure state machine: bytes in, bytes out; the ephemeral key can be injected (tests
/// compare with other implementations byte for byte).
public enum Noise {
    /// Which ChaCha20-Poly1305 this process uses: "avx512" (relayd's ChaCha20, libcrypto's
    /// Poly1305) or "libcrypto".
    public static var implementation: String { String(cString: CRelayCrypto_implementation()) }

    public static let protocolName = Array("Noise_IK_25519_ChaChaPoly_SHA256".utf8)
    public static let dhLen = 32
    public static let tagLen = 16

    public enum Failure: Error, Equatable, CustomStringConvertible {
        case decrypt, malformed(String), state(String), badKey
        public var description: String {
            switch self {
            case .decrypt: return "authentication failed"
            case .malformed(let m): return "malformed handshake message: \(m)"
            case .state(let m): return "handshake state: \(m)"
            case .badKey: return "invalid X25519 key"
            }
        }
    }

    static func hash(_ parts: [UInt8]...) -> [UInt8] {
        var h = SHA256()
        for p in parts { h.update(data: p) }
        return Array(h.finalize())
    }

    static func hmac(_ key: [UInt8], _ parts: [UInt8]...) -> [UInt8] {
        var m = HMAC<SHA256>(key: SymmetricKey(data: key))
        for p in parts { m.update(data: p) }
        return Array(m.finalize())
    }

    /// HKDF as Noise defines it (two outputs).
    static func hkdf2(_ ck: [UInt8], _ ikm: [UInt8]) -> ([UInt8], [UInt8]) {
        let temp = hmac(ck, ikm)
        let o1 = hmac(temp, [1])
        let o2 = hmac(temp, o1, [2])
        return (o1, o2)
    }

    static func dh(_ priv: Curve25519.KeyAgreement.PrivateKey, _ pub: [UInt8]) throws -> [UInt8] {
        guard let p = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: pub),
              let s = try? priv.sharedSecretFromKeyAgreement(with: p) else { throw Failure.badKey }
        return s.withUnsafeBytes { Array($0) }
    }

    /// ChaCha20-Poly1305 with Noise's nonce (32 zero bits, then the 64-bit counter little-endian),
    /// through CRelayCrypto.
    public static func seal(key: SymmetricKey, counter: UInt64, ad: [UInt8], _ plaintext: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plaintext.count + tagLen)
        let n = plaintext.withUnsafeBytes { p in out.withUnsafeMutableBytes { seal(key: key, counter: counter, ad: ad, p, into: $0.baseAddress!) } }
        precondition(n == out.count, "libcrypto failed to seal")
        return out
    }

    public static func open(key: SymmetricKey, counter: UInt64, ad: [UInt8], _ ciphertext: ArraySlice<UInt8>) throws -> [UInt8] {
        guard ciphertext.count >= tagLen else { throw Failure.decrypt }
        var out = [UInt8](repeating: 0, count: ciphertext.count - tagLen + 1)
        let n = ciphertext.withUnsafeBytes { c in out.withUnsafeMutableBytes { open(key: key, counter: counter, ad: ad, c, into: $0.baseAddress!) } }
        guard let n else { throw Failure.decrypt }
        out.removeLast(out.count - n)
        return out
    }

    /// Seals `plaintext` into `out` (plaintext.count + 16 bytes; `out` may be where `plaintext` is).
    /// Returns the bytes written (-1 only if libcrypto fails).
    @inline(__always)
    public static func seal(key: SymmetricKey, counter: UInt64, ad: [UInt8] = [], _ plaintext: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) -> Int {
        key.withUnsafeBytes { k in
            ad.withUnsafeBytes { a in
                Int(CRelayCrypto_seal(k.baseAddress!.assumingMemoryBound(to: UInt8.self), counter, a.baseAddress?.assumingMemoryBound(to: UInt8.self), a.count,
                                      plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(out.assumingMemoryBound(to: UInt8.self)),
                                      plaintext.count, out.assumingMemoryBound(to: UInt8.self)))
            }
        }
    }

    /// Opens `ciphertext` (with its tag) into `out` (ciphertext.count - 16 bytes); nil when it does
    /// not authenticate.
    @inline(__always)
    public static func open(key: SymmetricKey, counter: UInt64, ad: [UInt8] = [], _ ciphertext: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) -> Int? {
        guard ciphertext.count >= tagLen else { return nil }
        let n = key.withUnsafeBytes { k in
            ad.withUnsafeBytes { a in
                CRelayCrypto_open(k.baseAddress!.assumingMemoryBound(to: UInt8.self), counter, a.baseAddress?.assumingMemoryBound(to: UInt8.self), a.count,
                                  ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self), ciphertext.count, out.assumingMemoryBound(to: UInt8.self))
            }
        }
        return n < 0 ? nil : Int(n)
    }

    /// A transport key and its counter (one direction).
    public struct CipherState {
        public let key: SymmetricKey
        public var n: UInt64 = 0
        public init(key: [UInt8]) { self.key = SymmetricKey(data: key) }
    }

    struct SymmetricState {
        var ck: [UInt8]
        var h: [UInt8]
        var k: SymmetricKey?
        var n: UInt64 = 0

        init() {
            h = protocolName.count <= 32 ? protocolName + [UInt8](repeating: 0, count: 32 - protocolName.count) : hash(protocolName)
            ck = h
        }
        mutating func mixHash(_ data: [UInt8]) { h = hash(h, data) }
        mutating func mixKey(_ ikm: [UInt8]) {
            let (c, t) = hkdf2(ck, ikm)
            ck = c; k = SymmetricKey(data: t); n = 0
        }
        mutating func encryptAndHash(_ pt: [UInt8]) -> [UInt8] {
            guard let k else { mixHash(pt); return pt }
            let ct = seal(key: k, counter: n, ad: h, pt)
            n += 1
            mixHash(ct)
            return ct
        }
        mutating func decryptAndHash(_ ct: [UInt8]) throws -> [UInt8] {
            guard let k else { mixHash(ct); return ct }
            let pt = try open(key: k, counter: n, ad: h, ct[...])
            n += 1
            mixHash(ct)
            return pt
        }
        func split() -> (CipherState, CipherState) {
            let (a, b) = hkdf2(ck, [])
            return (CipherState(key: a), CipherState(key: b))
        }
    }

    /// The result of a completed handshake.
    public struct Transport {
        public var send: CipherState
        public var receive: CipherState
        public var handshakeHash: [UInt8]
        /// The peer's static public key (for the responder: learned from message 1).
        public var remoteStatic: [UInt8]
    }

    /// Initiator: knows the responder's static key. `-> e, es, s, ss` then `<- e, ee, se`.
    public struct Initiator {
        var ss = SymmetricState()
        let s: Curve25519.KeyAgreement.PrivateKey
        let e: Curve25519.KeyAgreement.PrivateKey
        let rs: [UInt8]
        var written = false

        public init(staticKey: Curve25519.KeyAgreement.PrivateKey, remoteStatic: [UInt8], prologue: [UInt8] = [],
                    ephemeral: Curve25519.KeyAgreement.PrivateKey = .init()) throws {
            guard remoteStatic.count == dhLen else { throw Failure.badKey }
            s = staticKey; e = ephemeral; rs = remoteStatic
            ss.mixHash(prologue)
            ss.mixHash(rs)
        }

        /// Message 1: e (32) || enc(s) (48) || enc(payload) (len + 16).
        public mutating func writeMessage1(payload: [UInt8] = []) throws -> [UInt8] {
            guard !written else { throw Failure.state("message 1 already written") }
            written = true
            let epub = Array(e.publicKey.rawRepresentation)
            ss.mixHash(epub)
            ss.mixKey(try dh(e, rs))
            let encS = ss.encryptAndHash(Array(s.publicKey.rawRepresentation))
            ss.mixKey(try dh(s, rs))
            return epub + encS + ss.encryptAndHash(payload)
        }

        /// Reads message 2; returns the payload and the transport keys.
        public mutating func readMessage2(_ msg: [UInt8]) throws -> (payload: [UInt8], transport: Transport) {
            guard written else { throw Failure.state("message 1 not written") }
            guard msg.count >= dhLen + tagLen else { throw Failure.malformed("message 2 is \(msg.count) bytes") }
            var st = ss
            let re = Array(msg[0..<dhLen])
            st.mixHash(re)
            st.mixKey(try dh(e, re))
            st.mixKey(try dh(s, re))
            let payload = try st.decryptAndHash(Array(msg[dhLen...]))
            ss = st
            let (c1, c2) = st.split()
            return (payload, Transport(send: c1, receive: c2, handshakeHash: st.h, remoteStatic: rs))
        }
    }

    /// Responder: learns the initiator's static key from message 1.
    public struct Responder {
        var ss = SymmetricState()
        let s: Curve25519.KeyAgreement.PrivateKey
        let e: Curve25519.KeyAgreement.PrivateKey
        var re: [UInt8] = []
        public private(set) var remoteStatic: [UInt8] = []
        var read = false

        public init(staticKey: Curve25519.KeyAgreement.PrivateKey, prologue: [UInt8] = [], ephemeral: Curve25519.KeyAgreement.PrivateKey = .init()) {
            s = staticKey; e = ephemeral
            ss.mixHash(prologue)
            ss.mixHash(Array(s.publicKey.rawRepresentation))
        }

        /// Reads message 1; returns its payload. The caller checks `remoteStatic` against its peers
        /// before answering.
        public mutating func readMessage1(_ msg: [UInt8]) throws -> [UInt8] {
            guard !read else { throw Failure.state("message 1 already read") }
            guard msg.count >= dhLen + dhLen + tagLen + tagLen else { throw Failure.malformed("message 1 is \(msg.count) bytes") }
            var st = ss
            let e1 = Array(msg[0..<dhLen])
            st.mixHash(e1)
            st.mixKey(try dh(s, e1))
            let rs = try st.decryptAndHash(Array(msg[dhLen..<(dhLen + dhLen + tagLen)]))
            st.mixKey(try dh(s, rs))
            let payload = try st.decryptAndHash(Array(msg[(dhLen + dhLen + tagLen)...]))
            ss = st; re = e1; remoteStatic = rs; read = true
            return payload
        }

        /// Message 2: e (32) || enc(payload) (len + 16); returns it and the transport keys.
        public mutating func writeMessage2(payload: [UInt8] = []) throws -> (message: [UInt8], transport: Transport) {
            guard read else { throw Failure.state("message 1 not read") }
            let epub = Array(e.publicKey.rawRepresentation)
            ss.mixHash(epub)
            ss.mixKey(try dh(e, re))
            ss.mixKey(try dh(e, remoteStatic))
            let msg = epub + ss.encryptAndHash(payload)
            let (c1, c2) = ss.split()
            return (msg, Transport(send: c2, receive: c1, handshakeHash: ss.h, remoteStatic: remoteStatic))
        }
    }
}

@preconcurrency import Crypto
import Foundation
import RelayConfig
import RelayCore
import RelayHelperAPI
import RelayHelperKit
import RelayTunnel
import RelayWire

/// The decoders that face the network or the privilege boundary, each as a function of arbitrary
/// bytes. `relay-fuzz` runs them under libFuzzer (`make fuzz`); the unit tests replay the committed
/// corpus and every crash ever found (Fuzz/corpus, Fuzz/crashes) through the same functions.
/// A target must never trap, whatever the bytes; what it returns is only a coarse outcome.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// relay-helper's request decoder (framing, JSON, fields) and every policy check it leads to.
    case helperRequest = "helper-request"
    /// relay-helper's policy file (TOML).
    case helperPolicy = "helper-policy"
    /// The STUN decoder and both reflector paths (the general one and the fast path).
    case stun
    /// Tunnel messages: the framing, then a Noise IK responder reading an initiation.
    case tunnel
    /// relayd's configuration file (TOML).
    case relaydConfig = "relayd-config"
    /// Relay messages: the framing, a frame's tag, a Noise IK responder reading a register, a grant.
    case relay
    /// Path messages (NAT traversal: candidates, probes, answers), the plaintext of a session's data.
    case path

    public enum Outcome: Equatable, Sendable { case accepted, refused }

    public func run(_ bytes: [UInt8]) -> Outcome {
        switch self {
        case .helperRequest: return FuzzTarget.helperRequest(bytes)
        case .helperPolicy: return FuzzTarget.helperPolicy(bytes)
        case .stun: return FuzzTarget.stun(bytes)
        case .tunnel: return FuzzTarget.tunnel(bytes)
        case .relaydConfig: return FuzzTarget.relaydConfig(bytes)
        case .relay: return FuzzTarget.relay(bytes)
        case .path: return FuzzTarget.path(bytes)
        }
    }

    /// A fixed policy (no system name lookups: the fuzzer must be deterministic).
    static let policy: HelperPolicy = {
        var p = HelperPolicy()
        p.translate = ["192.168.0.0/16", "240.0.0.0/4", "fc00::/7", "64:ff9b::/32"].compactMap(IPPrefix.init)
        p.routeDestinations = ["240.0.0.0/4", "64:ff9b::/32"].compactMap(IPPrefix.init)
        p.deviceAddresses = ["240.0.0.0/4", "64:ff9b::/32"].compactMap(IPPrefix.init)
        p.maxElements = 5000
        return p
    }()
    static let noNames = NameResolver(uid: { $0 == "relayd" ? 999 : nil }, gid: { $0 == "relay" ? 998 : nil })

    static func helperRequest(_ bytes: [UInt8]) -> Outcome {
        // The stream first: frames as the helper's socket would cut them.
        var d = FrameDecoder(maxFrame: 1 << 16)
        d.feed(bytes[...])
        while let next = try? d.next(), case .frame(let f) = next { _ = HelperCodec.decodeRequest(f) }
        guard case .success(let req) = HelperCodec.decodeRequest(bytes) else { return .refused }
        if req.fieldProblem != nil { return .refused }
        var problems: [String] = []
        if let nat = req.nat { problems += policy.check(nat) }
        if let rm = req.remove { problems += policy.check(rm) }
        if let r = req.routes { problems += policy.check(routes: r) }
        if let dev = req.device { problems += policy.check(device: dev) }
        if let n = req.name { _ = policy.ownsDevice(n) }
        _ = policy.permission(uid: 999, gid: 5, groups: [998], names: noNames)
        _ = HelperCodec.encode(req)
        return problems.isEmpty ? .accepted : .refused
    }

    static func helperPolicy(_ bytes: [UInt8]) -> Outcome {
        guard let text = String(validating: bytes, as: UTF8.self) else { return .refused }
        guard let p = try? HelperPolicy.parse(text, file: "fuzz", names: noNames) else { return .refused }
        _ = p.check(routes: [RouteSpec(IPPrefix("240.2.2.0/24")!, device: p.devicePrefix + "0")])
        _ = p.permission(uid: 0, gid: 0, names: noNames)
        return .accepted
    }

    static func stun(_ bytes: [UInt8]) -> Outcome {
        let src = Endpoint(IPAddress("192.0.2.7")!, port: 40000)
        _ = STUN.looksLikeSTUN(bytes[...])
        var out = [UInt8](repeating: 0, count: 2048)
        let fast = bytes.withUnsafeBytes { req in out.withUnsafeMutableBytes { Reflector.answerFast(req, from: src, into: $0) } }
        _ = Reflector.answer(bytes[...], from: src)
        guard let m = try? STUN.parse(bytes[...]) else { return fast == nil ? .refused : .accepted }
        for (t, v) in m.attributes where t == STUN.Attr.xorMappedAddress || t == STUN.Attr.mappedAddress {
            _ = STUN.decodeAddress(v, xor: t == STUN.Attr.xorMappedAddress, transactionID: m.transactionID)
        }
        return .accepted
    }

    /// A fixed responder key: an initiation that gets past the decoder must also fail cleanly in
    /// the Noise handshake (it cannot know this key's peers).
    nonisolated(unsafe) static let responderKey = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: 0x42, count: 32))
    static let cookieKey = HandshakeMAC.cookieKey(sender: Array(responderKey.publicKey.rawRepresentation))
    static let responderMac1 = HandshakeMAC.key(receiver: Array(responderKey.publicKey.rawRepresentation))
    nonisolated(unsafe) static let ephemeral = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: 0x24, count: 32))

    static func tunnel(_ bytes: [UInt8]) -> Outcome {
        _ = bytes.withUnsafeBytes { TunnelMessage.dataReceiver($0) }
        guard let m = TunnelMessage.parse(bytes[...]) else { return .refused }
        switch m {
        case .initiation(_, let noise):
            // relayd checks mac1 first; the Noise responder runs here either way, so that the
            // fuzzer reaches its decoder without having to find a valid HMAC.
            let macOK = HandshakeMAC.valid(bytes[...], key: responderMac1)
            var r = Noise.Responder(staticKey: responderKey, ephemeral: ephemeral)
            return (try? r.readMessage1(Array(noise))) != nil && macOK ? .accepted : .refused
        case .response:
            return HandshakeMAC.valid(bytes[...], key: responderMac1) ? .accepted : .refused
        case .cookieReply(_, let nonce, let sealed):
            return HandshakeMAC.openCookie(nonce: nonce, sealed: sealed, mac1: [UInt8](repeating: 0, count: 16), key: cookieKey) == nil ? .refused : .accepted
        case .data:
            return .accepted
        }
    }

    static func relay(_ bytes: [UInt8]) -> Outcome {
        guard let m = RelayMessage.parse(bytes[...]) else { return .refused }
        switch m {
        case .register(_, let noise):
            let macOK = HandshakeMAC.valid(bytes[...], key: responderMac1)
            var r = Noise.Responder(staticKey: responderKey, ephemeral: ephemeral)
            guard let payload = try? r.readMessage1(Array(noise)) else { return .refused }
            return macOK && payload.count >= 8 ? .accepted : .refused
        case .registered(_, _, let noise):
            return RelayGrant(Array(noise.suffix(8))) == nil ? .refused : .accepted
        case .refused:
            return .accepted
        case .frame:
            return RelayMessage.verify(bytes[...], key: frameKey) ? .accepted : .refused
        case .cookie(_, let nonce, let sealed):
            return HandshakeMAC.openCookie(nonce: nonce, sealed: sealed, mac1: [UInt8](repeating: 0, count: 16), key: cookieKey) == nil ? .refused : .accepted
        }
    }
    static func path(_ bytes: [UInt8]) -> Outcome {
        guard case .success(let m) = bytes.withUnsafeBytes({ PathMessage.parse($0) }) else { return .refused }
        // What parses encodes back to the same bytes (one encoding per message).
        precondition(m.bytes == bytes, "path message re-encodes differently")
        if case .candidates(_, let list) = m { _ = list.filter { PathMessage.probeable($0.endpoint) } }
        return .accepted
    }

    static let frameKey = SymmetricKey(data: [UInt8](repeating: 7, count: 32))

    static func relaydConfig(_ bytes: [UInt8]) -> Outcome {
        guard let text = String(validating: bytes, as: UTF8.self) else { return .refused }
        guard let (cfg, _) = try? ConfigFile.parse(text, file: "fuzz") else { return .refused }
        _ = cfg.desiredKernelState
        return .accepted
    }
}

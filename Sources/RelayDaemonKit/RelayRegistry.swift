import Crypto
import Foundation
import RelayControlAPI
import RelayCore
import RelayTunnel

/// The relay role as a state machine: datagrams in (with their source), datagrams out (`take`),
/// registrations, limits and counters in between. Pure: no socket, no clock, no lock; `RelayServer`
/// is its loop. It never holds a tunnel's keys: what it forwards is sealed end to end.
///
/// Rules (docs/relay-protocol.md): a node registers with a Noise IK handshake against the relay's
/// static key (mac1 first, then per-address and global limits, then the DH); the registration is
/// bound to the address the register came from and becomes active only when the node's first
/// authenticated frame arrives from that address (return routability). Every frame must come from
/// the bound address, carry a fresh counter and a valid tag. Before a registration is active the
/// relay answers nothing bigger than what it received.
final class RelayRegistry {
    /// A registration. A class: the forwarding path updates counters, windows and tokens in place.
    final class Node {
        let id: UInt32
        let key: [UInt8]
        /// The node's own index: relay-to-node frames carry it.
        let remoteIndex: UInt32
        let address: Endpoint
        var active = false
        let sendKey: SymmetricKey
        var sendCounter: UInt64 = 0
        let receiveKey: SymmetricKey
        var window = ReplayWindow()
        let createdAt: Double
        var lastHeard: Double
        var bytesTokens: Double, datagramTokens: Double, tokensAt: Double
        var forwarded = 0, throttled = 0
        init(id: UInt32, key: [UInt8], remoteIndex: UInt32, address: Endpoint, sendKey: SymmetricKey, receiveKey: SymmetricKey, createdAt: Double,
             lastHeard: Double, bytesTokens: Double, datagramTokens: Double, tokensAt: Double) {
            self.id = id; self.key = key; self.remoteIndex = remoteIndex; self.address = address; self.sendKey = sendKey; self.receiveKey = receiveKey
            self.createdAt = createdAt; self.lastHeard = lastHeard; self.bytesTokens = bytesTokens; self.datagramTokens = datagramTokens; self.tokensAt = tokensAt
        }
    }

    struct Policy: Equatable {
        var allowedKeys: Set<[UInt8]> = []
        var tokens: [[UInt8]] = []
        var maxNodes = 10_000
        var bytesPerSecond = 125_000_000.0
        var datagramsPerSecond = 150_000.0
        var registrationsPerSecond = 5.0
        var heartbeat = 2
        /// Register messages that get a Diffie-Hellman, per second in all.
        var handshakesPerSecond = 4000.0
        /// From the store: keys allowed (besides `allowedKeys`) and blocked (directly or by callsign).
        var storeAllowedKeys: Set<[UInt8]> = []
        var blockedKeys: Set<[UInt8]> = []

        init() {}
        init(_ c: RelayRoleConfig) {
            allowedKeys = Set(c.allowedKeys.compactMap { Data(base64Encoded: $0).map(Array.init) })
            tokens = c.tokens.map { Array($0.utf8) }
            maxNodes = c.maxNodes
            bytesPerSecond = Double(c.nodeBytesPerSecond)
            datagramsPerSecond = Double(c.nodeDatagramsPerSecond)
            registrationsPerSecond = Double(c.registrationsPerSecond)
            heartbeat = c.heartbeatSeconds
        }
    }

    let staticKey: Curve25519.KeyAgreement.PrivateKey
    let mac1Key: SymmetricKey
    /// Cookie replies are sealed with this (nodes derive it from the relay's public key).
    let cookieKey: SymmetricKey
    private var cookieSecret = SymmetricKey(size: .bits256), cookieSecretAt = -Double.infinity
    var policy: Policy {
        didSet { if policy.registrationsPerSecond != oldValue.registrationsPerSecond { perAddress = RateLimiter(rate: policy.registrationsPerSecond, burst: policy.registrationsPerSecond * 2, capacity: 65536) } }
    }
    private(set) var nodes: [UInt32: Node] = [:]
    private(set) var byKey: [[UInt8]: UInt32] = [:]
    /// The greatest register timestamp per key (a replayed register gets nothing).
    private var stamps: [[UInt8]: UInt64] = [:]
    private var perAddress: RateLimiter
    private var handshakeTokens: Double, handshakesAt = 0.0
    var counters = RelayServerCounters()
    /// Datagrams to send, in order.
    var out: [([UInt8], Endpoint)] = []
    /// What happened to registrations, for the server's structured log lines (and the store).
    struct Event { var kind: String; var key: [UInt8]; var id: UInt32; var address: Endpoint; var detail: String = "" }
    var events: [Event] = []
    /// Callsign claims for the store (the server answers them with `answerClaim`).
    var claims: [(id: UInt32, key: [UInt8], listed: Bool, callsign: String)] = []

    init(staticKey: Curve25519.KeyAgreement.PrivateKey, policy: Policy) {
        self.staticKey = staticKey
        mac1Key = HandshakeMAC.key(receiver: Array(staticKey.publicKey.rawRepresentation))
        cookieKey = HandshakeMAC.cookieKey(sender: Array(staticKey.publicKey.rawRepresentation))
        self.policy = policy
        perAddress = RateLimiter(rate: policy.registrationsPerSecond, burst: policy.registrationsPerSecond * 2, capacity: 65536)
        handshakeTokens = policy.handshakesPerSecond
    }

    /// Datagrams owed since the last call.
    func take() -> [([UInt8], Endpoint)] {
        guard !out.isEmpty else { return [] }
        var o: [([UInt8], Endpoint)] = []
        swap(&o, &out)
        return o
    }

    var active: Int { byKey.count }
    var pending: Int { nodes.count - byKey.count }

    // MARK: events

    /// One datagram from `from`.
    func receive(_ b: ArraySlice<UInt8>, from: Endpoint, now: Double) {
        switch RelayMessage.parse(b) {
        case .register(let sender, let noise)?: register(b, sender: sender, noise: noise, from: from, now: now)
        case .frame(.forward, _, _, _)?:
            // The loop's forwarding path, on a copy: one implementation of forwarding.
            var copy = Array(b)
            switch copy.withUnsafeMutableBytes({ forwardInPlace($0, from: from, now: now) }) {
            case .forwarded(let to): out.append((copy, to))
            case .handled: break
            case .slow: counters.malformed += 1   // too short to carry a destination id
            }
        case .frame(let kind, let session, let counter, let body)?: frame(b, kind: kind, session: session, counter: counter, body: body, from: from, now: now)
        default: counters.malformed += 1
        }
    }

    private func register(_ b: ArraySlice<UInt8>, sender: UInt32, noise: ArraySlice<UInt8>, from: Endpoint, now: Double) {
        // One hash drops what was not made for this relay; then the limits, before any DH.
        guard HandshakeMAC.valid(b, key: mac1Key) else { counters.badMAC += 1; return }
        guard perAddress.allow(from.address, now: now) else {
            counters.rateLimited += 1
            out.append((RelayMessage.refused(receiver: sender, reason: .rateLimited), from))
            return
        }
        handshakeTokens = min(policy.handshakesPerSecond, handshakeTokens + (now - handshakesAt) * policy.handshakesPerSecond); handshakesAt = now
        // Under load (half the handshake budget spent), a register costs a round trip first: one
        // without a valid mac2 gets a cookie for its address (smaller than the register, no DH) and
        // must come back with it; a spoofed source never sees its cookie.
        // A register that came back with its cookie proved its address: the per-address limit
        // (above) bounds it, not the global budget.
        if handshakeTokens < policy.handshakesPerSecond / 2 {
            let cookie = self.cookie(for: from, now: now)
            guard HandshakeMAC.validMac2(b, cookie: cookie) else {
                counters.cookiesSent += 1
                let reply = RelayMessage.cookie(receiver: sender, cookie: cookie, registerMac1: HandshakeMAC.mac1(of: b), key: cookieKey)
                if !reply.isEmpty { out.append((reply, from)) }
                return
            }
        } else {
            guard handshakeTokens >= 1 else { counters.rateLimited += 1; return }
            handshakeTokens -= 1
        }
        var r = Noise.Responder(staticKey: staticKey)
        guard let payload = try? r.readMessage1(Array(noise)), payload.count >= 8, payload.count <= 8 + RelayMessage.maxToken else {
            counters.authFailed += 1; failed(from, now: now); return
        }
        let key = r.remoteStatic
        let stamp = payload.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let token = Array(payload.dropFirst(8))
        guard admitted(key, token: token) else {
            counters.notAdmitted += 1; failed(from, now: now)
            events.append(Event(kind: "refused", key: key, id: 0, address: from, detail: policy.blockedKeys.contains(key) ? "reason=blocked" : "reason=not_admitted"))
            out.append((RelayMessage.refused(receiver: sender, reason: .notAdmitted), from))
            return
        }
        guard stamp > stamps[key] ?? 0 else { counters.replayed += 1; return }
        // A node re-registering replaces its own registration; otherwise the relay must have room.
        guard nodes.count < policy.maxNodes || byKey[key] != nil else {
            counters.full += 1
            out.append((RelayMessage.refused(receiver: sender, reason: .full), from))
            return
        }
        var id: UInt32 = 0
        repeat { id = UInt32.random(in: 1...UInt32.max) } while nodes[id] != nil
        guard let (m2, transport) = try? r.writeMessage2(payload: RelayGrant(id: id, heartbeatSeconds: UInt16(policy.heartbeat)).bytes) else { counters.authFailed += 1; return }
        stamps[key] = stamp
        nodes[id] = Node(id: id, key: key, remoteIndex: sender, address: from, sendKey: transport.send.key, receiveKey: transport.receive.key,
                         createdAt: now, lastHeard: now, bytesTokens: policy.bytesPerSecond, datagramTokens: policy.datagramsPerSecond, tokensAt: now)
        out.append((RelayMessage.registered(sender: id, receiver: sender, noise: m2), from))
    }

    /// The cookie for a source address and port, from a secret replaced every two minutes.
    private func cookie(for source: Endpoint, now: Double) -> [UInt8] {
        if now - cookieSecretAt >= 120 { cookieSecret = SymmetricKey(size: .bits256); cookieSecretAt = now }
        var bytes = source.address.bytes
        bytes.append(UInt8(source.port >> 8)); bytes.append(UInt8(source.port & 0xff))
        return HandshakeMAC.cookie(secret: cookieSecret, source: bytes)
    }

    /// A failed attempt costs an address five registrations' worth of its budget.
    private func failed(_ from: Endpoint, now: Double) { for _ in 0..<4 { _ = perAddress.allow(from.address, now: now) } }

    /// The key is listed, or the token matches one of the relay's (compared in constant time).
    private func admitted(_ key: [UInt8], token: [UInt8]) -> Bool {
        if policy.blockedKeys.contains(key) { counters.blocked += 1; return false }
        if policy.allowedKeys.contains(key) || policy.storeAllowedKeys.contains(key) { return true }
        var ok = false
        for t in policy.tokens {
            var diff = UInt8(t.count == token.count ? 0 : 1)
            for i in 0..<t.count { diff |= t[i] ^ (i < token.count ? token[i] : 0) }
            if diff == 0 { ok = true }
        }
        return ok
    }

    private func frame(_ b: ArraySlice<UInt8>, kind: RelayFrameKind, session: UInt32, counter: UInt64, body: ArraySlice<UInt8>, from: Endpoint, now: Double) {
        guard let n = nodes[session] else { counters.unknownSession += 1; return }
        guard n.address == from else { counters.wrongSource += 1; return }
        guard RelayMessage.verify(b, key: n.receiveKey) else { counters.badFrames += 1; return }
        guard n.window.accept(counter) else { counters.replayed += 1; return }
        n.lastHeard = now
        if !n.active { activate(n) }
        switch kind {
        case .ping:
            counters.pings += 1
            send(n, .pong, RelayAddress.encode(from)[...])
        case .lookup:
            counters.lookups += 1
            guard body.count == 32 else { counters.malformed += 1; break }
            if let id = byKey[Array(body)] {
                var reply = Array(body); put32(id, &reply)
                send(n, .found, reply[...])
            } else {
                counters.notHere += 1
                send(n, .notHere, body)
            }
        case .leave:
            counters.left += 1
            events.append(Event(kind: "left", key: n.key, id: n.id, address: n.address))
            nodes[n.id] = nil
            if byKey[n.key] == n.id { byKey[n.key] = nil }
            return
        case .claim:
            // Any name of up to 64 bytes gets a typed answer (the store says what is wrong with it).
            guard body.count >= 1, body.count <= 65 else { counters.malformed += 1; break }
            counters.claims += 1
            claims.append((n.id, n.key, body.first! & 1 == 1, String(decoding: body.dropFirst(), as: UTF8.self)))
        case .pong, .found, .notHere, .deliver, .claimed:
            counters.malformed += 1
        case .forward:
            break  // forwardInPlace's (receive sends forward frames there)
        }
    }

    enum Fast { case forwarded(Endpoint), handled, slow }

    /// The forwarding fast path: a forward frame in `p` becomes, in place and at the same length,
    /// the deliver frame for its destination (header, source id, tag rewritten; the datagram is not
    /// touched or copied). `.slow`: not a forward frame, nothing changed (use `receive`).
    func forwardInPlace(_ p: UnsafeMutableRawBufferPointer, from: Endpoint, now: Double) -> Fast {
        guard p.count >= RelayMessage.forwardOverhead, p[0] == RelayMessage.frameType, p[1] == RelayFrameKind.forward.rawValue, p[2] == 0, p[3] == 0 else { return .slow }
        let session = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
        let counter = p.loadUnaligned(fromByteOffset: 8, as: UInt64.self).littleEndian
        guard let n = nodes[session] else { counters.unknownSession += 1; return .handled }
        guard n.address == from else { counters.wrongSource += 1; return .handled }
        guard RelayMessage.verify(UnsafeRawBufferPointer(p), key: n.receiveKey) else { counters.badFrames += 1; return .handled }
        guard n.window.accept(counter) else { counters.replayed += 1; return .handled }
        n.lastHeard = now
        if !n.active { activate(n) }
        let size = Double(p.count - RelayMessage.forwardOverhead)
        let dt = now - n.tokensAt; n.tokensAt = now
        n.bytesTokens = min(policy.bytesPerSecond, n.bytesTokens + dt * policy.bytesPerSecond)
        n.datagramTokens = min(policy.datagramsPerSecond, n.datagramTokens + dt * policy.datagramsPerSecond)
        guard n.datagramTokens >= 1, n.bytesTokens >= size else { n.throttled += 1; counters.throttled += 1; return .handled }
        n.datagramTokens -= 1; n.bytesTokens -= size
        let dst = p.loadUnaligned(fromByteOffset: RelayMessage.frameHeader, as: UInt32.self).littleEndian
        guard dst != n.id, let d = nodes[dst], d.active else {
            counters.notHere += 1
            var id: [UInt8] = []; put32(dst, &id)
            send(n, .notHere, id[...])
            return .handled
        }
        let c = d.sendCounter
        d.sendCounter += 1
        let base = p.baseAddress!
        RelayMessage.writeHeader(.deliver, session: d.remoteIndex, counter: c, into: base)
        base.storeBytes(of: n.id.littleEndian, toByteOffset: RelayMessage.frameHeader, as: UInt32.self)
        let end = p.count - RelayMessage.tagSize
        RelayMessage.tag(key: d.sendKey, UnsafeRawBufferPointer(start: base, count: end), into: base + end)
        n.forwarded += 1
        counters.forwarded += 1; counters.forwardedBytes += UInt64(size)
        return .forwarded(d.address)
    }

    /// Return routability proven: the node's first valid frame came from the address it
    /// registered from. Its registration replaces any older one of the same key.
    private func activate(_ n: Node) {
        if let old = byKey[n.key], old != n.id { nodes[old] = nil }
        byKey[n.key] = n.id
        n.active = true
        counters.registrations += 1
        events.append(Event(kind: "registered", key: n.key, id: n.id, address: n.address))
    }

    private func send(_ n: Node, _ kind: RelayFrameKind, _ body: ArraySlice<UInt8>) {
        let f = RelayMessage.frame(kind, session: n.remoteIndex, counter: n.sendCounter, body: body, key: n.sendKey)
        n.sendCounter += 1
        out.append((f, n.address))
    }

    /// The store's answer to a claim of node `id` (gone meanwhile: nothing is sent).
    func answerClaim(id: UInt32, _ result: RelayClaimResult, callsign: String) {
        guard let n = nodes[id] else { return }
        send(n, .claimed, ([result.rawValue] + Array(callsign.utf8.prefix(32)))[...])
    }

    /// Keys the store blocks: a blocked node's registrations end now.
    func blockRegistered(_ blocked: Set<[UInt8]>) {
        for (id, n) in nodes where blocked.contains(n.key) {
            nodes[id] = nil
            if byKey[n.key] == id { byKey[n.key] = nil }
            counters.blocked += 1
            events.append(Event(kind: "blocked", key: n.key, id: id, address: n.address))
        }
    }

    /// The connection a node registered over (a WebSocket) is gone: its registration ends now.
    func disconnected(_ address: Endpoint) {
        for (id, n) in nodes where n.address == address {
            nodes[id] = nil
            if byKey[n.key] == id { byKey[n.key] = nil }
            counters.left += 1
            if n.active { events.append(Event(kind: "disconnected", key: n.key, id: id, address: address)) }
        }
    }

    /// Every second or so: registrations not heard from for four heartbeats and a second (pending
    /// ones after ten seconds) end.
    func tick(now: Double) {
        let deadline = Double(policy.heartbeat * 4 + 1)
        for (id, n) in nodes where now - n.lastHeard > (n.active ? deadline : 10) {
            nodes[id] = nil
            if byKey[n.key] == id { byKey[n.key] = nil }
            counters.expired += 1
            if n.active { events.append(Event(kind: "expired", key: n.key, id: id, address: n.address, detail: "silent_seconds=\(Int(now - n.lastHeard))")) }
        }
    }

    func views(now: Double, describe: (Endpoint) -> String = { "\($0)" }) -> [RelayNodeView] {
        nodes.values.filter(\.active).sorted { $0.createdAt < $1.createdAt }.map {
            RelayNodeView(publicKey: Data($0.key).base64EncodedString(), id: $0.id, address: describe($0.address), registeredSecondsAgo: now - $0.createdAt,
                          lastHeardSecondsAgo: now - $0.lastHeard, forwarded: $0.forwarded, throttled: $0.throttled)
        }
    }
}

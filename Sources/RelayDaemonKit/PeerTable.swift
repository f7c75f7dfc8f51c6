import Crypto
import Foundation
import Logging
import RelayControlAPI
import RelayCore
import RelayTunnel

/// The node's side of the tunnel as a state machine: its peers (one `PeerMachine` each), the
/// receiver-index table, what the site exports, the counters, and the actions the loops owe.
/// Pure (no sockets, no clock, no lock of its own): the tunnel's loops call it under their lock
/// and perform `take()`'s actions after releasing it. The steps that cost a Diffie-Hellman are
/// split in two around it (`beginResponse`/`responded`, `answerable`/`answered`,
/// `makeInitiation`/`initiationMade`), so no DH runs under the lock.
final class PeerTable {
    let staticKey: Curve25519.KeyAgreement.PrivateKey
    let ownPublic: [UInt8]
    private(set) var peers: [PeerMachine] = []
    private(set) var byIndex: [UInt32: PeerMachine] = [:]
    var counters = TunnelCounters()
    /// What this site exports to its peers: its virtual prefixes. A peer's packet to anything else
    /// (the gateway's own addresses, the underlay, another routed network) is dropped.
    var exported: [IPPrefix] = []
    /// Actions owed to the loops, in order (see `take`).
    var actions: [PeerAction] = []
    /// NAT traversal: the settings, this node's candidates (for every peer), its own addresses
    /// (a peer's candidate there is not probed), and the next probe's transaction id (random start).
    private(set) var pathSettings = PathsConfig()
    private(set) var localCandidates: [PathMessage.Candidate] = []
    var ownAddresses: Set<IPAddress> = []
    var nextTx = UInt64.random(in: 1...UInt64.max / 2)

    init(staticKey: Curve25519.KeyAgreement.PrivateKey) {
        self.staticKey = staticKey
        ownPublic = Array(staticKey.publicKey.rawRepresentation)
    }

    /// The actions owed since the last call (nothing allocated when there are none).
    func take() -> [PeerAction] {
        guard !actions.isEmpty else { return [] }
        var out: [PeerAction] = []
        swap(&out, &actions)
        return out
    }

    // MARK: indices

    /// A fresh random receiver index for `p` (an attacker cannot guess a pending one).
    func bind(_ p: PeerMachine) -> UInt32 {
        while true {
            let i = UInt32.random(in: 1...UInt32.max)
            if byIndex[i] == nil { byIndex[i] = p; return i }
        }
    }
    func bind(_ p: PeerMachine, index: UInt32) { byIndex[index] = p }
    func unbind(_ index: UInt32) { byIndex[index] = nil }

    // MARK: configuration

    struct PeerConfig { var name: String; var publicKey: [UInt8]; var endpoint: Endpoint?; var prefixes: [IPPrefix] }

    /// Reload: peers whose key stays keep their machine (and sessions); new keys get one (with the
    /// greatest initiation timestamp kept for them, `stamp`); removed keys lose their indices.
    func configure(_ list: [PeerConfig], exported: [IPPrefix], stamp: ([UInt8]) -> UInt64, cachedPaths: ([UInt8]) -> [Endpoint] = { _ in [] }) {
        var next: [PeerMachine] = []
        for c in list {
            if let old = peers.first(where: { $0.publicKey == c.publicKey }) {
                old.reload(name: c.name, prefixes: c.prefixes, endpoint: c.endpoint)
                next.append(old)
            } else {
                let m = PeerMachine(name: c.name, publicKey: c.publicKey, endpoint: c.endpoint, prefixes: c.prefixes)
                m.finder.settings = pathSettings
                m.cachedPaths(cachedPaths(c.publicKey))
                m.lastInitiationStamp = stamp(c.publicKey)
                next.append(m)
            }
        }
        for old in peers where !next.contains(where: { $0 === old }) { old.removed(self) }
        peers = next
        self.exported = exported
        for p in peers where p.finder.local != localCandidates { p.localCandidates(localCandidates, now: 0) }
    }

    /// `[paths]` on start and reload.
    func configurePaths(_ settings: PathsConfig) {
        pathSettings = settings
        for p in peers { p.finder.settings = settings }
    }

    /// This node's candidates changed (addresses, what relays and reflectors see): every peer gets
    /// the new generation, and attempts may start at once (migration).
    func localCandidatesChanged(_ list: [PathMessage.Candidate], own: Set<IPAddress>, now: Double) {
        ownAddresses = own
        guard list != localCandidates else { return }
        localCandidates = list
        actions.append(.log(.info, "path candidates: \(list.isEmpty ? "none" : list.map(\.description).joined(separator: ", "))"))
        for p in peers { p.localCandidates(list, now: now) }
    }

    /// The peer whose sites hold `dst`.
    func route(_ dst: IPAddress) -> PeerMachine? { peers.first { p in p.prefixes.contains { $0.contains(dst) } } }

    func peer(key: [UInt8]) -> PeerMachine? { peers.first { $0.publicKey == key } }

    /// Every route to every peer (handshakes from them take the priority lane).
    var knownRoutes: [Route] { peers.flatMap { $0.paths.map(\.route) } }

    /// The relays this node may use, in configuration order.
    private(set) var relays: [RelayLink] = []

    // MARK: events

    /// Start: every peer we know how to reach gets an initiation, so after a restart the peers
    /// learn at once that our old sessions are gone (not after their 15-second no-answer timer).
    func hello() { for p in peers where p.endpoint != nil && p.current == nil && p.pending == nil { p.askHandshake(self) } }

    func tick(now: Double) {
        for p in peers { p.tick(now: now, self) }
        relayTick(now: now)
    }

    /// A response (mac1 already checked) to our initiation `receiver`: the machine and a copy of
    /// its initiator, for `readMessage2` outside the lock; nil (counted) for an unknown index.
    func beginResponse(receiver: UInt32) -> (PeerMachine, Noise.Initiator)? {
        guard let p = byIndex[receiver], let pend = p.pending, pend.index == receiver else { counters.unknownIndex += 1; return nil }
        return (p, pend.initiator)
    }

    /// A cookie reply for our initiation `receiver`: opened with the mac1 we sent, then kept.
    func cookieReply(receiver: UInt32, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, now: Double) {
        guard let p = byIndex[receiver], let pend = p.pending, pend.index == receiver,
              let cookie = HandshakeMAC.openCookie(nonce: nonce, sealed: sealed, mac1: p.lastMac1, key: HandshakeMAC.cookieKey(sender: p.publicKey))
        else { counters.unknownIndex += 1; return }
        p.cookieReceived(cookie, now: now, self)
    }

    /// An initiation whose message 1 was read (outside the lock) from `remoteStatic` with
    /// timestamp `stamp`: the peer when it is configured and the timestamp is newer than any
    /// accepted from it (kept across restarts), else nil (counted).
    func answerable(remoteStatic: [UInt8], stamp: UInt64) -> PeerMachine? {
        guard let p = peer(key: remoteStatic) else { counters.unknownPeer += 1; return nil }
        guard p.admits(stamp: stamp) else { counters.replayedInitiation += 1; return nil }
        return p
    }

    /// The response to that initiation is made (message 2, outside the lock): it gets an index and
    /// its MACs, and goes out after the timestamp is kept.
    func answered(_ p: PeerMachine, stamp: UInt64, sender: UInt32, message: [UInt8], transport: Noise.Transport, from: Route, now: Double) {
        guard peers.contains(where: { $0 === p }), p.admits(stamp: stamp) else { counters.replayedInitiation += 1; return }
        let index = bind(p)
        let wire = TunnelMessage.response(sender: index, receiver: sender, noise: message, mac1Key: p.mac1Key)
        p.answered(stamp: stamp, sender: sender, index: index, transport: transport, response: wire, to: from, now: now, self)
    }

    // MARK: relays

    /// Reload: links whose relay (address and key) stays keep their registration. `cache` (where
    /// peers were last found) picks the relay tried first when there is no home relay yet.
    func configureRelays(_ list: [RelayServerConfig], cache: [[UInt8]: Endpoint] = [:], now: Double = 0) {
        var next: [RelayLink] = []
        for r in list {
            guard let key = Data(base64Encoded: r.publicKey).map(Array.init), key.count == 32 else { continue }
            let ws = r.webSocket == nil ? nil : r
            if let old = relays.first(where: { $0.udpEndpoint == r.address && $0.publicKey == key && $0.token == Array((r.token ?? "").utf8) && $0.webSocket == ws }) {
                next.append(old)
            } else { next.append(RelayLink(endpoint: r.address, publicKey: key, token: r.token, webSocket: ws)) }
        }
        for old in relays where !next.contains(where: { $0 === old }) {
            for p in peers { p.removeRelayPaths(via: old.endpoint) }
            if let f = old.leave() { actions.append(.send(f, to: .direct(old.endpoint))) }
            if old.transport != .udp { actions.append(.closeWebSocket(old)) }
        }
        relays = next
        if let h = home, !relays.contains(where: { $0 === h }) { home = nil }
        preferred = RelayPeerCache.preferred(cache, peers: peers.map(\.publicKey), candidates: relays.map(\.udpEndpoint))
        remembered = cache
        if home == nil { homelessSince = now }
    }

    func relay(at e: Endpoint) -> RelayLink? { relays.first { $0.isAt(e) } }

    /// The relay this node registers at first and stays at: the first that answered, or the one
    /// the peer cache prefers. Others are used on demand (a peer is reached through them, or a
    /// missing peer is searched for there) and left when no longer needed.
    private(set) var home: RelayLink?
    private var preferred: Endpoint?
    /// The peer cache as last written: the relay each peer is reached through.
    private var remembered: [[UInt8]: Endpoint] = [:]
    /// node.callsign (upper case) and whether the device is listed.
    var callsign: (String, Bool)?
    private var homelessSince: Double = 0

    /// How long a direct path counts as working after data came on it; how long a relay other than
    /// home counts as used after the peer's data (or a handshake answer) came through it; how long
    /// one that found none of the missing peers is not searched again.
    static let relayIdle: Double = 30, relayHeard: Double = 10, relaySearchPause: Double = 60

    /// Registrations due (the home relay, relays in use, relays searched for missing peers),
    /// heartbeats, dead relays (their paths go), relays left when unused, lookups (every second for
    /// a missing peer, every 5 s at home for a peer not reached through it).
    private func relayTick(now: Double) {
        if home?.isRegistered != true {
            let registered = relays.filter(\.isRegistered)
            let next = registered.first { $0.endpoint == preferred } ?? registered.min { ($0.registeredAt ?? 0) < ($1.registeredAt ?? 0) }
            if let next, next !== home { actions.append(.log(.info, "home relay: \(next.udpEndpoint)\(next.transport == .webSocket ? " (over its WebSocket)" : "")")) }
            if next == nil && home != nil { homelessSince = now }
            home = next
        }
        for p in peers {
            p.prefer(home: home?.endpoint)
            // The peer cache follows the relay each peer is reached through now.
            if case .relay(let r, _)? = p.route, let link = relay(at: r), remembered[p.publicKey] != link.udpEndpoint {
                remembered[p.publicKey] = link.udpEndpoint
                actions.append(.rememberRelay(key: p.publicKey, relay: link.udpEndpoint))
            }
        }
        // The callsign is claimed at the home relay (again when home changes or after 10 s unanswered).
        if let (name, listed) = callsign, let h = home, h.isRegistered, h.claim == nil, now - h.claimAskedAt >= 10 {
            h.claimAskedAt = now
            if let f = h.frame(.claim, ([listed ? 1 : 0] + Array(name.utf8))[...]) { actions.append(.send(f, to: .direct(h.endpoint))) }
        }
        let recent = now - Self.relayIdle
        let missing = peers.filter { $0.missing(since: recent) }
        for link in relays {
            let inUse = peers.contains { $0.uses(relay: link.endpoint, since: now - Self.relayHeard) }
            let searching = now >= link.standbyUntil && missing.contains { !link.absent.contains($0.publicKey) }
            let wanted: Bool
            if let home { wanted = link === home || inUse || searching }
            // No home: the preferred relay alone for 3 s, then every relay (the first to answer
            // becomes home).
            else { wanted = preferred == nil || link.endpoint == preferred || now - homelessSince >= 3 }
            let (send, register, dead) = link.tick(now: now, wanted: wanted)
            if let send { actions.append(.send(send, to: .direct(link.endpoint))) }
            if register { link.working = true; actions.append(.register(link)) }
            if dead {
                actions.append(.log(.notice, "relay \(link.udpEndpoint) stopped answering: registering again (its paths are gone)"))
                for p in peers { p.removeRelayPaths(via: link.endpoint) }
                if link === home { home = nil; homelessSince = now }
            }
            if link.wantsWebSocket {
                link.openingWebSocket()
                actions.append(.log(.notice, "relay \(link.udpEndpoint): no answer over UDP twice; trying its WebSocket transport (\(link.webSocket?.webSocket ?? ""))"))
                actions.append(.openWebSocket(link))
            }
            if link.transport == .webSocket && link.isRegistered {
                if let p = link.probe, now - p.sentAt >= 5 { link.probe = nil }
                if link.probe == nil && now >= link.nextProbe {
                    link.nextProbe = now + RelayLink.probeInterval
                    actions.append(.probeUDP(link))
                }
            }
            guard link.isRegistered else { continue }
            if !wanted && home != nil && now - (link.registeredAt ?? now) >= 10 {
                // Not home, no peer reached through it, nothing left to search for: leave.
                if let f = link.leave() { actions.append(.send(f, to: .direct(link.endpoint))) }
                link.standbyUntil = missing.isEmpty ? 0 : now + Self.relaySearchPause
                for p in peers { p.removeRelayPaths(via: link.endpoint) }
                actions.append(.log(.info, "left relay \(link.endpoint): not the home relay and no peer is reached through it"))
                continue
            }
            for p in peers {
                let isMissing = missing.contains { $0 === p }
                let ask: Bool
                if link === home { ask = !p.hasRelayPath(via: link.endpoint) }
                else { ask = isMissing && !link.absent.contains(p.publicKey) }
                guard ask, now - (link.lookups[p.publicKey] ?? -10) >= (isMissing ? 1 : 5) else { continue }
                link.lookups[p.publicKey] = now
                if let f = link.frame(.lookup, p.publicKey[...]) { actions.append(.send(f, to: .direct(link.endpoint))) }
            }
        }
    }

    /// The loop made a register for `link` (DH done unlocked).
    func registerMade(_ link: RelayLink, _ initiator: Noise.Initiator, _ noise: [UInt8], now: Double) {
        guard relays.contains(where: { $0 === link }) else { return }
        let wire = link.registerMade(initiator, noise, index: UInt32.random(in: 1...UInt32.max), now: now)
        actions.append(.send(wire, to: .direct(link.endpoint)))
    }

    /// A `registered` from `from` for our pending register (or UDP probe) `receiver`: the link and
    /// a copy of its initiator (message 2 is read outside the lock).
    func beginRegistered(receiver: UInt32, from: Endpoint) -> (RelayLink, Noise.Initiator)? {
        guard let link = relay(at: from) else { counters.unknownIndex += 1; return nil }
        if let p = link.pending, p.index == receiver { return (link, p.initiator) }
        if let p = link.probe, p.index == receiver, from == link.udpEndpoint { return (link, p.initiator) }
        counters.unknownIndex += 1
        return nil
    }

    func registered(_ link: RelayLink, receiver: UInt32, transport: Noise.Transport, grant: RelayGrant, now: Double) {
        if let p = link.probe, p.index == receiver {
            // UDP works again: this registration replaces the one over the WebSocket.
            for peer in peers { peer.removeRelayPaths(via: link.endpoint) }
            link.backOnUDP()
            link.pending = p
            actions.append(.closeWebSocket(link))
            actions.append(.log(.notice, "relay \(link.udpEndpoint): UDP answers again; leaving the WebSocket transport"))
        }
        guard let ping = link.registered(transport, grant: grant, now: now) else { return }
        actions.append(.log(.info, "registered at relay \(link.udpEndpoint)\(link.transport == .webSocket ? " over its WebSocket" : "") as id \(grant.id)"))
        actions.append(.send(ping, to: .direct(link.endpoint)))
        relayTick(now: now)  // lookups at once
    }

    /// A cookie from a relay under load for our pending register: the register again, with mac2.
    func relayCookie(receiver: UInt32, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, from: Endpoint, now: Double) {
        guard let link = relay(at: from), let wire = link.cookieReceived(receiver: receiver, nonce: nonce, sealed: sealed, now: now) else { counters.unknownIndex += 1; return }
        counters.cookiesReceived += 1
        actions.append(.send(wire, to: .direct(link.endpoint)))
    }

    /// The WebSocket transport of `link` is up, its stand-in at `local`: paths over UDP go, and
    /// the link registers over the WebSocket.
    func webSocketReady(_ link: RelayLink, local: Endpoint, now: Double) {
        guard relays.contains(where: { $0 === link }), link.transport == .webSocketOpening else { return }
        for p in peers { p.removeRelayPaths(via: link.endpoint) }
        link.webSocketUp(local: local, now: now)
        if link === home { home = nil; homelessSince = now }
        relayTick(now: now)
    }

    /// The WebSocket transport of `link` failed or closed: back to UDP.
    func webSocketClosed(_ link: RelayLink, reason: String, now: Double) {
        guard relays.contains(where: { $0 === link }), link.transport != .udp else { return }
        for p in peers { p.removeRelayPaths(via: link.endpoint) }
        if link === home { home = nil; homelessSince = now }
        link.webSocketDown(reason, now: now)
        actions.append(.log(.warning, "relay \(link.udpEndpoint): WebSocket transport down (\(reason)); trying UDP again"))
    }

    /// The loop made a UDP probe for `link` (DH unlocked): it goes to the relay's UDP address.
    func probeMade(_ link: RelayLink, _ initiator: Noise.Initiator, _ noise: [UInt8], now: Double) {
        guard relays.contains(where: { $0 === link }), link.transport == .webSocket else { return }
        let index = UInt32.random(in: 1...UInt32.max)
        link.probe = (initiator, index, now)
        actions.append(.send(RelayMessage.register(sender: index, noise: noise, mac1Key: link.mac1Key), to: .direct(link.udpEndpoint)))
    }

    func refused(receiver: UInt32, reason: RelayRefusal, from: Endpoint, now: Double) {
        guard let link = relay(at: from), let p = link.pending, p.index == receiver else { counters.unknownIndex += 1; return }
        link.refused(reason, now: now)
        actions.append(.log(.warning, "relay \(from) refused this node: \(reason)"))
    }

    /// The key to verify a frame from `from` for session `session` with (outside the lock).
    func relayKey(session: UInt32, from: Endpoint) -> (RelayLink, SymmetricKey)? {
        guard let link = relay(at: from), link.isRegistered, link.localIndex == session, let k = link.receiveKey else { counters.unknownIndex += 1; return nil }
        return (link, k)
    }

    /// A verified frame from a relay. A delivered datagram comes back with the route it came by
    /// (the caller hands it to the tunnel as if it came from there).
    func relayFrame(_ link: RelayLink, kind: RelayFrameKind, counter: UInt64, body: ArraySlice<UInt8>, now: Double) -> (ArraySlice<UInt8>, Route)? {
        guard link.accept(counter: counter, now: now) else { counters.authFailed += 1; return nil }
        switch kind {
        case .pong: link.pong(body)
        case .found:
            guard body.count == 36 else { counters.malformed += 1; return nil }
            let key = Array(body.prefix(32)), id = body.suffix(4).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }.littleEndian
            link.absent.remove(key)
            peer(key: key)?.addRelayPath(link.endpoint, id: id, self)
        case .notHere:
            if body.count == 32 { link.absent.insert(Array(body)); peer(key: Array(body))?.removeRelayPaths(via: link.endpoint) }
            else if body.count == 4 {
                let id = body.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }.littleEndian
                for p in peers { p.removeRelayPaths(via: link.endpoint, id: id) }
            }
        case .deliver:
            guard body.count > 4 else { counters.malformed += 1; return nil }
            let id = body.prefix(4).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }.littleEndian
            return (body.dropFirst(4), .relay(link.endpoint, id: id))
        case .claimed:
            guard let code = body.first.flatMap(RelayClaimResult.init(rawValue:)) else { counters.malformed += 1; return nil }
            let name = String(decoding: body.dropFirst(), as: UTF8.self)
            link.claim = (code, name)
            let ok = code == .claimed || code == .alreadyYours
            actions.append(.log(ok ? .info : .error, "relay \(link.udpEndpoint): callsign \(name) \(code)\(ok ? "" : ": choose another node.callsign")"))
        case .forward, .ping, .lookup, .leave, .claim: counters.malformed += 1
        }
        return nil
    }

    /// A datagram for `route`'s relay: framed (forward to the peer's id), or nil when the link is down.
    func forwardFrame(_ bytes: [UInt8], id: UInt32, via relay: Endpoint) -> [UInt8]? {
        guard let link = self.relay(at: relay) else { return nil }
        var body: [UInt8] = []; body.reserveCapacity(4 + bytes.count)
        put32(id, &body); body += bytes
        return link.frame(.forward, body[...])
    }

    /// The initiation for a `.initiate` action: key generation and two DH (outside the lock), the
    /// timestamp in its payload.
    static func makeInitiation(_ staticKey: Curve25519.KeyAgreement.PrivateKey, to remote: [UInt8], now: Double) throws -> (Noise.Initiator, [UInt8]) {
        var ini = try Noise.Initiator(staticKey: staticKey, remoteStatic: remote)
        var stamp = [UInt8](); put64be(UInt64(now * 1e9), &stamp)
        let msg = try ini.writeMessage1(payload: stamp)
        return (ini, msg)
    }

    /// The responder's side of an initiation, outside the lock: message 1 read (DH), its
    /// timestamp. nil when it does not authenticate.
    static func readInitiation(_ staticKey: Curve25519.KeyAgreement.PrivateKey, _ noise: [UInt8]) -> (Noise.Responder, UInt64)? {
        var r = Noise.Responder(staticKey: staticKey)
        guard let payload = try? r.readMessage1(noise), payload.count == 8 else { return nil }
        return (r, payload.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }
}

func put64be(_ v: UInt64, _ out: inout [UInt8]) { for i in (0..<8).reversed() { out.append(UInt8(truncatingIfNeeded: v >> (UInt64(i) * 8))) } }

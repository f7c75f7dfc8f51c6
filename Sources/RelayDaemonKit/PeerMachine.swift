import Crypto
import Logging
import RelayCore
import RelayTunnel

/// Where datagrams to a peer go: straight to its endpoint, or through a relay where it is
/// registered under `id`.
public enum Route: Hashable, Sendable, CustomStringConvertible {
    case direct(Endpoint)
    case relay(Endpoint, id: UInt32)
    public var description: String {
        switch self {
        case .direct(let e): return "direct \(e)"
        case .relay(let e, _): return "relay \(e)"
        }
    }
    var isDirect: Bool { if case .direct = self { return true } else { return false } }
}

/// One way to reach a peer, and when authenticated data last came that way.
public struct PeerPath: Equatable, Sendable {
    public var route: Route
    /// When authenticated data last arrived on this path (0: never).
    public var lastReceived: Double = 0
    public init(_ route: Route) { self.route = route }
}

/// What a state machine asks its loop to do once the shared lock is released, in order. The
/// machines never send, log, write files or do Diffie-Hellman under that lock: they say so here.
enum PeerAction {
    /// Send a datagram on the tunnel socket (through a relay: framed for it).
    case send([UInt8], to: Route)
    /// Start a handshake with the peer: make an initiation (key generation and DH, unlocked), then
    /// hand it to `PeerTable.initiationMade`.
    case initiate(PeerMachine)
    /// Register with a relay: make message 1 (DH, unlocked), then `PeerTable.registerMade`.
    case register(RelayLink)
    /// Keep a peer's initiation timestamp durably: it comes before the response that follows it.
    case persistStamp(key: [UInt8], name: String, stamp: UInt64)
    /// Remember (peer cache) that the peer was found at this relay.
    case rememberRelay(key: [UInt8], relay: Endpoint)
    /// Remember (path cache) that a direct path to the peer was proven.
    case rememberPath(key: [UInt8], endpoint: Endpoint, rtt: Double?)
    /// UDP to this relay is blocked: open its WebSocket transport (or close it: UDP works again).
    case openWebSocket(RelayLink)
    case closeWebSocket(RelayLink)
    /// Over the WebSocket: a register over UDP to see whether UDP works again (DH unlocked).
    case probeUDP(RelayLink)
    /// A packet that left for the peer outside the data path (a queued one): for the flow table.
    case flow([UInt8], peer: String)
    case log(Logger.Level, String)
}

/// Why the machine refused a data message (each one a counter).
enum DataVerdict: Equatable {
    /// Opened and fresh, with a packet to deliver.
    case deliver
    /// Opened and fresh, an empty keepalive.
    case keepalive
    case replay, spoofedSource, notExported
    /// Opened and fresh, a path message (handled here: NAT traversal).
    case path
    /// Opened and fresh, but not a path message this node understands.
    case badPath
}

/// One peer's sessions and timers, as a state machine: events in (a packet to send, handshake
/// messages, authenticated data, a timer tick, a reload), actions out (`PeerAction`), counters
/// changed. Pure: no sockets, no clock, no locks; `PeerTable` and the tunnel's loops drive it. One
/// object per public key for as long as the key is configured (a reload updates it in place, so a
/// session's send counter exists once, in its `TunnelSession`).
final class PeerMachine {
    var name: String
    let publicKey: [UInt8]
    let mac1Key: SymmetricKey
    var prefixes: [IPPrefix]
    /// The paths to the peer, the one to send on first. Empty until the configuration names an
    /// endpoint or the peer proves one.
    private(set) var paths: [PeerPath] = []

    var current: TunnelSession?
    var previous: TunnelSession?
    /// Responder side: a new session not used for sending until the initiator's first packet on it
    /// arrives (otherwise we could send on keys the initiator has not installed yet).
    var next: TunnelSession?
    struct Pending { var initiator: Noise.Initiator; var index: UInt32; var sentAt: Double; var firstAt: Double; var wire: [UInt8] = [] }
    var pending: Pending?
    /// A handshake asked of the loop (`.initiate`) and not made yet: asked once.
    var initiating = false
    var queue: [[UInt8]] = []
    static let queueLimit = 32
    var lastInitiationStamp: UInt64 = 0
    var lastSent: Double = 0
    var lastReceived: Double = 0
    var lastHandshake: Double?
    var rxBytes: UInt64 = 0, txBytes: UInt64 = 0, rxPackets: UInt64 = 0, txPackets: UInt64 = 0
    var latency: Double?
    var nextRetry: Double = 0
    /// When we started sending without hearing back (WireGuard: new handshake after 15 s of that).
    var unansweredSince: Double?
    /// Responder side: when our response went out, and for which session (latency on first data).
    var responseSentAt: (index: UInt32, at: Double)?
    /// Initiator side: the mac1 of our last initiation (a cookie reply is bound to it), and the
    /// cookie the peer gave us under load (used for mac2 for two minutes).
    var lastMac1: [UInt8] = []
    var cookie: (value: [UInt8], at: Double)?
    /// NAT traversal towards this peer: candidates, probes, heartbeats.
    var finder = PathFinder()
    /// The latest time an event carried (choose() runs from events that carry none).
    private var now: Double = 0
    /// Why the route last changed, and when (relayctl peers).
    private(set) var routeChange: (at: Double, why: String)?
    /// Route changes not yet logged (the table logs them).
    var routeNotes: [String] = []

    init(name: String, publicKey: [UInt8], endpoint: Endpoint?, prefixes: [IPPrefix]) {
        self.name = name; self.publicKey = publicKey; self.prefixes = prefixes
        mac1Key = HandshakeMAC.key(receiver: publicKey)
        if let endpoint { paths = [PeerPath(.direct(endpoint))] }
        choose()
    }

    /// Where datagrams to the peer go now: the path authenticated data last came on (a proven
    /// direct path first when two are as recent), else the configured endpoint, else a relay (the
    /// home relay when the peer is reached through it).
    private(set) var route: Route?

    /// The peer's direct endpoint, configured or proven.
    var endpoint: Endpoint? {
        for p in paths { if case .direct(let e) = p.route { return e } }
        return nil
    }

    var state: String { current != nil ? "up" : (pending != nil || initiating ? "handshaking" : (paths.isEmpty ? "waiting for peer" : "idle")) }

    /// This node's home relay: among relay paths, the one through it is taken (relay paths are
    /// interchangeable; sending through home lets the peer move there too and other relays be left).
    private(set) var homeRelay: Endpoint?

    func prefer(home: Endpoint?) {
        guard home != homeRelay else { return }
        homeRelay = home
        choose()
    }

    /// A direct path that authenticated data or a probe's answer proved within paths.trust_seconds.
    var directAlive: PeerPath? {
        paths.first { $0.route.isDirect && $0.lastReceived > 0 && now - $0.lastReceived < finder.settings.trust }
    }

    /// The route: a direct path proven lately; else a relay path (the home relay's when there is
    /// one); else the path authenticated data last came on (a configured endpoint first).
    private func choose() {
        let old = route
        let hasRelay = paths.contains { !$0.route.isDirect }
        if let d = directAlive { route = d.route }
        else if hasRelay { route = paths.filter { !$0.route.isDirect }.max { $0.lastReceived < $1.lastReceived }?.route }
        else { route = paths.max { a, b in a.lastReceived != b.lastReceived ? a.lastReceived < b.lastReceived : (!a.route.isDirect && b.route.isDirect) }?.route }
        if case .relay(let r, _)? = route, r != homeRelay, let h = homeRelay,
           let viaHome = paths.first(where: { if case .relay(let x, _) = $0.route { return x == h } else { return false } }) {
            route = viaHome.route
        }
        guard route != old, let route else { return }
        let why: String
        switch (old, route) {
        case (.relay?, .direct(let e)):
            why = "direct path \(e) proven\(finder.rtt[e].map { String(format: " (round trip %.1f ms)", $0 * 1000) } ?? "")"
        case (.direct(let e)?, .relay):
            let last = paths.first { $0.route == .direct(e) }?.lastReceived ?? 0
            why = last > 0 ? "direct path \(e) unanswered for \(Int(now - last)) s: back to the relay" : "reached through the relay"
        case (nil, _): why = "first path"
        case (.direct?, .direct): why = "the peer's data came from a new address (roaming)"
        case (.relay?, .relay): why = "through another relay"
        }
        routeChange = (now, why)
        if old != nil { routeNotes.append("path to \(name): \(route) (\(why))") }
    }

    // MARK: events

    /// Reload: the configuration's view of the peer. A configured endpoint replaces the direct path;
    /// none keeps what the peer proved.
    func reload(name: String, prefixes: [IPPrefix], endpoint: Endpoint?) {
        self.name = name
        self.prefixes = prefixes
        if let endpoint { setDirect(endpoint, at: nil) }
    }

    /// Authenticated data arrived by `route`: the peer proved it is alive there, so that is where
    /// we send (roaming).
    func proved(_ r: Route, now: Double) {
        self.now = max(self.now, now)
        if r == route, let i = paths.firstIndex(where: { $0.route == r }) { paths[i].lastReceived = now; return }
        switch r {
        case .direct(let e): setDirect(e, at: now)
        case .relay:
            if let i = paths.firstIndex(where: { $0.route == r }) { paths[i].lastReceived = now } else {
                var p = PeerPath(r); p.lastReceived = now; paths.append(p)
            }
            choose()
        }
    }

    private func setDirect(_ e: Endpoint, at now: Double?) {
        if let i = paths.firstIndex(where: { $0.route.isDirect }) {
            paths[i].route = .direct(e)
            if let now { paths[i].lastReceived = now }
        } else {
            var p = PeerPath(.direct(e))
            if let now { p.lastReceived = now }
            paths.insert(p, at: 0)
        }
        choose()
    }

    /// The peer is registered at a relay under `id` (a lookup answered). A handshake in flight
    /// (sent only where the peer did not answer, e.g. a cached direct path) goes this way too at
    /// once, instead of at its 5-second retry.
    func addRelayPath(_ relay: Endpoint, id: UInt32, _ t: PeerTable) {
        paths.removeAll { if case .relay(let r, let i) = $0.route { return r == relay && i != id } else { return false } }
        let route = Route.relay(relay, id: id)
        if !paths.contains(where: { $0.route == route }) {
            paths.append(PeerPath(route))
            if let p = pending, !p.wire.isEmpty { t.actions.append(.send(p.wire, to: route)) }
            // Packets wait for a handshake that had nowhere to go: it goes now.
            else if pending == nil, current == nil, !queue.isEmpty { askHandshake(t) }
        }
        choose()
    }

    /// The relay is gone, or says the peer is not there (any id, or only `id`).
    func removeRelayPaths(via relay: Endpoint, id: UInt32? = nil) {
        paths.removeAll { if case .relay(let r, let i) = $0.route { return r == relay && (id == nil || i == id) } else { return false } }
        choose()
    }

    func hasRelayPath(via relay: Endpoint) -> Bool {
        paths.contains { if case .relay(let r, _) = $0.route { return r == relay } else { return false } }
    }

    /// Traffic to the peer goes through `relay`, or came through it since `since`.
    func uses(relay: Endpoint, since: Double) -> Bool {
        if case .relay(let r, _)? = route, r == relay { return true }
        return paths.contains { if case .relay(let r, _) = $0.route { return r == relay && $0.lastReceived >= since } else { return false } }
    }

    /// Neither a relay path nor a direct path that carried data since `since`: the peer must be
    /// found through a relay.
    func missing(since: Double) -> Bool {
        !paths.contains { p in
            if case .relay = p.route { return true }
            return p.lastReceived >= since && p.lastReceived > 0
        }
    }

    /// What sealing packets for the peer needs: key, first counter, the peer's index, where to.
    struct Reservation {
        let key: SymmetricKey; let counter: UInt64; let remote: UInt32; let to: Route
    }

    /// A packet (or a train of `count` segments, `bytes` in all) from the TUN device for this
    /// peer: counters reserved on the current session (the caller seals), or the packet queued
    /// until a handshake completes (nil).
    func outbound(_ pkt: ArraySlice<UInt8>, count: Int, bytes: Int, now: Double, _ t: PeerTable) -> Reservation? {
        if let s = current, !s.expired(now: now), let to = route {
            let (key, n, remote) = s.reserve(count)
            lastSent = now; txBytes += UInt64(bytes); txPackets += UInt64(count)
            if unansweredSince == nil { unansweredSince = now }
            if s.wantsRekey(now: now) && pending == nil { askHandshake(t) }
            return Reservation(key: key, counter: n, remote: remote, to: to)
        }
        if queue.count >= PeerMachine.queueLimit { queue.removeFirst(); t.counters.queueOverflow += 1 }
        queue.append(Array(pkt))
        if pending == nil { askHandshake(t) }
        return nil
    }

    /// Asks the loop for a handshake (once until it is made), unless there is nowhere to send it:
    /// then the peer will call us.
    func askHandshake(_ t: PeerTable) {
        guard !paths.isEmpty, !initiating else { return }
        initiating = true
        t.actions.append(.initiate(self))
    }

    /// The loop made an initiation (`initiator`, its Noise message): it goes out now with a fresh
    /// index, mac1 and (for two minutes after the peer gave us one) mac2, on every path (the
    /// session starts on the first that answers).
    func initiationMade(_ initiator: Noise.Initiator, _ noise: [UInt8], now: Double, _ t: PeerTable) {
        initiating = false
        guard !paths.isEmpty else { return }
        if let old = pending { t.unbind(old.index) }
        let index = t.bind(self)
        let cookie = self.cookie.flatMap { now - $0.at < 120 ? $0.value : nil }
        let wire = TunnelMessage.initiation(sender: index, noise: noise, mac1Key: mac1Key, cookie: cookie)
        lastMac1 = Array(HandshakeMAC.mac1(of: wire[...]))
        pending = Pending(initiator: initiator, index: index, sentAt: now, firstAt: pending?.firstAt ?? now, wire: wire)
        nextRetry = now + TunnelLimits.rekeyTimeout + Double.random(in: 0...0.333)
        t.counters.handshakesSent += 1
        for p in paths { t.actions.append(.send(wire, to: p.route)) }
    }

    /// Our initiation was answered (the DH already done by the caller, unlocked): the new session
    /// is current, `from` is the peer's endpoint, and queued packets go (or an empty one).
    func responded(_ transport: Noise.Transport, receiver: UInt32, sender: UInt32, from: Route, now: Double, _ t: PeerTable) {
        guard let pend = pending, pend.index == receiver else { t.counters.unknownIndex += 1; return }
        pending = nil
        latency = now - pend.sentAt
        install(TunnelSession(localIndex: receiver, remoteIndex: sender, transport: transport, createdAt: now, isInitiator: true), now: now, t)
        proved(from, now: now)
        t.counters.handshakesCompleted += 1
        // The responder may send only after it hears on the session: queued packets confirm it,
        // else an empty one does (WireGuard's keepalive).
        let queued = !queue.isEmpty
        flush(now: now, t)
        if !queued, let s = current, let to = route {
            t.actions.append(.send(s.seal([][...]), to: to)); lastSent = now
        }
    }

    /// A cookie reply for our pending initiation (already opened by the table): kept, and the
    /// initiation made again at once with mac2 (at most once a second).
    func cookieReceived(_ value: [UInt8], now: Double, _ t: PeerTable) {
        let fresh = cookie.map { now - $0.at >= 1 } ?? true
        cookie = (value, now)
        t.counters.cookiesReceived += 1
        if fresh { askHandshake(t) }
    }

    /// True when an initiation with this timestamp would be accepted (newer than any before).
    func admits(stamp: UInt64) -> Bool { stamp > lastInitiationStamp }

    /// We answered a valid initiation (`transport` from our response, made unlocked). The new
    /// session becomes current at once when there is none; else it waits in `next` until the
    /// initiator uses it. The endpoint does not move here: only authenticated data moves it.
    func answered(stamp: UInt64, sender: UInt32, index: UInt32, transport: Noise.Transport, response: [UInt8], to: Route, now: Double, _ t: PeerTable) {
        lastInitiationStamp = stamp
        let session = TunnelSession(localIndex: index, remoteIndex: sender, transport: transport, createdAt: now, isInitiator: false)
        if current == nil {
            install(session, now: now, t)
        } else {
            if let old = next { t.unbind(old.localIndex) }
            next = session
            t.bind(self, index: index)
            lastHandshake = now
        }
        t.counters.handshakesCompleted += 1
        responseSentAt = (index, now)
        t.actions.append(.persistStamp(key: publicKey, name: name, stamp: stamp))
        t.actions.append(.send(response, to: to))
        flush(now: now, t)
    }

    /// The session a receiver index names, for unlocked decryption.
    func session(_ index: UInt32) -> TunnelSession? {
        if let s = current, s.localIndex == index { return s }
        if let s = previous, s.localIndex == index { return s }
        if let s = next, s.localIndex == index { return s }
        return nil
    }

    /// A data message on `index` that authenticated (opened by the caller, unlocked), `plain` its
    /// packet: replay window, confirmation of a `next` session, roaming, the source and
    /// destination checks. `exported`: what this site lets peers reach.
    func data(index: UInt32, counter: UInt64, from: Route, plain: UnsafeRawBufferPointer, exported: [IPPrefix], now: Double, _ t: PeerTable) -> DataVerdict {
        var fresh = false
        if let s = current, s.localIndex == index { fresh = s.acceptCounter(counter) }
        else if let s = previous, s.localIndex == index { fresh = s.acceptCounter(counter) }
        else if let s = next, s.localIndex == index {
            fresh = s.acceptCounter(counter)
            // Confirmed by the initiator: it becomes the session we send on.
            next = nil
            if fresh { install(s, now: s.createdAt, t) }
        }
        guard fresh else { return .replay }
        self.now = max(self.now, now)
        if let first = plain.first, PathMessage.isPathMessage(first) {
            // Path messages never move the route by themselves (a probe proves the peer can send
            // from somewhere, not that we reach it there): only an answered probe does.
            guard case .success(let m) = PathMessage.parse(plain) else { return .badPath }
            pathMessage(m, from: from, now: now, t)
            return .path
        }
        proved(from, now: now)
        lastReceived = now
        unansweredSince = nil
        if let r = responseSentAt, r.index == index {
            // The initiator confirms a new session at once: response-to-first-data is a round trip.
            latency = now - r.at
            responseSentAt = nil
        }
        if plain.isEmpty { return .keepalive }
        // The inner source must belong to this peer's sites: no peer may speak for another site...
        guard let src = IPHeader.source(plain), prefixes.contains(where: { $0.contains(src) }) else { return .spoofedSource }
        // ... and its destination must be something this site exports.
        guard let dst = IPHeader.destination(plain), exported.contains(where: { $0.contains(dst) }) else { return .notExported }
        rxBytes += UInt64(plain.count); rxPackets += 1
        return .deliver
    }

    /// A packet of ours for the peer outside the data path (an ICMP error back through the
    /// tunnel): sealed on the current session, or nothing when there is none.
    func sealOne(_ pkt: ArraySlice<UInt8>, now: Double, _ t: PeerTable) {
        guard let s = current, let to = route else { return }
        t.actions.append(.send(s.seal(pkt), to: to)); lastSent = now
    }

    /// Every 250 ms: handshake retries and give-up, the no-answer rule, session expiry, passive
    /// keepalives.
    func tick(now: Double, _ t: PeerTable) {
        self.now = max(self.now, now)
        choose()
        // Paths are looked for (and heartbeats sent) only for a peer also reached through a relay:
        // there is something to upgrade from and to fall back to. A peer at a configured endpoint
        // alone is left as WireGuard leaves it.
        if current != nil, paths.contains(where: { !$0.route.isDirect }) {
            let active = max(lastSent, lastReceived) > 0 && now - max(lastSent, lastReceived) < finder.settings.idle
            var tx = t.nextTx
            let out = finder.tick(now: now, route: route, directAlive: directAlive != nil, active: active, tx: { tx &+= 1; return tx })
            t.nextTx = tx
            paths(out, now: now, t)
        }
        for n in routeNotes { t.actions.append(.log(.info, n)) }
        routeNotes.removeAll()
        if let pend = pending, now >= nextRetry {
            if now - pend.firstAt >= TunnelLimits.rekeyAttemptTime {
                t.unbind(pend.index)
                pending = nil
                queue.removeAll()
                t.actions.append(.log(.notice, "handshake with \(name) gave up after \(Int(TunnelLimits.rekeyAttemptTime)) s"))
            } else {
                askHandshake(t)
            }
        }
        if let since = unansweredSince, now - since >= TunnelLimits.keepaliveTimeout + TunnelLimits.rekeyTimeout, pending == nil {
            // We keep sending and hear nothing back: the peer may have restarted and lost our session.
            unansweredSince = nil
            askHandshake(t)
        }
        if let s = current, s.expired(now: now) { t.unbind(s.localIndex); current = nil }
        if let s = previous, s.expired(now: now) { t.unbind(s.localIndex); previous = nil }
        if let s = next, s.expired(now: now) { t.unbind(s.localIndex); next = nil }
        // Passive keepalive: we heard from the peer but have not said anything for a while.
        if let s = current, let to = route, lastReceived > lastSent, now - lastSent >= TunnelLimits.keepaliveTimeout {
            t.actions.append(.send(s.seal([][...]), to: to)); lastSent = now
        }
    }

    /// The peer is no longer configured: its indices go.
    func removed(_ t: PeerTable) {
        for s in [current, previous, next].compactMap({ $0 }) { t.unbind(s.localIndex) }
        if let p = pending { t.unbind(p.index) }
    }

    // MARK: paths

    /// A path message from the peer, authenticated by the session.
    func pathMessage(_ m: PathMessage, from: Route, now: Double, _ t: PeerTable) {
        var tx = t.nextTx
        let out = finder.received(m, from: from, now: now, via: route, ownAddresses: t.ownAddresses, directAlive: directAlive != nil, tx: { tx &+= 1; return tx })
        t.nextTx = tx
        paths(out, now: now, t)
    }

    /// Direct paths that worked before a restart (path cache, best first): the first is tried at
    /// once (the handshake goes there as well as through a relay), all are probed first.
    func cachedPaths(_ list: [Endpoint]) {
        guard !list.isEmpty else { return }
        finder.cached(list)
        if endpoint == nil { paths.insert(PeerPath(.direct(list[0])), at: 0); choose() }
    }

    /// New local candidates (the table's, for every peer).
    func localCandidates(_ list: [PathMessage.Candidate], now: Double) { finder.localCandidates(list, now: now) }

    /// Carries out what the path finder asked: sealed sends, a proven direct path.
    private func paths(_ out: [PathFinder.Output], now: Double, _ t: PeerTable) {
        for o in out {
            switch o {
            case .send(let m, let to):
                guard let s = current else { continue }
                t.actions.append(.send(s.seal(m.bytes[...]), to: to))
                if case .probe = m { t.counters.probesSent += 1 }
            case .proven(let e, let rtt):
                let before = route
                proved(.direct(e), now: now)
                if before != route, route == .direct(e) { t.actions.append(.rememberPath(key: publicKey, endpoint: e, rtt: rtt)) }
            case .note(let n):
                t.actions.append(.log(.info, "paths to \(name): \(n)"))
            }
        }
    }

    // MARK: internals

    /// New current session; the old one stays as previous until it expires.
    private func install(_ s: TunnelSession, now: Double, _ t: PeerTable) {
        if let prev = previous { t.unbind(prev.localIndex) }
        previous = current
        current = s
        t.bind(self, index: s.localIndex)
        lastHandshake = now
        t.actions.append(.log(.debug, "session with \(name) established (index \(s.localIndex), \(s.isInitiator ? "initiator" : "responder"))"))
    }

    /// Packets queued while there was no session go now.
    func flush(now: Double, _ t: PeerTable) {
        guard let s = current, let to = route, !queue.isEmpty else { return }
        for pkt in queue {
            t.actions.append(.send(s.seal(pkt[...]), to: to))
            txBytes += UInt64(pkt.count); txPackets += 1
            t.actions.append(.flow(pkt, peer: name))
        }
        lastSent = now
        queue.removeAll()
    }
}

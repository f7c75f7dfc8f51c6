import RelayCore
import RelayTunnel

/// NAT traversal for one peer, as a state machine (docs/paths.md): candidates exchanged through
/// the session ("call me"), simultaneous probes to the peer's candidates, a direct path proven by
/// an acknowledged probe, heartbeats on it while the session is active. Events in (a tick, a path
/// message, new local candidates), outputs out; the peer's machine seals and sends them and moves
/// its route. Pure: no sockets, no clock, no randomness except what the caller passes.
struct PathFinder {
    /// What it asks of the peer's machine.
    enum Output: Equatable {
        /// Seal this message on the current session and send it by `route`.
        case send(PathMessage, Route)
        /// A probe to `endpoint` was answered: the direct path works both ways (round trip `rtt`).
        case proven(Endpoint, rtt: Double)
        case note(String)
    }

    var settings: PathsConfig
    /// This node's candidates (the same for every peer) and their generation.
    private(set) var local: [PathMessage.Candidate] = []
    private(set) var localGeneration: UInt16 = 0
    /// The peer's candidates as it last told us, and sources its probes came from.
    private(set) var remote: [PathMessage.Candidate] = []
    private(set) var remoteGeneration: UInt16?
    private(set) var peerReflexive: [Endpoint] = []
    /// Direct paths that worked before a restart (path cache), best first: probed in every attempt
    /// until the peer's own candidates replace them.
    private(set) var cachedPaths: [Endpoint] = []
    /// What the peer saw as our address when it answered a probe.
    private(set) var seenAs: Endpoint?
    /// Per target: when the attempt's first probe went, and how many went.
    struct Target: Equatable { var first: Double; var sent: Int }
    private(set) var targets: [Endpoint: Target] = [:]
    /// Probes waiting for an answer: transaction id, target, when sent (the last 64).
    private(set) var outstanding: [(tx: UInt64, to: Endpoint, at: Double)] = []
    /// The attempt in progress (its deadline), when the next may start, when ours were last sent.
    private(set) var attemptDeadline: Double?
    private(set) var attemptStarted: Double = -.infinity
    private(set) var nextAttempt: Double = 0
    private(set) var candidatesSentAt: Double = -.infinity
    /// The generation of our candidates the peer was last sent.
    private(set) var sentGeneration: UInt16?
    private(set) var lastHeartbeat: Double = -.infinity
    /// Round trips measured per endpoint (the last answer).
    private(set) var rtt: [Endpoint: Double] = [:]
    var attempts = 0, successes = 0, failures = 0
    var probesSent = 0, acksSent = 0, acksReceived = 0, unmatchedAcks = 0, candidatesRefused = 0, probesLimited = 0
    /// Probe budget: 50 a second, burst 64 (a peer cannot make this node a scanner).
    private var tokens: Double = 64, tokensAt: Double = 0

    /// When probes to a target go, in seconds after its first (the tick is 250 ms).
    static let schedule: [Double] = [0, 0.25, 0.5, 1, 1.5, 2, 3, 4, 5.5, 7, 8.5]
    static let maxPeerReflexive = 4

    init(settings: PathsConfig = PathsConfig()) { self.settings = settings }

    var attempting: Bool { attemptDeadline != nil }

    mutating func cached(_ list: [Endpoint]) { cachedPaths = Array(list.filter(PathMessage.probeable).prefix(PathMessage.maxCandidates)) }

    /// Every endpoint an attempt probes: the peer's candidates, sources its probes came from, cached paths.
    private var probeTargets: [Endpoint] {
        var out: [Endpoint] = []
        for e in cachedPaths + remote.map(\.endpoint) + peerReflexive where !out.contains(e) { out.append(e) }
        return out
    }

    // MARK: events

    /// New local candidates (addresses changed, a relay or reflector saw us somewhere new): a new
    /// generation, and the next attempt may start at once (migration).
    mutating func localCandidates(_ list: [PathMessage.Candidate], now: Double) {
        let l = Array(list.prefix(PathMessage.maxCandidates))
        guard l != local else { return }
        local = l
        localGeneration &+= 1
        nextAttempt = now
        candidatesSentAt = -.infinity
    }

    /// Every tick while a session is up. `route`: where traffic goes now; `directAlive`: a direct
    /// path is proven and recent; `active`: the session carried traffic lately; `tx`: a fresh
    /// transaction id per probe.
    mutating func tick(now: Double, route: Route?, directAlive: Bool, active: Bool, tx: () -> UInt64) -> [Output] {
        guard settings.holePunching, let route else { return [] }
        var out: [Output] = []
        if case .direct(let e) = route, directAlive {
            attemptDeadline = nil
            // Heartbeat on the direct path while it is used: an answer keeps it trusted.
            if active && now - lastHeartbeat >= settings.heartbeat {
                lastHeartbeat = now
                out += probe(e, now: now, tx: tx())
            }
            return out
        }
        if let d = attemptDeadline, now >= d {
            attemptDeadline = nil
            failures += 1
            nextAttempt = now + settings.retry
            out.append(.note("no direct path found within \(fmt(settings.attempt)) s; staying relayed, next attempt in \(fmt(settings.retry)) s"))
        }
        if !attempting, now >= nextAttempt, !(local.isEmpty && probeTargets.isEmpty) {
            out += begin(now: now, via: route)
        }
        if attempting {
            // Our candidates changed during the attempt (a relay's answer told us our reflexive
            // address): the peer hears the new generation now, not at the next attempt.
            if sentGeneration != localGeneration, !local.isEmpty { out.append(sendCandidates(now: now, via: route)) }
            out += probesDue(now: now, tx: tx)
        }
        return out
    }

    private mutating func sendCandidates(now: Double, via: Route) -> Output {
        candidatesSentAt = now
        sentGeneration = localGeneration
        return .send(.candidates(generation: localGeneration, local), via)
    }

    /// A path message from the peer (authenticated by the session), by `from`. `via`: the route
    /// traffic takes now (answers to candidates go there); `directAlive`: a direct path is proven
    /// and recent (the peer's probes are then its heartbeats, not a reason for an attempt).
    mutating func received(_ m: PathMessage, from: Route, now: Double, via: Route?, ownAddresses: Set<IPAddress>, directAlive: Bool, tx: () -> UInt64) -> [Output] {
        guard settings.holePunching else { return [] }
        var out: [Output] = []
        switch m {
        case .candidates(let g, let list):
            let usable = list.filter { PathMessage.probeable($0.endpoint) && !ownAddresses.contains($0.endpoint.address) }
            candidatesRefused += list.count - usable.count
            let changed = g != remoteGeneration || usable != remote
            remoteGeneration = g
            remote = usable
            // The peer is attempting now: join it (at most every 2 s), and tell it ours.
            if changed || !attempting, !directAlive, now - attemptStarted >= 2, let via { out += begin(now: now, via: via) }
            else if now - candidatesSentAt >= 2 || sentGeneration != localGeneration, !local.isEmpty, let via {
                out.append(sendCandidates(now: now, via: via))
            }
            if attempting { out += probesDue(now: now, tx: tx) }
        case .probe(let t):
            guard case .direct(let src) = from else { return [] }
            // Answer where it came from (that is what opens the way back through our NAT), and
            // probe that source too: the peer's NAT may map it differently for us.
            out.append(.send(.probeAck(tx: t, seen: src), .direct(src)))
            acksSent += 1
            if !peerReflexive.contains(src) && !remote.contains(where: { $0.endpoint == src }) && PathMessage.probeable(src) {
                peerReflexive.append(src)
                if peerReflexive.count > Self.maxPeerReflexive { peerReflexive.removeFirst() }
                if attempting, targets[src] == nil { targets[src] = Target(first: now, sent: 0) }
            }
            if !attempting, !directAlive, now - attemptStarted >= 2, let via { out += begin(now: now, via: via) }
            if attempting { out += probesDue(now: now, tx: tx) }
        case .probeAck(let t, let seen):
            guard let i = outstanding.firstIndex(where: { $0.tx == t }) else { unmatchedAcks += 1; return [] }
            let o = outstanding.remove(at: i)
            acksReceived += 1
            seenAs = seen
            let r = now - o.at
            rtt[o.to] = r
            if attempting {
                attemptDeadline = nil
                successes += 1
                targets = [:]
            }
            out.append(.proven(o.to, rtt: r))
        }
        return out
    }

    // MARK: internals

    /// An attempt starts: our candidates go to the peer by `via`, and every known candidate of the
    /// peer is probed from now on.
    private mutating func begin(now: Double, via: Route) -> [Output] {
        var out: [Output] = []
        attempts += 1
        attemptStarted = now
        attemptDeadline = now + settings.attempt
        targets = [:]
        for e in probeTargets where targets[e] == nil { targets[e] = Target(first: now, sent: 0) }
        if !local.isEmpty { out.append(sendCandidates(now: now, via: via)) }
        return out
    }

    /// Probes whose time has come, within the attempt and the budget.
    private mutating func probesDue(now: Double, tx: () -> UInt64) -> [Output] {
        var out: [Output] = []
        for e in probeTargets where targets[e] == nil { targets[e] = Target(first: now, sent: 0) }
        for (e, t) in targets.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            guard t.sent < Self.schedule.count, now - t.first >= Self.schedule[t.sent] else { continue }
            guard take(now: now) else { probesLimited += 1; break }
            targets[e]?.sent = t.sent + 1
            out += probe(e, now: now, tx: tx())
        }
        return out
    }

    private mutating func probe(_ e: Endpoint, now: Double, tx: UInt64) -> [Output] {
        outstanding.append((tx, e, now))
        if outstanding.count > 64 { outstanding.removeFirst(outstanding.count - 64) }
        probesSent += 1
        return [.send(.probe(tx: tx), .direct(e))]
    }

    private mutating func take(now: Double) -> Bool {
        tokens = min(64, tokens + (now - tokensAt) * 50); tokensAt = now
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }

    private func fmt(_ x: Double) -> String { x == x.rounded() ? "\(Int(x))" : "\(x)" }
}

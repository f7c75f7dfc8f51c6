import Foundation
import RelayCore
import RelayWire

/// relayd's control API: HTTP/1.1 + JSON over a Unix socket, versioned paths, so that
/// `curl --unix-socket /run/relay/relayd.sock http://relay/v1/status` works too.
///
/// | method, path        | permission | body            |
/// | GET /v1/status      | read       | StatusResponse  |
/// | GET /v1/sites       | read       | SitesResponse   |
/// | GET /v1/peers       | read       | PeersResponse   |
/// | GET /v1/paths?peer= | read       | PathsView (404 `paths.no_peer`) |
/// | GET /v1/kernel      | read       | ObservedState (the helper's report) |
/// | GET /v1/config      | read       | RelayConfiguration in force |
/// | POST /v1/reload     | write      | ReloadResponse  |
/// | GET /v1/sessions    | read       | SessionsResponse |
/// | GET /v1/reflect     | read       | ReflectResponse |
/// | GET /v1/relay       | read       | RelayStatusResponse (503 `relay.off` when the role is off) |
/// Errors: a non-2xx status with `{"error": {"code": ..., "message": ...}}`.
public enum ControlRoute: String, CaseIterable, Sendable {
    case status = "/v1/status"
    case sites = "/v1/sites"
    case peers = "/v1/peers"
    case paths = "/v1/paths"
    case kernel = "/v1/kernel"
    case config = "/v1/config"
    case reload = "/v1/reload"
    case sessions = "/v1/sessions"
    case reflect = "/v1/reflect"
    case relay = "/v1/relay"
    case relayDevices = "/v1/relay/devices"
    /// POST ?callsign=NAME
    case relayRelease = "/v1/relay/release"
    /// POST ?list=allow|block&subject=KEY-OR-CALLSIGN&on=true|false
    case relayAdmission = "/v1/relay/admission"

    public var method: String { [.reload, .relayRelease, .relayAdmission].contains(self) ? "POST" : "GET" }
    public var needsWrite: Bool { method == "POST" }
}

public struct ConfigStatus: Codable, Equatable, Sendable {
    /// nil when relayd runs on its embedded default (no file).
    public var path: String?
    public var loadedAt: Date
    public var lastReloadError: String?
    public var lastReloadAttempt: Date?
    public var warnings: [ConfigIssue]
    public init(path: String?, loadedAt: Date, lastReloadError: String? = nil, lastReloadAttempt: Date? = nil, warnings: [ConfigIssue] = []) {
        self.path = path; self.loadedAt = loadedAt; self.lastReloadError = lastReloadError; self.lastReloadAttempt = lastReloadAttempt; self.warnings = warnings
    }
}

public struct HelperLinkStatus: Codable, Equatable, Sendable {
    public var socket: String
    public var connected: Bool
    public var lastError: String?
    public var lastAppliedAt: Date?
    public var connects: Int
    public var device: String?
    public init(socket: String, connected: Bool, lastError: String? = nil, lastAppliedAt: Date? = nil, connects: Int = 0, device: String? = nil) {
        self.socket = socket; self.connected = connected; self.lastError = lastError; self.lastAppliedAt = lastAppliedAt; self.connects = connects; self.device = device
    }
}

/// The packet path as it runs: packet threads (node.threads resolved on this machine), offloads,
/// busy polling, and which ChaCha20-Poly1305 implementation this CPU gets.
public struct PacketPathStatus: Codable, Equatable, Sendable {
    public var threads: Int
    /// The setting: "auto", "1" or "2".
    public var threadsSetting: String
    public var cpus: Int
    public var offload: Bool
    public var busyPollMicroseconds: Int
    /// node.adaptive_poll (used while busy_poll is 0).
    public var adaptivePoll: Bool
    /// "avx512" (relayd's ChaCha20 with libcrypto's Poly1305) or "libcrypto".
    public var aead: String
    public init(threads: Int, threadsSetting: String, cpus: Int, offload: Bool, busyPollMicroseconds: Int, adaptivePoll: Bool = true, aead: String) {
        self.threads = threads; self.threadsSetting = threadsSetting; self.cpus = cpus; self.offload = offload
        self.busyPollMicroseconds = busyPollMicroseconds; self.adaptivePoll = adaptivePoll; self.aead = aead
    }
    enum CodingKeys: String, CodingKey { case threads, threadsSetting, cpus, offload, busyPollMicroseconds, adaptivePoll, aead }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        threads = try c.decode(Int.self, forKey: .threads); threadsSetting = try c.decode(String.self, forKey: .threadsSetting)
        cpus = try c.decode(Int.self, forKey: .cpus); offload = try c.decode(Bool.self, forKey: .offload)
        busyPollMicroseconds = try c.decode(Int.self, forKey: .busyPollMicroseconds)
        adaptivePoll = try c.decodeIfPresent(Bool.self, forKey: .adaptivePoll) ?? false
        aead = try c.decode(String.self, forKey: .aead)
    }
}

public struct StatusResponse: Codable, Equatable, Sendable {
    public var version: String
    public var nodeName: String
    /// The node id: its X25519 public key, base64.
    public var publicKey: String
    public var startedAt: Date
    public var uptimeSeconds: Double
    public var config: ConfigStatus
    public var helper: HelperLinkStatus
    public var sites: Int
    public var peers: Int
    /// The UDP port the peer tunnels listen on.
    public var tunnelPort: UInt16?
    /// Drops and handshakes on the tunnel path.
    public var tunnel: TunnelCounters?
    /// Session bookkeeping totals.
    public var sessions: FlowStats?
    /// The STUN reflector (nil when disabled).
    public var reflector: ReflectorCounters?
    /// How the packet path runs.
    public var packetPath: PacketPathStatus?
    /// The relay role (nil when off) and this node's links to relays.
    public var relay: RelayServerStatus?
    public var relays: [RelayLinkView]?
    /// The TLS front door (nil when off).
    public var frontDoor: FrontDoorStatus?
    public init(version: String, nodeName: String, publicKey: String, startedAt: Date, uptimeSeconds: Double, config: ConfigStatus,
                helper: HelperLinkStatus, sites: Int, peers: Int, tunnelPort: UInt16? = nil, tunnel: TunnelCounters? = nil, sessions: FlowStats? = nil, reflector: ReflectorCounters? = nil,
                packetPath: PacketPathStatus? = nil, relay: RelayServerStatus? = nil, relays: [RelayLinkView]? = nil, frontDoor: FrontDoorStatus? = nil) {
        self.relay = relay; self.relays = relays; self.frontDoor = frontDoor
        self.tunnelPort = tunnelPort; self.tunnel = tunnel; self.sessions = sessions; self.reflector = reflector; self.packetPath = packetPath
        self.version = version; self.nodeName = nodeName; self.publicKey = publicKey; self.startedAt = startedAt; self.uptimeSeconds = uptimeSeconds
        self.config = config; self.helper = helper; self.sites = sites; self.peers = peers
    }
}

public struct SiteView: Codable, Equatable, Sendable {
    /// "self" for this node's site, else the peer's name.
    public var owner: String
    public var name: String
    public var lan4: IPPrefix?
    public var virtual4: IPPrefix?
    public var virtual6: IPPrefix?
    public var lan6: IPPrefix?
    public var virtual6Lan: IPPrefix?
    /// RFC 7757 explicit mappings (own site only).
    public var map: [ExplicitMapping]?
    public init(owner: String, site: SiteConfig) {
        self.owner = owner; name = site.name; lan4 = site.lan4; virtual4 = site.virtual4; virtual6 = site.virtual6
        lan6 = site.lan6; virtual6Lan = site.virtual6Lan; map = site.map.isEmpty ? nil : site.map
    }
    public var site: SiteConfig {
        SiteConfig(name: name, lan4: lan4, virtual4: virtual4, virtual6: virtual6, lan6: lan6, virtual6Lan: virtual6Lan, map: map ?? [])
    }
}

public struct SitesResponse: Codable, Equatable, Sendable {
    public var sites: [SiteView]
    public init(sites: [SiteView]) { self.sites = sites }
}

public struct PeerView: Codable, Equatable, Sendable {
    public var name: String
    public var publicKey: String
    public var endpoint: Endpoint?
    public var sites: [String]
    /// "up", "handshaking", "idle", "waiting for peer" (no endpoint configured, it must call us).
    public var state: String
    public var runtime: PeerRuntime?
    public init(name: String, publicKey: String, endpoint: Endpoint?, sites: [String], state: String, runtime: PeerRuntime? = nil) {
        self.name = name; self.publicKey = publicKey; self.endpoint = endpoint; self.sites = sites; self.state = state; self.runtime = runtime
    }
}

public struct PeersResponse: Codable, Equatable, Sendable {
    public var peers: [PeerView]
    public init(peers: [PeerView]) { self.peers = peers }
}

public struct ReloadResponse: Codable, Equatable, Sendable {
    public var changed: Bool
    /// What changed, one line each ("peer gw-c added", "site B: virtual4 240.2.2.0/24 -> ...").
    public var changes: [String]
    public var warnings: [ConfigIssue]
    public init(changed: Bool, changes: [String], warnings: [ConfigIssue]) { self.changed = changed; self.changes = changes; self.warnings = warnings }
}

public struct ControlErrorBody: Codable, Equatable, Sendable {
    public var error: WireError
    public init(_ e: WireError) { error = e }
}

public enum ControlJSON {
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .iso8601
        e.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return e
    }
    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

/// What changed between two configurations, for reload reports and logs (unchanged peers and
/// sites are not mentioned, and not touched).
public func configChanges(from old: RelayConfiguration, to new: RelayConfiguration) -> [String] {
    var out: [String] = []
    if old.node != new.node { out.append("node: \(describe(old.node)) -> \(describe(new.node))") }
    if old.site != new.site {
        out.append("site: \(old.site.map(describe) ?? "none") -> \(new.site.map(describe) ?? "none")")
    }
    let oldPeers = Dictionary(old.peers.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    let newPeers = Dictionary(new.peers.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    for p in new.peers where oldPeers[p.name] == nil { out.append("peer \(p.name) added") }
    for p in old.peers where newPeers[p.name] == nil { out.append("peer \(p.name) removed") }
    for p in new.peers { if let o = oldPeers[p.name], o != p { out.append("peer \(p.name) changed") } }
    if old.sessions != new.sessions { out.append("sessions: timeouts/cap changed") }
    return out
}

private func describe(_ n: NodeConfig) -> String {
    "name \(n.name), port \(n.listenPort), device \(n.device) mtu \(n.mtu), offload \(n.offload ? "on" : "off"), busy_poll \(n.busyPoll) µs, threads \(n.threads == 0 ? "auto" : String(n.threads))"
}
private func describe(_ s: SiteConfig) -> String {
    "\(s.name) (lan4 \(s.lan4.map { "\($0)" } ?? "-"), virtual4 \(s.virtual4.map { "\($0)" } ?? "-"), virtual6 \(s.virtual6.map { "\($0)" } ?? "-"))"
}

/// A peer's live tunnel state.
public struct PeerRuntime: Codable, Equatable, Sendable {
    public var state: String
    public var endpoint: String?
    /// How datagrams to the peer go now: "direct" or "relay ADDRESS:PORT" (nil: nowhere yet), and
    /// every path known.
    public var path: String?
    public var paths: [String]?
    /// Why the path last changed, and how long ago.
    public var pathChange: String?
    public var pathChangeSecondsAgo: Double?
    public var lastHandshakeSecondsAgo: Double?
    public var rxBytes: UInt64, txBytes: UInt64, rxPackets: UInt64, txPackets: UInt64
    /// Handshake round trip, milliseconds.
    public var latencyMs: Double?
    public init(state: String, endpoint: String?, lastHandshakeSecondsAgo: Double?, rxBytes: UInt64, txBytes: UInt64, rxPackets: UInt64, txPackets: UInt64, latencyMs: Double?) {
        self.state = state; self.endpoint = endpoint; self.lastHandshakeSecondsAgo = lastHandshakeSecondsAgo
        self.rxBytes = rxBytes; self.txBytes = txBytes; self.rxPackets = rxPackets; self.txPackets = txPackets; self.latencyMs = latencyMs
    }
}

public struct SessionsResponse: Codable, Equatable, Sendable {
    public var sessions: [SessionView]
    public var stats: FlowStats
    public init(sessions: [SessionView], stats: FlowStats) { self.sessions = sessions; self.stats = stats }
}

/// A flow with the real (LAN) address of its local side where this site's NETMAP says it.
public struct SessionView: Codable, Equatable, Sendable {
    public var flow: FlowView
    public var localReal: String?
    public var site: String?
    public init(flow: FlowView, localReal: String?, site: String?) { self.flow = flow; self.localReal = localReal; self.site = site }
}

/// Counters of everything dropped on the tunnel path (never a crash, never an answer to strangers).
public struct TunnelCounters: Codable, Equatable, Sendable {
    public var malformed = 0, unknownIndex = 0, authFailed = 0, unknownPeer = 0, replayedInitiation = 0, notExported = 0
    public var spoofedSource = 0, noRoute = 0, queueOverflow = 0, handshakesSent = 0, handshakesCompleted = 0
    /// Handshake messages without a valid mac1 (not made for this node), and valid-looking ones
    /// dropped because the handshake thread's queue was full (a flood).
    public var badMAC = 0, handshakesDropped = 0
    /// Under load: cookie replies sent instead of handshakes (to initiations without a valid mac2),
    /// and cookies this node received from a peer under load.
    public var cookiesSent = 0, cookiesReceived = 0
    /// Packets too big for the path to the peer, answered with ICMP "fragmentation needed"/"packet too big".
    public var tooBig = 0
    /// SIIT (RFC 7915): packets translated IPv6 -> IPv4 (leaving towards a peer) and IPv4 -> IPv6
    /// (arriving for a mapped IPv6 host); packets that could not be translated (answered with an
    /// ICMP error); ICMP errors relayd sent in all (no route, untranslatable, too big), and how
    /// many it held back by its rate limit.
    public var translatedTo4 = 0, translatedTo6 = 0, untranslatable = 0, icmpErrorsSent = 0, icmpErrorsLimited = 0
    /// NAT traversal: probes sent to peers' candidates; path messages that did not parse.
    public var probesSent = 0, badPathMessages = 0
    public init() {}
    enum CodingKeys: String, CodingKey {
        case malformed, unknownIndex, authFailed, unknownPeer, replayedInitiation, notExported, spoofedSource, noRoute, queueOverflow, handshakesSent, handshakesCompleted
        case badMAC, handshakesDropped, cookiesSent, cookiesReceived, tooBig, translatedTo4, translatedTo6, untranslatable, icmpErrorsSent, icmpErrorsLimited, probesSent, badPathMessages
    }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func i(_ k: CodingKeys) throws -> Int { try c.decodeIfPresent(Int.self, forKey: k) ?? 0 }
        malformed = try i(.malformed); unknownIndex = try i(.unknownIndex); authFailed = try i(.authFailed); unknownPeer = try i(.unknownPeer)
        replayedInitiation = try i(.replayedInitiation); notExported = try i(.notExported); spoofedSource = try i(.spoofedSource); noRoute = try i(.noRoute)
        queueOverflow = try i(.queueOverflow); handshakesSent = try i(.handshakesSent); handshakesCompleted = try i(.handshakesCompleted)
        badMAC = try i(.badMAC); handshakesDropped = try i(.handshakesDropped); cookiesSent = try i(.cookiesSent); cookiesReceived = try i(.cookiesReceived)
        tooBig = try i(.tooBig); translatedTo4 = try i(.translatedTo4); translatedTo6 = try i(.translatedTo6); untranslatable = try i(.untranslatable)
        icmpErrorsSent = try i(.icmpErrorsSent); icmpErrorsLimited = try i(.icmpErrorsLimited); probesSent = try i(.probesSent); badPathMessages = try i(.badPathMessages)
    }
}

/// How a node looks for a direct path to one peer (`relayctl paths PEER`).
public struct PathsView: Codable, Equatable, Sendable {
    public struct Candidate: Codable, Equatable, Sendable {
        public var endpoint: String, kind: String
        public init(endpoint: String, kind: String) { self.endpoint = endpoint; self.kind = kind }
    }
    public struct Probe: Codable, Equatable, Sendable {
        public var endpoint: String
        public var sent: Int
        public var roundTripMs: Double?
        public init(endpoint: String, sent: Int, roundTripMs: Double?) { self.endpoint = endpoint; self.sent = sent; self.roundTripMs = roundTripMs }
    }
    public var peer: String
    public var holePunching: Bool
    /// The route now and every path with the seconds since it last proved itself.
    public var route: String?
    public var paths: [String: Double?]
    public var lastChange: String?
    public var lastChangeSecondsAgo: Double?
    public var local: [Candidate]
    public var remote: [Candidate]
    public var peerReflexive: [String]
    /// Our address as the peer saw it when it answered a probe.
    public var seenAs: String?
    public var attempting: Bool
    public var nextAttemptInSeconds: Double?
    /// Direct paths that worked before the last restart (path cache), in the order tried.
    public var cached: [String]?
    public var probes: [Probe]
    public var attempts: Int, successes: Int, failures: Int
    public var probesSent: Int, acksSent: Int, acksReceived: Int, unmatchedAcks: Int, candidatesRefused: Int, probesLimited: Int
    public init(peer: String, holePunching: Bool, route: String?, paths: [String: Double?], lastChange: String?, lastChangeSecondsAgo: Double?,
                local: [Candidate], remote: [Candidate], peerReflexive: [String], seenAs: String?, attempting: Bool, nextAttemptInSeconds: Double?,
                cached: [String]? = nil, probes: [Probe], attempts: Int, successes: Int, failures: Int, probesSent: Int, acksSent: Int, acksReceived: Int,
                unmatchedAcks: Int, candidatesRefused: Int, probesLimited: Int) {
        self.peer = peer; self.holePunching = holePunching; self.route = route; self.paths = paths; self.lastChange = lastChange
        self.lastChangeSecondsAgo = lastChangeSecondsAgo; self.local = local; self.remote = remote; self.peerReflexive = peerReflexive
        self.seenAs = seenAs; self.attempting = attempting; self.nextAttemptInSeconds = nextAttemptInSeconds; self.cached = cached; self.probes = probes
        self.attempts = attempts; self.successes = successes; self.failures = failures; self.probesSent = probesSent; self.acksSent = acksSent
        self.acksReceived = acksReceived; self.unmatchedAcks = unmatchedAcks; self.candidatesRefused = candidatesRefused; self.probesLimited = probesLimited
    }
}


/// What the STUN reflector did.
public struct ReflectorCounters: Codable, Equatable, Sendable {
    public var port: UInt16 = 0
    public var answered = 0, errors = 0, malformed = 0, rateLimited = 0, trackedSources = 0
    /// Answers sent from another address or port, as CHANGE-REQUEST asked (RFC 5780).
    public var changed = 0
    /// With RFC 5780 behaviour discovery: the four transport addresses it answers on.
    public var discoverySockets: [Endpoint]?
    public init() {}
}

/// This node's public address as its peers' reflectors see it, decided by majority vote per family.
public struct ReflectResponse: Codable, Equatable, Sendable {
    public var ipv4: ReflectionVote
    public var ipv6: ReflectionVote
    public var observations: [ReflectionVote.Observation]
    public var reflector: ReflectorCounters?
    /// RFC 5780 mapping, filtering and hairpinning behaviour, when a reflector with a second
    /// address was among those asked.
    public var behaviour: NATBehaviour?
    public init(ipv4: ReflectionVote, ipv6: ReflectionVote, observations: [ReflectionVote.Observation], reflector: ReflectorCounters?, behaviour: NATBehaviour? = nil) {
        self.ipv4 = ipv4; self.ipv6 = ipv6; self.observations = observations; self.reflector = reflector; self.behaviour = behaviour
    }
}


/// What the relay role did (`relayctl relay status`).
public struct RelayServerCounters: Codable, Equatable, Sendable {
    /// Registrations completed (the node proved its key and its address), refused by reason, and
    /// register messages dropped before any Diffie-Hellman (bad mac1, rate limit).
    public var registrations = 0, notAdmitted = 0, rateLimited = 0, full = 0, badMAC = 0, authFailed = 0, replayed = 0
    /// Frames that did not authenticate, from an address other than the node's, for no registration.
    public var badFrames = 0, wrongSource = 0, unknownSession = 0, malformed = 0, oversized = 0
    /// Datagrams forwarded (and bytes), answered "not here", throttled by a node's limits, dropped
    /// because the socket's buffer was full.
    public var forwarded = 0, forwardedBytes: UInt64 = 0, notHere = 0, throttled = 0, sendDropped = 0
    public var lookups = 0, pings = 0, expired = 0, left = 0
    /// Callsign claims received; registrations refused or ended because the store blocks the key;
    /// cookies sent to registers under load (they must come back with it before any DH).
    public var claims = 0, blocked = 0, cookiesSent = 0
    public init() {}
}

public struct RelayServerStatus: Codable, Equatable, Sendable {
    public var port: UInt16
    public var publicKey: String
    public var nodes: Int
    public var pending: Int
    public var maxNodes: Int
    public var counters: RelayServerCounters
    public init(port: UInt16, publicKey: String, nodes: Int, pending: Int, maxNodes: Int, counters: RelayServerCounters) {
        self.port = port; self.publicKey = publicKey; self.nodes = nodes; self.pending = pending; self.maxNodes = maxNodes; self.counters = counters
    }
}

/// One registered node, as its relay sees it.
public struct RelayNodeView: Codable, Equatable, Sendable {
    public var publicKey: String
    public var id: UInt32
    public var address: String
    public var registeredSecondsAgo: Double
    public var lastHeardSecondsAgo: Double
    public var forwarded: Int
    public var throttled: Int
    public init(publicKey: String, id: UInt32, address: String, registeredSecondsAgo: Double, lastHeardSecondsAgo: Double, forwarded: Int, throttled: Int) {
        self.publicKey = publicKey; self.id = id; self.address = address; self.registeredSecondsAgo = registeredSecondsAgo
        self.lastHeardSecondsAgo = lastHeardSecondsAgo; self.forwarded = forwarded; self.throttled = throttled
    }
}

public struct RelayStatusResponse: Codable, Equatable, Sendable {
    public var relay: RelayServerStatus
    public var nodes: [RelayNodeView]
    /// The front door that carries the relay's WebSocket transport (nil when off).
    public var frontDoor: FrontDoorStatus?
    public init(relay: RelayServerStatus, nodes: [RelayNodeView], frontDoor: FrontDoorStatus? = nil) { self.relay = relay; self.nodes = nodes; self.frontDoor = frontDoor }
}

/// This node's link to one relay.
public struct RelayLinkView: Codable, Equatable, Sendable {
    public var address: String
    /// "registered", "registering", "waiting" (backing off), "refused: ..." .
    public var state: String
    public var home: Bool
    public var id: UInt32?
    /// This node's address as the relay sees it.
    public var observed: String?
    public var registeredSecondsAgo: Double?
    public var lastError: String?
    /// "udp", or "websocket" (UDP to the relay is blocked: wss to its front door).
    public var transport: String?
    /// node.callsign at this relay and the relay's answer ("GW-A: claimed", "GW-A: taken by another key").
    public var callsign: String?
    public init(address: String, state: String, home: Bool, id: UInt32?, observed: String?, registeredSecondsAgo: Double?, lastError: String?, transport: String? = nil,
                callsign: String? = nil) {
        self.address = address; self.state = state; self.home = home; self.id = id; self.observed = observed
        self.registeredSecondsAgo = registeredSecondsAgo; self.lastError = lastError; self.transport = transport; self.callsign = callsign
    }
}

/// What the TLS front door did (`relayctl relay status`).
public struct FrontDoorCounters: Codable, Equatable, Sendable {
    /// Connections accepted, refused (per-address cap), closed for slowness (no request within
    /// header_seconds) or idleness; TLS handshakes that failed.
    public var connections = 0, refusedPerAddress = 0, headerTimeouts = 0, idleTimeouts = 0, tlsFailures = 0
    /// Plain requests answered (by HTTP version), not found.
    public var requestsHTTP1 = 0, requestsHTTP2 = 0, notFound = 0
    /// HTTP/2 connections ended for a protocol or abuse error (GOAWAY sent: reset floods, ...).
    public var http2ConnectionErrors = 0
    /// WebSockets opened, refused by their route, ended for a protocol error (unmasked, text,
    /// oversized, malformed); binary messages taken in.
    public var webSocketsOpened = 0, webSocketsRefused = 0, webSocketProtocolErrors = 0, webSocketMessagesIn = 0
    public init() {}
}

public struct FrontDoorStatus: Codable, Equatable, Sendable {
    /// Where it listens ("[::]:443", or "socket activation").
    public var listen: String
    public var port: Int
    public var tls: Bool
    /// The certificate's subject and expiry (nil without TLS).
    public var certificateSubject: String?
    public var certificateNotAfter: String?
    public var connectionsOpen: Int
    public var counters: FrontDoorCounters
    public init(listen: String, port: Int, tls: Bool, certificateSubject: String?, certificateNotAfter: String?, connectionsOpen: Int, counters: FrontDoorCounters) {
        self.listen = listen; self.port = port; self.tls = tls; self.certificateSubject = certificateSubject
        self.certificateNotAfter = certificateNotAfter; self.connectionsOpen = connectionsOpen; self.counters = counters
    }
}

/// `GET /` on the front door (front_door.public_status): what anyone may know about this relayd.
public struct PublicStatus: Codable, Equatable, Sendable {
    public struct Relay: Codable, Equatable, Sendable {
        public var publicKey: String
        public var udpPort: Int
        public var nodes: Int
        public var webSocketNodes: Int
        public var webSocketPath: String
        public init(publicKey: String, udpPort: Int, nodes: Int, webSocketNodes: Int, webSocketPath: String) {
            self.publicKey = publicKey; self.udpPort = udpPort; self.nodes = nodes; self.webSocketNodes = webSocketNodes; self.webSocketPath = webSocketPath
        }
    }
    public var service: String
    public var version: String
    public var uptimeSeconds: Int
    public var relay: Relay?
    public init(service: String, version: String, uptimeSeconds: Int, relay: Relay?) {
        self.service = service; self.version = version; self.uptimeSeconds = uptimeSeconds; self.relay = relay
    }
}

/// A callsign at this relay (`relayctl relay devices`).
public struct DeviceView: Codable, Equatable, Sendable {
    public var callsign: String
    public var publicKey: String
    public var connected: Bool
    /// Seconds since it registered (when connected) and since it was last heard.
    public var connectedSecondsAgo: Double?
    public var lastActivitySecondsAgo: Double?
    public var claimedAt: Date
    public var listed: Bool
    public init(callsign: String, publicKey: String, connected: Bool, connectedSecondsAgo: Double?, lastActivitySecondsAgo: Double?, claimedAt: Date, listed: Bool) {
        self.callsign = callsign; self.publicKey = publicKey; self.connected = connected; self.connectedSecondsAgo = connectedSecondsAgo
        self.lastActivitySecondsAgo = lastActivitySecondsAgo; self.claimedAt = claimedAt; self.listed = listed
    }
}

public struct AdmissionView: Codable, Equatable, Sendable {
    /// "allow" or "block".
    public var list: String
    public var subject: String
    public var addedAt: Date
    public init(list: String, subject: String, addedAt: Date) { self.list = list; self.subject = subject; self.addedAt = addedAt }
}

public struct DevicesResponse: Codable, Equatable, Sendable {
    public var devices: [DeviceView]
    public var admission: [AdmissionView]
    /// Where a corrupt store was moved, and why (nil when it opened cleanly).
    public var storeProblem: String?
    public init(devices: [DeviceView], admission: [AdmissionView], storeProblem: String?) { self.devices = devices; self.admission = admission; self.storeProblem = storeProblem }
}

/// `GET /devices/CALLSIGN` on the front door.
public struct PublicDevice: Codable, Equatable, Sendable {
    public var callsign: String
    public var connected: Bool
    public var connectedSince: Date?
    public var lastActivity: Date?
    /// Services the device publishes through the relay (none yet).
    public var services: [String]
    public init(callsign: String, connected: Bool, connectedSince: Date?, lastActivity: Date?, services: [String]) {
        self.callsign = callsign; self.connected = connected; self.connectedSince = connectedSince; self.lastActivity = lastActivity; self.services = services
    }
}

import Foundation

/// A UDP endpoint: "10.20.20.20:51820" or "[fd00::1]:51820".
public struct Endpoint: Hashable, Sendable, Codable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16
    public init(_ address: IPAddress, port: UInt16) { self.address = address; self.port = port }

    public init?(_ text: String) {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":"),
                  let a = IPv6Address(String(text[text.index(after: text.startIndex)..<close])),
                  let p = UInt16(text[text.index(close, offsetBy: 2)...]), p > 0 else { return nil }
            address = .v6(a); port = p
        } else {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let a = IPv4Address(parts[0]), let p = UInt16(parts[1]), p > 0 else { return nil }
            address = .v4(a); port = p
        }
    }
    public var description: String {
        if case .v6 = address { return "[\(address)]:\(port)" }
        return "\(address):\(port)"
    }
    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let e = Endpoint(s) else { throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an endpoint: \(s)")) }
        self = e
    }
    public func encode(to encoder: Encoder) throws { var c = encoder.singleValueContainer(); try c.encode(description) }
}

/// RFC 7757 explicit address mapping: an IPv6 host of the LAN gets an IPv4 name (a free address
/// of the LAN's IPv4 prefix). Other sites then reach it by that number in the site's virtual4 (and
/// virtual6), and it reaches IPv4 hosts of other sites with that number as its source.
public struct ExplicitMapping: Codable, Hashable, Sendable, CustomStringConvertible {
    public var ipv4: IPv4Address
    public var ipv6: IPv6Address
    public init(ipv4: IPv4Address, ipv6: IPv6Address) { self.ipv4 = ipv4; self.ipv6 = ipv6 }
    public var description: String { "\(ipv4) = \(ipv6)" }
}

/// A site: a LAN behind a gateway and the virtual prefixes the other sites reach it by.
public struct SiteConfig: Codable, Equatable, Sendable {
    public var name: String
    /// The LAN's IPv4 prefix. For a peer's site it is only needed with virtual6 (its IPv6 names
    /// embed LAN addresses); the peer's gateway does the prefix NAT.
    public var lan4: IPPrefix?
    /// The virtual IPv4 prefix (same size as the LAN): LAN host N is virtual host N.
    public var virtual4: IPPrefix?
    /// The virtual IPv6 prefix (RFC 6052 embedding of the LAN's IPv4 addresses).
    public var virtual6: IPPrefix?
    /// The LAN's IPv6 prefix (own site only) and the prefix other sites reach it by (same size,
    /// host bits kept: the kernel's IPv6 prefix NAT, so sites may share one ULA prefix).
    public var lan6: IPPrefix?
    public var virtual6Lan: IPPrefix?
    /// IPv4 names for IPv6 hosts (own site only; RFC 7757).
    public var map: [ExplicitMapping]
    public init(name: String, lan4: IPPrefix? = nil, virtual4: IPPrefix? = nil, virtual6: IPPrefix? = nil,
                lan6: IPPrefix? = nil, virtual6Lan: IPPrefix? = nil, map: [ExplicitMapping] = []) {
        self.name = name; self.lan4 = lan4; self.virtual4 = virtual4; self.virtual6 = virtual6
        self.lan6 = lan6; self.virtual6Lan = virtual6Lan; self.map = map
    }
    enum CodingKeys: String, CodingKey { case name, lan4, virtual4, virtual6, lan6, virtual6Lan, map }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(name: try c.decode(String.self, forKey: .name), lan4: try c.decodeIfPresent(IPPrefix.self, forKey: .lan4),
                  virtual4: try c.decodeIfPresent(IPPrefix.self, forKey: .virtual4), virtual6: try c.decodeIfPresent(IPPrefix.self, forKey: .virtual6),
                  lan6: try c.decodeIfPresent(IPPrefix.self, forKey: .lan6), virtual6Lan: try c.decodeIfPresent(IPPrefix.self, forKey: .virtual6Lan),
                  map: try c.decodeIfPresent([ExplicitMapping].self, forKey: .map) ?? [])
    }

    /// Every prefix other sites' traffic to this site may be addressed to.
    public var virtualPrefixes: [IPPrefix] { [virtual4, virtual6, virtual6Lan].compactMap { $0 } }
}

/// A peer node: identified by its static public key, reached at an endpoint, with sites behind it.
public struct PeerConfig: Codable, Equatable, Sendable {
    public var name: String
    /// X25519 public key, base64 (44 characters), as `relayctl identity` prints it.
    public var publicKey: String
    public var endpoint: Endpoint?
    public var sites: [SiteConfig]
    public init(name: String, publicKey: String, endpoint: Endpoint? = nil, sites: [SiteConfig] = []) {
        self.name = name; self.publicKey = publicKey; self.endpoint = endpoint; self.sites = sites
    }
}

public struct NodeConfig: Codable, Equatable, Sendable {
    public var name: String
    /// UDP port for peer tunnels; 0 picks a free one (tests).
    public var listenPort: UInt16
    public var device: String
    public var mtu: Int
    /// TUN segmentation offload with UDP GSO/GRO on the tunnel socket (node.offload).
    public var offload: Bool
    /// Microseconds the packet loops keep polling after their last packet instead of sleeping
    /// (node.busy_poll; 0 = sleep at once). Lower latency for CPU time, like net.core.busy_poll.
    public var busyPoll: Int
    /// With busy_poll unset: spin briefly after a packet while packets keep coming closer together
    /// than 200 µs, sized from their gaps (node.adaptive_poll, on by default; AdaptivePoll in relayd).
    public var adaptivePoll = true
    /// Packet threads (node.threads): 1 carries both directions, 2 gives the TUN and the UDP
    /// direction a thread each, 0 ("auto") is 1 on machines with two CPUs or fewer, else 2.
    /// busy_poll implies 1.
    public var threads: Int
    /// The callsign this node claims at its home relay (node.callsign), and whether anyone may see
    /// its status there (node.callsign_listed).
    public var callsign: String?
    public var callsignListed = false
    public init(name: String = "relay", listenPort: UInt16 = 51820, device: String = "relay0", mtu: Int = 1408, offload: Bool = true, busyPoll: Int = 0,
                threads: Int = 0) {
        self.name = name; self.listenPort = listenPort; self.device = device; self.mtu = mtu; self.offload = offload; self.busyPoll = busyPoll
        self.threads = threads
    }
    /// How many packet threads relayd runs with this configuration on a machine with `cpus` CPUs.
    public func packetThreads(cpus: Int) -> Int {
        if busyPoll > 0 { return 1 }
        return threads == 0 ? (cpus <= 2 ? 1 : 2) : threads
    }
    enum CodingKeys: String, CodingKey { case name, listenPort, device, mtu, offload, busyPoll, adaptivePoll, threads, callsign, callsignListed }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        listenPort = try c.decode(UInt16.self, forKey: .listenPort)
        device = try c.decode(String.self, forKey: .device)
        mtu = try c.decode(Int.self, forKey: .mtu)
        offload = try c.decodeIfPresent(Bool.self, forKey: .offload) ?? true
        busyPoll = try c.decodeIfPresent(Int.self, forKey: .busyPoll) ?? 0
        adaptivePoll = try c.decodeIfPresent(Bool.self, forKey: .adaptivePoll) ?? true
        threads = try c.decodeIfPresent(Int.self, forKey: .threads) ?? 0
        callsign = try c.decodeIfPresent(String.self, forKey: .callsign)
        callsignListed = try c.decodeIfPresent(Bool.self, forKey: .callsignListed) ?? false
    }
}

/// relayd's whole configuration.
public struct RelayConfiguration: Codable, Equatable, Sendable {
    public var node: NodeConfig
    public var site: SiteConfig?
    public var peers: [PeerConfig]
    /// Session bookkeeping: idle timeouts per protocol and the table's cap.
    public var sessions: FlowLimits
    public var reflector = ReflectorConfig()
    /// The relay role (off by default) and the relays this node may use.
    public var relay = RelayRoleConfig()
    public var relays: [RelayServerConfig] = []
    /// The TLS front door (off by default): WebSocket transport to the relay, the status API.
    public var frontDoor = FrontDoorConfig()
    /// NAT traversal: hole punching and its timers (`[paths]`).
    public var paths = PathsConfig()
    public init(node: NodeConfig = NodeConfig(), site: SiteConfig? = nil, peers: [PeerConfig] = [], sessions: FlowLimits = FlowLimits()) {
        self.node = node; self.site = site; self.peers = peers; self.sessions = sessions
    }
}

/// `[paths]`: how a node finds direct paths to peers it reaches through a relay (docs/paths.md).
public struct PathsConfig: Codable, Equatable, Sendable {
    /// Hole punching (paths.hole_punching; on by default: it exposes nothing).
    public var holePunching = true
    /// One attempt's deadline (paths.attempt_seconds); the pause after a failed one (retry_seconds).
    public var attempt: Double = 10
    public var retry: Double = 30
    /// Heartbeat on a direct path in use (heartbeat_seconds); how long one is trusted without an
    /// answer before traffic goes back to a relay (trust_seconds).
    public var heartbeat: Double = 2
    public var trust: Double = 6.5
    /// A session without traffic for this long stops its heartbeats (idle_seconds).
    public var idle: Double = 60
    public init() {}
}

/// One finding of validation, with the key it is about.
public struct ConfigIssue: Codable, Equatable, Sendable, CustomStringConvertible {
    public enum Severity: String, Codable, Sendable { case error, warning }
    public var severity: Severity
    public var key: String
    public var message: String
    public init(_ severity: Severity, _ key: String, _ message: String) { self.severity = severity; self.key = key; self.message = message }
    public var description: String { "\(severity): \(key): \(message)" }
}

/// RFC 6052 section 2.2: the prefix lengths an IPv4-embedded IPv6 prefix may have.
public let rfc6052Lengths: Set<Int> = [32, 40, 48, 56, 64, 96]

extension RelayConfiguration {
    /// Errors and warnings; each names its key and says what to do.
    public func validate() -> [ConfigIssue] {
        var out: [ConfigIssue] = []
        func err(_ k: String, _ m: String) { out.append(ConfigIssue(.error, k, m)) }
        func warn(_ k: String, _ m: String) { out.append(ConfigIssue(.warning, k, m)) }

        if let other = reflector.otherAddress {
            if let a = reflector.address {
                if a == other { err("reflector.other_address", "must differ from reflector.address (\(a)): RFC 5780 needs two addresses") }
                if a.family != other.family { err("reflector.other_address", "\(other) and reflector.address \(a) must be the same family") }
            } else {
                err("reflector.address", "set the reflector's primary address too when reflector.other_address is set (the address clients use; both are bound)")
            }
            if reflector.port == 0 { err("reflector.port", "must be a fixed port (not 0) when reflector.other_address is set") }
            if reflector.alternatePort == reflector.port { err("reflector.other_port", "must differ from reflector.port (\(reflector.port))") }
        } else if reflector.otherPort != nil {
            err("reflector.other_port", "only means something with reflector.other_address (RFC 5780 needs a second address as well as a second port)")
        }

        if !RelayConfiguration.isDeviceName(node.device) {
            err("node.device", "'\(node.device)' is not a usable device name (1-15 characters of [a-z0-9_-])")
        }
        let anyV6 = site?.virtual6 != nil || peers.contains { $0.sites.contains { $0.virtual6 != nil } }
        if !((anyV6 ? 1280 : 576)...65535).contains(node.mtu) {
            err("node.mtu", "\(node.mtu) is out of range: use \(anyV6 ? 1280 : 576)...65535\(anyV6 ? " (IPv6 needs at least 1280)" : "")")
        }

        var all: [(key: String, site: SiteConfig)] = []
        if let s = site {
            all.append(("site", s))
            if let lan = s.lan4, let v = s.virtual4 {
                if lan.family != .ipv4 { err("site.lan4", "\(lan) is not an IPv4 prefix") }
                if v.family != .ipv4 { err("site.virtual4", "\(v) is not an IPv4 prefix") }
                if lan.length != v.length {
                    err("site.virtual4", "\(v) is /\(v.length) but site.lan4 \(lan) is /\(lan.length): they must be the same size so that host numbers map 1:1")
                }
                if lan.overlaps(v) { err("site.virtual4", "\(v) overlaps the LAN \(lan): pick an unused prefix") }
            } else if s.lan4 != nil || s.virtual4 != nil {
                err(s.lan4 == nil ? "site.lan4" : "site.virtual4", "site.lan4 and site.virtual4 go together: set both")
            }
            out += RelayConfiguration.checkLAN6(s, "site")
            var v4s = Set<IPv4Address>(), v6s = Set<IPv6Address>()
            for (i, m) in s.map.enumerated() {
                let k = "site.map[\(i)]"
                if let lan = s.lan4, !lan.contains(.v4(m.ipv4)) {
                    err("\(k).ipv4", "\(m.ipv4) is outside site.lan4 \(lan): an IPv6 host's IPv4 name is a free address of the LAN")
                }
                if s.lan4 == nil { err("\(k).ipv4", "explicit mappings need site.lan4 and site.virtual4 (the IPv4 names live there)") }
                if !v4s.insert(m.ipv4).inserted { err("\(k).ipv4", "\(m.ipv4) is mapped twice") }
                if !v6s.insert(m.ipv6).inserted { err("\(k).ipv6", "\(m.ipv6) is mapped twice") }
                if let v6 = s.virtual6, v6.contains(.v6(m.ipv6)) { err("\(k).ipv6", "\(m.ipv6) is inside site.virtual6 \(v6): map a real address of the LAN") }
            }
        }
        var names = Set<String>(), keys = Set<String>()
        for (i, p) in peers.enumerated() {
            let k = "peer[\(i)]"
            if !names.insert(p.name).inserted { err("\(k).name", "peer name '\(p.name)' is used twice") }
            if let raw = Data(base64Encoded: p.publicKey), raw.count == 32 {
                if !keys.insert(p.publicKey).inserted { err("\(k).public_key", "the same public key is configured for two peers") }
            } else {
                err("\(k).public_key", "'\(p.publicKey.prefix(60))' is not a key: expected 32 bytes in base64 (44 characters), as `relayctl identity` prints it")
            }
            if p.sites.isEmpty { warn("\(k).site", "peer '\(p.name)' has no sites: no traffic will be routed to it") }
            for (j, s) in p.sites.enumerated() {
                all.append(("\(k).site[\(j)]", s))
                let sk = "\(k).site[\(j)]"
                if let v = s.virtual4, v.family != .ipv4 { err("\(sk).virtual4", "\(v) is not an IPv4 prefix") }
                if let lan = s.lan4 {
                    if lan.family != .ipv4 { err("\(sk).lan4", "\(lan) is not an IPv4 prefix") }
                    if let v = s.virtual4, v.length != lan.length { err("\(sk).lan4", "/\(lan.length) but virtual4 \(v) is /\(v.length): they must be the same size") }
                    if s.virtual6 == nil { warn("\(sk).lan4", "only used with virtual6 (to name the site's hosts in IPv6): set virtual6 or remove it") }
                } else if s.virtual6 != nil {
                    err("\(sk).lan4", "needed with virtual6: the site's IPv6 names embed its LAN's IPv4 addresses (RFC 6052), so set the peer's LAN prefix, e.g. lan4 = \"192.168.1.0/24\"")
                }
                if s.virtual6 != nil && s.virtual4 == nil { err("\(sk).virtual4", "needed with virtual6: translated packets travel as IPv4 between the virtual4 prefixes") }
                if s.lan6 != nil { err("\(sk).lan6", "a peer's IPv6 LAN is its own business: configure only virtual6_lan") }
                if !s.map.isEmpty { err("\(sk).map", "explicit mappings belong in the site's own configuration (its gateway translates)") }
                if let v = s.virtual6Lan, v.family != .ipv6 { err("\(sk).virtual6_lan", "\(v) is not an IPv6 prefix") }
            }
        }
        var siteNames = Set<String>()
        for (k, s) in all {
            if !siteNames.insert(s.name).inserted { err("\(k).name", "site name '\(s.name)' is used twice") }
            if let v6 = s.virtual6 {
                if v6.family != .ipv6 {
                    err("\(k).virtual6", "\(v6) is not an IPv6 prefix")
                } else if !rfc6052Lengths.contains(v6.length) {
                    err("\(k).virtual6", "/\(v6.length) is not an RFC 6052 prefix length: use /32, /40, /48, /56, /64 or /96")
                } else if case .v6(let a) = v6.address, v6.length > 64, (a.low >> 56) & 0xff != 0 {
                    err("\(k).virtual6", "\(v6) has non-zero bits 64-71 (RFC 6052 reserves them): use \(IPv6Address(high: a.high, low: a.low & 0x00ff_ffff_ffff_ffff))/\(v6.length)")
                }
            }
            if let v4 = s.virtual4, IPPrefix("240.0.0.0/4")?.contains(v4.address) == true {
                warn("\(k).virtual4", "\(v4) is class E (240.0.0.0/4): Linux handles it, but Windows and some other hosts refuse it; pick another unused prefix for sites with such hosts")
            }
        }
        if let s = site, let v6 = s.virtual6, v6 == IPPrefix("64:ff9b::/96"), let lan = s.lan4, lan.isPrivateIPv4 {
            warn("site.virtual6", "the well-known prefix 64:ff9b::/96 must not embed private IPv4 addresses (RFC 6052 section 3.1) such as \(lan): use a network-specific prefix, e.g. in 64:ff9b:1::/48 (RFC 8215)")
        }
        // Overlaps between sites' virtual prefixes (and with the own LAN).
        var prefixes: [(String, IPPrefix)] = []
        for (k, s) in all {
            if let v = s.virtual4 { prefixes.append(("\(k).virtual4", v)) }
            if let v = s.virtual6 { prefixes.append(("\(k).virtual6", v)) }
            if let v = s.virtual6Lan { prefixes.append(("\(k).virtual6_lan", v)) }
        }
        if let lan = site?.lan4 { prefixes.append(("site.lan4", lan)) }
        if let lan = site?.lan6 { prefixes.append(("site.lan6", lan)) }
        for i in prefixes.indices {
            for j in prefixes.indices where j > i && prefixes[i].1.overlaps(prefixes[j].1) {
                if prefixes[i].0 == "site.virtual4" && prefixes[j].0 == "site.lan4" { continue }  // reported above
                if prefixes[i].0 == "site.virtual6_lan" && prefixes[j].0 == "site.lan6" { continue }
                err(prefixes[j].0, "\(prefixes[j].1) overlaps \(prefixes[i].0) \(prefixes[i].1): every site needs its own virtual prefixes")
            }
        }
        // The relay role and the relays.
        func isKey(_ s: String) -> Bool { Data(base64Encoded: s)?.count == 32 }
        if relay.enabled && relay.allowedKeys.isEmpty && relay.tokens.isEmpty {
            err("relay.allowed_keys", "the relay is enabled but admits nobody: list node keys in relay.allowed_keys or tokens in relay.tokens")
        }
        for (i, k) in relay.allowedKeys.enumerated() where !isKey(k) {
            err("relay.allowed_keys[\(i)]", "'\(k.prefix(60))' is not a key: expected 32 bytes in base64 (44 characters), as `relayctl identity` prints it")
        }
        for (i, t) in relay.tokens.enumerated() where t.utf8.count < 16 || t.utf8.count > 64 {
            err("relay.tokens[\(i)]", "a token must have 16 to 64 characters (e.g. `openssl rand -base64 24`)")
        }
        if let c = node.callsign, case .failure(let p) = Callsign.normalize(c) { err("node.callsign", "\(p)") }
        if frontDoor.enabled && frontDoor.tls && (frontDoor.certificate.isEmpty || frontDoor.privateKey.isEmpty) {
            err(frontDoor.certificate.isEmpty ? "front_door.certificate" : "front_door.private_key",
                "the front door uses TLS: set front_door.certificate and front_door.private_key to PEM files (`relayctl relay cert --self-signed NAME` makes a pair), or front_door.tls = false on a trusted LAN")
        }
        for (i, r) in relays.enumerated() {
            if !isKey(r.publicKey) { err("relays[\(i)].public_key", "'\(r.publicKey.prefix(60))' is not a key: expected 32 bytes in base64 (44 characters), as `relayctl identity` on the relay prints it") }
            if let t = r.token, t.utf8.count < 16 || t.utf8.count > 64 { err("relays[\(i)].token", "a token must have 16 to 64 characters") }
            if let w = r.webSocket {
                let ok = URLComponents(string: w).map { $0.scheme == "wss" && !($0.host ?? "").isEmpty } ?? false
                if !ok { err("relays[\(i)].websocket", "'\(w.prefix(80))' is not a wss:// URL (e.g. wss://relay.example.org/relay)") }
            }
            if let p = r.spkiSHA256, Data(base64Encoded: p)?.count != 32 {
                err("relays[\(i)].spki_sha256", "must be a SHA-256 in base64 (44 characters), as `relayctl relay cert` prints it")
            }
            if r.webSocket == nil && (r.caFile != nil || r.spkiSHA256 != nil) {
                warn("relays[\(i)].websocket", "ca_file/spki_sha256 are set but websocket is not: they are only used for the WebSocket transport")
            }
        }
        return out
    }

    public var errors: [ConfigIssue] { validate().filter { $0.severity == .error } }

    static func checkLAN6(_ s: SiteConfig, _ k: String) -> [ConfigIssue] {
        var out: [ConfigIssue] = []
        guard s.lan6 != nil || s.virtual6Lan != nil else { return out }
        guard let lan = s.lan6, let v = s.virtual6Lan else {
            return [ConfigIssue(.error, s.lan6 == nil ? "\(k).lan6" : "\(k).virtual6_lan", "\(k).lan6 and \(k).virtual6_lan go together: set both")]
        }
        if lan.family != .ipv6 { out.append(ConfigIssue(.error, "\(k).lan6", "\(lan) is not an IPv6 prefix")) }
        if v.family != .ipv6 { out.append(ConfigIssue(.error, "\(k).virtual6_lan", "\(v) is not an IPv6 prefix")) }
        if lan.length != v.length {
            out.append(ConfigIssue(.error, "\(k).virtual6_lan", "\(v) is /\(v.length) but \(k).lan6 \(lan) is /\(lan.length): they must be the same size so that host bits map 1:1"))
        }
        if lan.overlaps(v) { out.append(ConfigIssue(.error, "\(k).virtual6_lan", "\(v) overlaps the LAN \(lan): pick an unused prefix")) }
        return out
    }

    public static func isDeviceName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 15 && s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }

    /// What this configuration asks of the kernel (through the helper).
    public var desiredKernelState: DesiredKernelState {
        var nat = NATState()
        if let s = site, let lan = s.lan4, let v = s.virtual4 {
            nat.dnat = [PrefixMapping(v, lan)]
            nat.snat = [PrefixMapping(lan, v)]
        }
        if let s = site, let lan = s.lan6, let v = s.virtual6Lan {
            nat.dnat.append(PrefixMapping(v, lan))
            nat.snat.append(PrefixMapping(lan, v))
        }
        var routes: [RouteSpec] = []
        for p in peers {
            for s in p.sites {
                if let v = s.virtual4 { nat.remote.append(v); routes.append(RouteSpec(v, device: node.device)) }
                // RFC 6052 names are translated by relayd (no kernel NAT); the IPv6 LAN prefix is
                // NATed by the kernel like virtual4.
                if let v = s.virtual6 { routes.append(RouteSpec(v, device: node.device)) }
                if let v = s.virtual6Lan { nat.remote.append(v); routes.append(RouteSpec(v, device: node.device)) }
            }
        }
        let needsDevice = site != nil || !peers.isEmpty
        return DesiredKernelState(nat: nat, routes: routes, device: needsDevice ? DeviceSpec(name: node.device, mtu: node.mtu, offload: node.offload) : nil)
    }
}

/// The kernel state a configuration implies.
public struct DesiredKernelState: Codable, Equatable, Sendable {
    public var nat: NATState
    public var routes: [RouteSpec]
    public var device: DeviceSpec?
    public init(nat: NATState, routes: [RouteSpec], device: DeviceSpec?) { self.nat = nat; self.routes = routes; self.device = device }
}

extension IPPrefix {
    /// RFC 1918, CGNAT (RFC 6598), link-local, loopback.
    public var isPrivateIPv4: Bool {
        guard family == .ipv4 else { return false }
        return ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8"]
            .compactMap { IPPrefix($0) }.contains { $0.contains(address) && $0.length <= length }
    }
}

/// The STUN reflector: on by default on UDP 3478 (and always on the tunnel port while enabled).
public struct ReflectorConfig: Codable, Equatable, Sendable {
    public var enabled = true
    /// 0 picks a free port (tests).
    public var port: UInt16 = 3478
    /// Requests per second per source, and the burst.
    public var rate: Double = 20
    public var burst: Double = 40
    /// Extra reflectors to ask for this node's public address (besides the peers), e.g. a STUN
    /// server of your own. Never a public one by default.
    public var servers: [Endpoint] = []
    /// RFC 5780 behaviour discovery: with a second address configured, the reflector answers on four
    /// sockets (address and other_address, each on port and other_port), adds OTHER-ADDRESS and
    /// RESPONSE-ORIGIN, and honours CHANGE-REQUEST, so NAT-discovery clients can classify a NAT.
    public var address: IPAddress?
    public var otherAddress: IPAddress?
    /// Defaults to port + 1.
    public var otherPort: UInt16?
    /// The client side's STUN retransmission (RFC 8489 section 6.2.1): first RTO, and how many
    /// requests in all (Rc); a transaction gives up 16 RTOs (Rm) after the last one.
    public var rtoMilliseconds = 500
    public var retransmissions = 7
    /// Seconds between re-checks of the public address and NAT behaviour.
    public var interval = 60
    public init() {}

    public static func with(port: UInt16) -> ReflectorConfig { var c = ReflectorConfig(); c.port = port; return c }

    /// The second port of an RFC 5780 reflector.
    public var alternatePort: UInt16 { otherPort ?? (port == 65535 ? 3479 : port + 1) }
    /// True when configured for RFC 5780 behaviour discovery.
    public var discovery: Bool { otherAddress != nil }
}

/// The relay role: forwarding sealed node-to-node datagrams for registered nodes. Off by default (it
/// exposes something); admission is closed: only listed keys, or nodes that present a listed token.
public struct RelayRoleConfig: Codable, Equatable, Sendable {
    public var enabled = false
    /// UDP port of the relay (0 picks a free one: tests).
    public var port: UInt16 = 51821
    /// Node public keys (base64) admitted without a token.
    public var allowedKeys: [String] = []
    /// Bearer tokens (at least 16 characters) that admit any key.
    public var tokens: [String] = []
    /// Registered nodes at most (pending registrations included).
    public var maxNodes = 10_000
    /// What one node may have forwarded: bytes and datagrams per second (token buckets, a second's
    /// burst). 1 Gbit/s by default: a gateway carries a site's traffic.
    public var nodeBytesPerSecond = 125_000_000
    public var nodeDatagramsPerSecond = 150_000
    /// Registrations per second from one address (failed ones count five times).
    public var registrationsPerSecond = 5
    /// Seconds between a node's heartbeats (the relay tells the node at registration).
    public var heartbeatSeconds = 2
    /// Callsigns one key may hold, and the days after which an unused one is released.
    public var callsignQuota = 3
    public var callsignReleaseDays = 90
    public init() {}
}

extension Endpoint {
    /// A stream connection (a WebSocket to the relay) standing in for a UDP source: an address in
    /// 100::/64 (RFC 6666, discard-only: never a real source) holding the connection's number, port 0.
    public static func stream(_ n: UInt64) -> Endpoint { Endpoint(.v6(IPv6Address(high: 0x0100_0000_0000_0000, low: n)), port: 0) }

    /// The connection number of a `stream` endpoint; nil for a network endpoint.
    public var streamNumber: UInt64? {
        if port == 0, case .v6(let a) = address, a.high == 0x0100_0000_0000_0000 { return a.low }
        return nil
    }
}

/// The TLS front door: one listener (TLS 1.3, ALPN h2 and http/1.1) whose routes later work
/// plugs into. Off until configured: it exposes something.
public struct FrontDoorConfig: Codable, Equatable, Sendable {
    public var enabled = false
    /// Where to listen when systemd does not pass a socket (LISTEN_FDS): "[::]:443" by default.
    public var listen = Endpoint(.v6(IPv6Address(high: 0, low: 0)), port: 443)
    /// TLS with `certificate` and `privateKey` (PEM files, reread on SIGHUP). false: plain HTTP/1.1
    /// (ws://), for a relay on a trusted LAN only; relayd warns at start.
    public var tls = true
    public var certificate = ""
    public var privateKey = ""
    /// `GET /` answers everyone with a summary (false: only the control socket shows it).
    public var publicStatus = true
    /// Connections one address may hold open.
    public var maxConnectionsPerAddress = 32
    /// Seconds a connection may take to send its first request (slow clients), and may stay silent.
    public var headerSeconds = 10
    public var idleSeconds = 60
    /// The largest WebSocket message (and frame) taken, in bytes.
    public var maxMessageBytes = 16384
    /// HTTP/2 streams one connection may have open at once.
    public var maxStreams = 100
    public init() {}
}

/// A relay this node may use: its address, its public key (pinned), a token when it asks for one.
public struct RelayServerConfig: Codable, Equatable, Sendable {
    public var address: Endpoint
    public var publicKey: String
    public var token: String?
    /// The relay's front door, `wss://HOST[:PORT]/relay`: used when UDP to `address` is blocked.
    public var webSocket: String?
    /// How the front door's certificate is checked: a PEM CA bundle (default: the system's), or
    /// the SHA-256 of its public key (SPKI, base64, as `relayctl relay cert` prints it).
    public var caFile: String?
    public var spkiSHA256: String?
    public init(address: Endpoint, publicKey: String, token: String? = nil, webSocket: String? = nil, caFile: String? = nil, spkiSHA256: String? = nil) {
        self.address = address; self.publicKey = publicKey; self.token = token
        self.webSocket = webSocket; self.caFile = caFile; self.spkiSHA256 = spkiSHA256
    }
}

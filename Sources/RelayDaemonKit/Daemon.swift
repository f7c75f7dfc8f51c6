import Foundation
import Logging
import RelayConfig
import RelayControlAPI
import RelayFrontDoor
import RelayStore
import RelayCore
import RelayIPC
import RelayTunnel
import RelayWire

public struct DaemonOptions: Sendable {
    public var configPath: String
    /// True when --config was given: a missing file is then an error, not "use the default".
    public var configExplicit: Bool
    public var stateDirectory: String
    public var controlSocket: String
    public var helperSocket: String
    /// Members of this group may read (status, sites, ...). Changing needs root or relayd's own uid.
    public var readGroup: String
    public init(configPath: String, configExplicit: Bool, stateDirectory: String, controlSocket: String, helperSocket: String, readGroup: String) {
        self.configPath = configPath; self.configExplicit = configExplicit; self.stateDirectory = stateDirectory
        self.controlSocket = controlSocket; self.helperSocket = helperSocket; self.readGroup = readGroup
    }
}

/// relayd: configuration in force, identity, the helper link; answers the control API.
public final class Daemon: @unchecked Sendable {
    public let options: DaemonOptions
    public let identity: NodeIdentity
    let logger: Logger
    let startedAt = Date()
    private let lock = NSLock()
    private var config: RelayConfiguration
    private var configStatus: ConfigStatus
    public let helper: HelperLink
    public let flows = FlowTable()
    public private(set) var tunnel: TunnelService!
    public private(set) var reflector: ReflectorService?
    private(set) var relayServer: RelayServer?
    private(set) var frontDoor: FrontDoor?

    /// Loads the configuration (or the embedded default) and the identity. Throws with a message
    /// that says what to fix; nothing is started yet.
    public init(options: DaemonOptions, logger: Logger) throws {
        self.options = options
        self.logger = logger
        let (cfg, status) = try Daemon.loadConfig(options)
        config = cfg
        configStatus = status
        let (id, created) = try NodeIdentity.loadOrCreate(directory: options.stateDirectory)
        identity = id
        if created { logger.notice("generated node identity \(id.publicKeyBase64) in \(options.stateDirectory)/private.key") }
        helper = HelperLink(socketPath: options.helperSocket, logger: logger)
        for w in status.warnings { logger.warning("config \(w.key): \(w.message)") }
        let link = helper
        tunnel = TunnelService(identity: id, logger: logger, flows: flows, tun: { link.tunHandle })
        tunnel.initiationStamps = InitiationStamps(directory: options.stateDirectory)
        tunnel.relayPeerCache = RelayPeerCache(directory: options.stateDirectory)
        tunnel.pathCache = PathCache(directory: options.stateDirectory)
        if let p = tunnel.pathCache.problem { logger.warning("\(p)") }
    }

    static func loadConfig(_ o: DaemonOptions) throws -> (RelayConfiguration, ConfigStatus) {
        guard FileManager.default.fileExists(atPath: o.configPath) else {
            if o.configExplicit {
                throw ConfigError(file: o.configPath, issues: [ConfigIssue(.error, "file", "does not exist: create it (annotated example: contrib/relayd.toml) or leave out --config to run on the embedded default")])
            }
            return (RelayConfiguration(), ConfigStatus(path: nil, loadedAt: Date()))
        }
        guard let text = try? String(contentsOfFile: o.configPath, encoding: .utf8) else {
            throw ConfigError(file: o.configPath, issues: [ConfigIssue(.error, "file", "cannot be read (permissions?)")])
        }
        let (cfg, warnings) = try ConfigFile.parse(text, file: o.configPath)
        return (cfg, ConfigStatus(path: o.configPath, loadedAt: Date(), warnings: warnings))
    }

    public var currentConfig: RelayConfiguration { lock.lock(); defer { lock.unlock() }; return config }

    /// Starts the STUN reflector (when configured), the peer tunnels, then the helper link.
    /// Throws when a port cannot be bound. (relayd runs them as services: `run(control:)`.)
    public func start() throws {
        try startReflector()
        try startRelay()
        try startFrontDoor()
        try startTunnel()
        startHelper()
    }

    func startReflector() throws {
        let cfg = currentConfig
        guard cfg.reflector.enabled else { return }
        let r = ReflectorService(logger: logger, rate: cfg.reflector.rate, burst: cfg.reflector.burst)
        try r.start(cfg.reflector)
        reflector = r
        tunnel.reflector = r
    }

    /// The relay role, when configured (off by default).
    func startRelay() throws {
        let cfg = currentConfig
        guard cfg.relay.enabled else { return }
        var store: RelayStore?
        do {
            store = try RelayStore(directory: options.stateDirectory)
            if let aside = store?.setAside {
                logger.error("relay store \(options.stateDirectory)/relay.sqlite was corrupt (\(aside.reason)): kept aside as \(aside.path) and a new one started; callsigns and admission lists are empty until you restore them")
            }
        } catch {
            logger.error("relay store \(options.stateDirectory)/relay.sqlite cannot be opened (\(error)): callsigns and admission lists are unavailable; claims are answered 'unavailable'")
        }
        let r = RelayServer(identity: identity, config: cfg.relay, logger: logger, store: store)
        r.adaptivePolling.store(cfg.node.adaptivePoll, ordering: .relaxed)
        try r.start(port: cfg.relay.port)
        relayServer = r
    }

    /// The TLS front door, when configured (off by default): the relay's WebSocket route when the
    /// relay role is on, and the status page.
    func startFrontDoor() throws {
        let cfg = currentConfig
        guard cfg.frontDoor.enabled else {
            if SocketActivation.passed { logger.warning("systemd passed a listening socket (relayd.socket) but the front door is off: set [front_door] enabled = true, or disable relayd.socket") }
            return
        }
        var routes = FrontDoorRoutes()
        if let r = relayServer {
            routes.webSockets["/relay"] = RelayWebSocketEndpoint(server: r)
            routes.plain["/devices/"] = { [weak r] req in
                let name = String(req.path.dropFirst("/devices/".count).split(separator: "?").first ?? "")
                let auth = req.headers.first { $0.0.lowercased() == "authorization" }?.1
                guard let r, let d = r.publicDevice(name.removingPercentEncoding ?? name, authorization: auth) else {
                    return .error(404, "not_found", "no listed device \(name.prefix(40)) (a device that is not listed is shown only with one of the relay's tokens: Authorization: Bearer TOKEN)")
                }
                return .json(d)
            }
        }
        if cfg.frontDoor.publicStatus {
            routes.plain["/"] = { [weak self] _ in
                guard let self else { return .error(503, "stopping", "relayd is stopping") }
                return .json(self.publicSummary())
            }
        }
        let door: FrontDoor
        do { door = try FrontDoor(config: cfg.frontDoor, routes: routes, logger: logger) } catch { throw StartFailure(description: "\(error)") }
        do { try door.start() } catch { door.stop(); throw StartFailure(description: "\(error)") }
        frontDoor = door
    }

    /// `GET /` on the front door (front_door.public_status): what anyone may know.
    func publicSummary() -> PublicStatus {
        let relay = relayServer?.status
        return PublicStatus(service: "relayd", version: RelayVersion.string, uptimeSeconds: Int(Date().timeIntervalSince(startedAt)),
                            relay: relay.map { PublicStatus.Relay(publicKey: $0.publicKey, udpPort: Int($0.port), nodes: $0.nodes, webSocketNodes: relayServer?.streamCount ?? 0,
                                                                  webSocketPath: "/relay") })
    }

    func relayStatus() -> RelayStatusResponse? {
        guard let r = relayServer else { return nil }
        return RelayStatusResponse(relay: r.status, nodes: r.nodes(), frontDoor: frontDoor?.status)
    }

    func startTunnel() throws {
        let cfg = currentConfig
        tunnel.configure(cfg)
        flows.setLimits(cfg.sessions)
        try tunnel.start(port: cfg.node.listenPort)
    }

    func startHelper() {
        helper.start()
        helper.setDesired(currentConfig.desiredKernelState)
    }

    public func stop() { tunnel.stop(); frontDoor?.stop(); relayServer?.stop(); reflector?.stop(); helper.stop() }

    /// Re-reads the configuration. A valid one is applied as a diff; an invalid one is refused and
    /// the running configuration stays in force.
    private let reloading = NSLock()

    public func reload(trigger: String) -> Result<ReloadResponse, WireError> {
        // One reload at a time (SIGHUP and relayctl reload may come together): each applies a whole
        // configuration to the helper link and the tunnel, never half of two.
        reloading.lock(); defer { reloading.unlock() }
        lock.lock()
        let old = config
        configStatus.lastReloadAttempt = Date()
        lock.unlock()
        let loaded: (RelayConfiguration, ConfigStatus)
        do { loaded = try Daemon.loadConfig(options) } catch {
            let message = "\(error)"
            lock.lock(); configStatus.lastReloadError = message; lock.unlock()
            logger.error("reload (\(trigger)) refused, the running configuration stays in force: \(message)")
            return .failure(WireError("config.invalid", message + "\nthe running configuration stays in force"))
        }
        let changes = configChanges(from: old, to: loaded.0)
        lock.lock()
        config = loaded.0
        configStatus = loaded.1
        lock.unlock()
        if !changes.isEmpty || loaded.0.desiredKernelState != old.desiredKernelState {
            helper.setDesired(loaded.0.desiredKernelState)
        }
        tunnel.configure(loaded.0)
        flows.setLimits(loaded.0.sessions)
        relayServer?.configure(loaded.0.relay)
        relayServer?.adaptivePolling.store(loaded.0.node.adaptivePoll, ordering: .relaxed)
        if let door = frontDoor {
            do { try door.reloadCertificate() } catch { logger.error("reload (\(trigger)): the front door keeps its certificate: \(error)") }
            var a = old.frontDoor, b = loaded.0.frontDoor
            (a.certificate, a.privateKey, b.certificate, b.privateKey) = ("", "", "", "")
            if a != b || loaded.0.frontDoor.certificate != old.frontDoor.certificate || loaded.0.frontDoor.privateKey != old.frontDoor.privateKey {
                logger.warning("front_door settings other than the certificate's contents changed: they take effect when relayd restarts")
            }
        } else if loaded.0.frontDoor.enabled {
            logger.warning("front_door.enabled changed: it takes effect when relayd restarts")
        }
        if loaded.0.relay.enabled != old.relay.enabled || loaded.0.relay.port != old.relay.port {
            logger.warning("relay.enabled or relay.port changed: it takes effect when relayd restarts")
        }
        if loaded.0.node.listenPort != old.node.listenPort {
            logger.warning("node.listen_port changed: it takes effect when relayd restarts")
        }
        var oldR = old.reflector, newR = loaded.0.reflector
        (oldR.servers, oldR.rtoMilliseconds, oldR.retransmissions, oldR.interval) = (newR.servers, newR.rtoMilliseconds, newR.retransmissions, newR.interval)
        if oldR != newR { logger.warning("the reflector's sockets or limits changed: they take effect when relayd restarts") }
        logger.notice("reload (\(trigger)): \(changes.isEmpty ? "no changes" : changes.joined(separator: "; "))")
        return .success(ReloadResponse(changed: !changes.isEmpty, changes: changes, warnings: loaded.1.warnings))
    }

    public func status() -> StatusResponse {
        lock.lock(); defer { lock.unlock() }
        return StatusResponse(version: RelayVersion.string, nodeName: config.node.name, publicKey: identity.publicKeyBase64, startedAt: startedAt,
                              uptimeSeconds: Date().timeIntervalSince(startedAt), config: configStatus, helper: helper.snapshot,
                              sites: (config.site == nil ? 0 : 1) + config.peers.reduce(0) { $0 + $1.sites.count }, peers: config.peers.count,
                              tunnelPort: tunnel.port, tunnel: tunnel.countersSnapshot(), sessions: flows.stats(), reflector: reflector?.snapshot,
                              packetPath: packetPathStatus, relay: relayServer?.status, relays: config.relays.isEmpty ? nil : tunnel.relayViews(),
                              frontDoor: frontDoor?.status)
    }

    var packetPathStatus: PacketPathStatus {
        let n = config.node, cpus = ProcessInfo.processInfo.activeProcessorCount
        return PacketPathStatus(threads: n.packetThreads(cpus: cpus), threadsSetting: n.threads == 0 ? "auto" : String(n.threads), cpus: cpus,
                                offload: n.offload, busyPollMicroseconds: n.busyPoll, adaptivePoll: n.adaptivePoll, aead: Noise.implementation)
    }

    public func sites() -> SitesResponse {
        let c = currentConfig
        var out: [SiteView] = c.site.map { [SiteView(owner: "self", site: $0)] } ?? []
        for p in c.peers { out += p.sites.map { SiteView(owner: p.name, site: $0) } }
        return SitesResponse(sites: out)
    }

    public func peers() -> PeersResponse {
        let live = tunnel.peerViews()
        return PeersResponse(peers: currentConfig.peers.map {
            PeerView(name: $0.name, publicKey: $0.publicKey, endpoint: $0.endpoint, sites: $0.sites.map(\.name),
                     state: live[$0.name]?.state ?? "configured", runtime: live[$0.name])
        })
    }

    public func reflect() -> ReflectResponse {
        let obs = tunnel.reflection()
        return ReflectResponse(ipv4: ReflectionVote.decide(obs.filter { $0.mapped.address.family == .ipv4 }),
                               ipv6: ReflectionVote.decide(obs.filter { $0.mapped.address.family == .ipv6 }),
                               observations: obs, reflector: reflector?.snapshot, behaviour: tunnel.behaviourSnapshot())
    }

    /// The flows the tunnel carries, with the LAN address of the local side where this site maps it.
    public func sessions() -> SessionsResponse {
        let (flows, stats) = self.flows.snapshot()
        let site = currentConfig.site
        return SessionsResponse(sessions: flows.map { f in
            var real: String?
            if let s = site, let v = s.virtual4, let lan = s.lan4, let a = IPAddress(f.localVirtual), let r = v.map(a, into: lan) { real = "\(r)" }
            return SessionView(flow: f, localReal: real, site: site?.name)
        }, stats: stats)
    }
}

import Crypto
import Foundation
import Synchronization
import Logging
import RelayControlAPI
import RelayCore
import RelayFrontDoor
import NIOConcurrencyHelpers
import RelayTunnel
import RelayIPC
import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// A translator held by reference (immutable once made).
final class TranslatorRef: @unchecked Sendable {
    let value: SiteTranslator
    /// `value.translatesInbound` as a table of raw addresses: the per-packet test copies nothing.
    let inbound: Set<UInt32>
    init(_ v: SiteTranslator) { value = v; inbound = Set(v.inboundNames.map(\.value)) }
}

/// The packet path between the TUN device and the peers: Noise IK sessions over UDP.
public final class TunnelService: @unchecked Sendable {
    let identity: NodeIdentity
    let ownPublic: [UInt8]
    let logger: Logger
    let tun: () -> TunHandle
    let lock = NSLock()
    /// The peers' state machines and everything they share (guarded by `lock`).
    let table: PeerTable
    var counters: TunnelCounters {
        get { table.counters }
        _modify { yield &table.counters }
    }
    /// mac1 key of messages to this node, and the handshake thread's bounded queue.
    let ownMac1Key: SymmetricKey
    let handshakes = HandshakeQueue(capacity: 4096)
    /// The greatest initiation timestamp per peer, persisted (set before start by the daemon).
    public var initiationStamps = InitiationStamps(directory: nil)
    /// Where peers were last found through relays (the home relay after a restart).
    public var relayPeerCache = RelayPeerCache(directory: nil)
    /// Direct paths that worked (tried first after a restart), and the generator of its
    /// epsilon-greedy choice (seeded by RELAY_PATHS_SEED in tests).
    public var pathCache = PathCache(directory: nil)
    var pathChoice: any RandomNumberGenerator = ProcessInfo.processInfo.environment["RELAY_PATHS_SEED"].flatMap(UInt64.init).map { SplitMix64(seed: $0) as any RandomNumberGenerator } ?? SystemRandomNumberGenerator()
    /// How often the cache's first choice is not its best (to keep learning).
    static let pathEpsilon = 0.1
    /// WebSocket transports to relays whose UDP is blocked, by link.
    let bridges = NIOLockedValueBox<[ObjectIdentifier: WebSocketUDPBridge]>([:])
    var socketFD: Int32 = -1
    public private(set) var port: UInt16 = 0
    let stoppedFlag = Atomic<Bool>(false)
    /// This node's public address and NAT behaviour, asked from the tunnel's port.
    let reflectionClient: ReflectionClient
    let clock: () -> Double
    public let flows: FlowTable
    /// STUN on the tunnel port: datagrams with STUN's top bits and magic cookie go to the reflector.
    public var reflector: ReflectorService?
    /// IPv4/IPv6 translation on the site path, by reference (read under the lock, once per batch;
    /// per packet it is called without copying the struct and retaining its parts).
    var translator = TranslatorRef(SiteTranslator(RelayConfiguration()))
    /// ICMP errors relayd originates: at most 100 per second, burst 100 (RFC 4443 section 2.4 f).
    var icmpTokens: Double = 100, icmpRefilled: Double = 0

    /// node.busy_poll in nanoseconds, and whether one packet thread carries both directions
    /// (node.threads, busy_poll): set on configure, read by the packet loops without the lock, so
    /// atomics (ThreadSanitizer found the plain words racing).
    let busyPollAtomic = Atomic<UInt64>(0)
    let singleThreadAtomic = Atomic<Bool>(false)
    var busyPollNanos: UInt64 { busyPollAtomic.load(ordering: .relaxed) }
    let adaptivePollAtomic = Atomic<Bool>(true)
    var adaptivePolling: Bool { adaptivePollAtomic.load(ordering: .relaxed) }
    var singleThread: Bool { singleThreadAtomic.load(ordering: .relaxed) }
    /// The UDP thread's view of the TUN device (taken once per receive batch) and its coalescer.
    var rxTun = TunHandle(fd: -1, vnetHeader: false)
    var coalescer = Coalescer(buffer: UnsafeMutableRawBufferPointer.allocate(byteCount: Coalescer.capacity, alignment: 16))

    public convenience init(identity: NodeIdentity, logger: Logger, flows: FlowTable, tunFD: @escaping () -> Int32, clock: @escaping () -> Double = { Date().timeIntervalSince1970 }) {
        self.init(identity: identity, logger: logger, flows: flows, tun: { TunHandle(fd: tunFD(), vnetHeader: false) }, clock: clock)
    }

    public init(identity: NodeIdentity, logger: Logger, flows: FlowTable, tun: @escaping () -> TunHandle, clock: @escaping () -> Double = { Date().timeIntervalSince1970 }) {
        self.identity = identity
        ownPublic = Array(identity.privateKey.publicKey.rawRepresentation)
        ownMac1Key = HandshakeMAC.key(receiver: ownPublic)
        table = PeerTable(staticKey: identity.privateKey)
        reflectionClient = ReflectionClient(logger: logger, clock: clock)
        self.logger = logger
        self.tun = tun
        self.clock = clock
        self.flows = flows
    }

    // MARK: configuration

    /// The socket address of an endpoint (IPv4 as v4-mapped), without allocating.
    static func socketAddress(_ e: Endpoint) -> sockaddr_in6 {
        var sa = sockaddr_in6()
        sa.sin6_family = sa_family_t(AF_INET6)
        sa.sin6_port = e.port.bigEndian
        let (hi, lo): (UInt64, UInt64)
        switch e.address {
        case .v4(let a): (hi, lo) = (0, 0xffff_0000_0000 | UInt64(a.value))
        case .v6(let a): (hi, lo) = (a.high, a.low)
        }
        withUnsafeMutableBytes(of: &sa.sin6_addr) {
            $0.storeBytes(of: hi.bigEndian, toByteOffset: 0, as: UInt64.self)
            $0.storeBytes(of: lo.bigEndian, toByteOffset: 8, as: UInt64.self)
        }
        return sa
    }

    /// The endpoint a socket address stands for (v4-mapped addresses as IPv4).
    public static func endpoint(_ sa: sockaddr_in6) -> Endpoint? {
        // Without allocating: the address as two big-endian 64-bit halves.
        let port = UInt16(bigEndian: sa.sin6_port)
        let (hi, lo) = withUnsafeBytes(of: sa.sin6_addr) { b in
            (UInt64(bigEndian: b.loadUnaligned(fromByteOffset: 0, as: UInt64.self)), UInt64(bigEndian: b.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        }
        if hi == 0 && lo >> 32 == 0xffff {
            return Endpoint(.v4(IPv4Address(UInt32(truncatingIfNeeded: lo))), port: port)
        }
        return Endpoint(.v6(IPv6Address(high: hi, low: lo)), port: port)
    }

    /// Applies a configuration: keeps sessions of unchanged peers, drops removed ones.
    public func configure(_ cfg: RelayConfiguration) {
        busyPollAtomic.store(UInt64(max(0, cfg.node.busyPoll)) * 1000, ordering: .relaxed)
        adaptivePollAtomic.store(cfg.node.adaptivePoll, ordering: .relaxed)
        singleThreadAtomic.store(cfg.node.packetThreads(cpus: ProcessInfo.processInfo.activeProcessorCount) == 1, ordering: .relaxed)
        let list: [PeerTable.PeerConfig] = cfg.peers.compactMap { p in
            guard let key = Data(base64Encoded: p.publicKey).map(Array.init), key.count == 32 else { return nil }
            return PeerTable.PeerConfig(name: p.name, publicKey: key, endpoint: p.endpoint, prefixes: p.sites.flatMap(\.virtualPrefixes))
        }
        let exported = cfg.site.map { [$0.virtual4, $0.virtual6, $0.virtual6Lan].compactMap { $0 } } ?? []
        let stamps = initiationStamps
        // Never offered as path candidates: the sites' own prefixes (a LAN address is no way in
        // from outside, and two sites may use the same LAN prefix).
        let siteNets = (cfg.site.map { [$0.lan4, $0.lan6].compactMap { $0 } + $0.virtualPrefixes } ?? []) + list.flatMap(\.prefixes)
        lock.lock()
        candidateExclusions = siteNets
        candidatesCheckedAt = 0
        table.configurePaths(cfg.paths)
        let cached = pathCache.snapshot()
        var rng = pathChoice
        table.configure(list, exported: exported, stamp: { stamps.stamp(for: $0) },
                        cachedPaths: { k in cached[k].map { PathCache.order($0, epsilon: TunnelService.pathEpsilon, using: &rng) } ?? [] })
        pathChoice = rng
        table.configureRelays(cfg.relays, cache: relayPeerCache.snapshot(), now: clock())
        table.callsign = cfg.node.callsign.flatMap { try? Callsign.normalize($0).get() }.map { ($0, cfg.node.callsignListed) }
        let endpoints = table.knownRoutes
        translator = TranslatorRef(SiteTranslator(cfg))
        let actions = table.take()
        lock.unlock()
        handshakes.setKnown(endpoints)
        reflectionClient.configure(cfg.reflector)
        perform(actions)
    }

    // MARK: sockets and threads

    public func start(port: UInt16) throws {
        let (s, bound) = try bindDualStackUDP(port: port, what: "UDP port \(port) for peer tunnels", key: "node.listen_port", buffers: 4 << 20)
        // Never fragment the sealed datagrams: an oversized one fails with EMSGSIZE and relayd tells
        // the inner sender the size that fits (path MTU discovery end to end).
        var pmtudo: Int32 = 2  // IP_PMTUDISC_DO / IPV6_PMTUDISC_DO
        setsockopt(s, Int32(IPPROTO_IP), IP_MTU_DISCOVER, &pmtudo, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(s, Int32(IPPROTO_IPV6), IPV6_MTU_DISCOVER, &pmtudo, socklen_t(MemoryLayout<Int32>.size))
        socketFD = s
        self.port = bound
        for (name, body) in [("tunnel-udp", udpLoop), ("tunnel-tun", tunLoop), ("tunnel-handshakes", handshakeLoop), ("tunnel-timers", timerLoop)] as [(String, () -> Void)] {
            running.enter()
            let group = running
            let t = Thread { body(); group.leave() }
            t.name = name
            t.start()
        }
        logger.info("peer tunnels on UDP port \(self.port)")
        reflectionClient.start(port: bound, send: { [weak self] m, to in self?.send(m, to: TunnelService.socketAddress(to)) },
                         peers: { [weak self] in self?.peerEndpoints() ?? [] })
        // Say hello to every peer we know how to reach: after a restart the peers learn at once that
        // our old sessions are gone (instead of after their 15-second no-answer timer).
        lock.lock(); table.hello(); let actions = table.take(); lock.unlock()
        perform(actions)
    }

    let running = DispatchGroup()

    /// Stops the loops and waits for them to finish (each wakes within 250 ms), then closes the socket.
    public func stop() {
        // Tell the relays we are going: they drop our registrations now (not after four missed
        // heartbeats), and a peer sending to us through one hears "not here" at once.
        lock.lock()
        let leaves = table.relays.compactMap { l in l.isRegistered ? l.frame(.leave, [][...]).map { ($0, l.endpoint) } : nil }
        lock.unlock()
        if socketFD >= 0 { for (f, e) in leaves { send(f, to: TunnelService.socketAddress(e)) } }
        usleep(50_000)  // a leave through a WebSocket stand-in reaches the relay before the bridge closes
        for b in bridges.withLockedValue({ b -> [WebSocketUDPBridge] in defer { b.removeAll() }; return Array(b.values) }) { b.stop() }
        reflectionClient.stop()
        stoppedFlag.store(true, ordering: .relaxed)
        _ = running.wait(timeout: .now() + 2)
        if socketFD >= 0 { close(socketFD); socketFD = -1 }
    }

    var isStopped: Bool { stoppedFlag.load(ordering: .relaxed) }

    /// The peers the reflection client asks (name, endpoint).
    func peerEndpoints() -> [(String, Endpoint)] {
        lock.lock(); defer { lock.unlock() }
        return table.peers.compactMap { p in p.endpoint.map { (p.name, $0) } }
    }

    /// Sends one datagram; returns 0 or the errno (EMSGSIZE: the path MTU to the peer is smaller).
    @discardableResult
    func send(_ bytes: [UInt8], to sa: sockaddr_in6) -> Int32 {
        var a = sa
        let n = withUnsafePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(socketFD, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        return n < 0 ? errno : 0
    }

    /// Sends a datagram by a route (through a relay: framed for it).
    func send(_ bytes: [UInt8], route: Route) {
        switch route {
        case .direct(let e): send(bytes, to: TunnelService.socketAddress(e))
        case .relay(let relay, let id):
            lock.lock(); let frame = table.forwardFrame(bytes, id: id, via: relay); lock.unlock()
            if let frame { send(frame, to: TunnelService.socketAddress(relay)) }
        }
    }

    /// A datagram from a relay we use: its answer to our register, a refusal, or a frame (verified
    /// outside the lock; a delivered tunnel message goes on as if it came by that relay).
    func receiveFromRelay(_ b: ArraySlice<UInt8>, from: Endpoint) {
        let now = clock()
        switch RelayMessage.parse(b) {
        case .registered(let sender, let receiver, let noise)?:
            lock.lock(); let begun = table.beginRegistered(receiver: receiver, from: from); lock.unlock()
            guard let (link, ini0) = begun else { return }
            var ini = ini0
            guard let (payload, transport) = try? ini.readMessage2(Array(noise)), let grant = RelayGrant(payload), grant.id == sender else {
                lock.lock(); counters.authFailed += 1; lock.unlock(); return
            }
            lock.lock(); table.registered(link, receiver: receiver, transport: transport, grant: grant, now: now); let actions = table.take(); lock.unlock()
            perform(actions)
        case .refused(let receiver, let reason)?:
            lock.lock(); table.refused(receiver: receiver, reason: reason, from: from, now: now); let actions = table.take(); lock.unlock()
            perform(actions)
        case .cookie(let receiver, let nonce, let sealed)?:
            lock.lock(); table.relayCookie(receiver: receiver, nonce: nonce, sealed: sealed, from: from, now: now); let actions = table.take(); lock.unlock()
            perform(actions)
        case .frame(let kind, let session, let counter, let body)?:
            lock.lock(); let keyed = table.relayKey(session: session, from: from); lock.unlock()
            guard let (link, key) = keyed else { return }
            guard RelayMessage.verify(b, key: key) else { lock.lock(); counters.authFailed += 1; lock.unlock(); return }
            lock.lock(); let delivered = table.relayFrame(link, kind: kind, counter: counter, body: body, now: now); let actions = table.take(); lock.unlock()
            perform(actions)
            if let (datagram, route) = delivered { receive(datagram, route: route) }
        default:
            lock.lock(); counters.malformed += 1; lock.unlock()
        }
    }

    /// Carries out what the state machines asked for, in order, with the lock released: sends,
    /// handshakes to make (the DH here, unlocked), timestamps to keep before the response that
    /// follows, flow records, log lines.
    func perform(_ actions: [PeerAction]) {
        for a in actions {
            switch a {
            case .send(let bytes, let to):
                send(bytes, route: to)
            case .register(let link):
                let now = clock()
                do {
                    let (ini, msg) = try makeRegister(link, now: now)
                    lock.lock(); table.registerMade(link, ini, msg, now: now); let more = table.take(); lock.unlock()
                    perform(more)
                } catch {
                    lock.lock(); link.working = false; link.backOff(now: now); lock.unlock()
                    logger.error("cannot register with relay \(link.endpoint): \(error)")
                }
            case .initiate(let peer):
                let now = clock()
                do {
                    let (ini, msg) = try PeerTable.makeInitiation(identity.privateKey, to: peer.publicKey, now: now)
                    lock.lock(); peer.initiationMade(ini, msg, now: now, table); let more = table.take(); lock.unlock()
                    perform(more)
                } catch {
                    lock.lock(); peer.initiating = false; let name = peer.name; lock.unlock()
                    logger.error("cannot start a handshake with \(name): \(error)")
                }
            case .persistStamp(let key, let name, let stamp):
                // Durable before the answer leaves: after a crash, this initiation (and every older
                // one) is still refused.
                do { try initiationStamps.record(key, stamp) } catch {
                    logger.warning("cannot keep the handshake timestamp of \(name) in \(initiationStamps.path ?? "-"): \(error); a replay after a restart would be accepted once")
                }
            case .openWebSocket(let link):
                openWebSocket(link)
            case .closeWebSocket(let link):
                if let b = bridges.withLockedValue({ $0.removeValue(forKey: ObjectIdentifier(link)) }) { DispatchQueue.global().async { b.stop() } }
            case .probeUDP(let link):
                let now = clock()
                do {
                    let (ini, msg) = try makeRegister(link, now: now)
                    lock.lock(); table.probeMade(link, ini, msg, now: now); let more = table.take(); lock.unlock()
                    perform(more)
                } catch {
                    logger.error("cannot probe relay \(link.udpEndpoint) over UDP: \(error)")
                }
            case .rememberRelay(let key, let relay):
                do { try relayPeerCache.record(key, relay) } catch {
                    logger.debug("cannot keep the peer cache in \(relayPeerCache.path ?? "-"): \(error)")
                }
            case .rememberPath(let key, let e, let rtt):
                do { try pathCache.record(key, e, rtt: rtt, now: clock()) } catch {
                    logger.debug("cannot keep the path cache in \(pathCache.path ?? "-"): \(error)")
                }
            case .flow(let pkt, let name):
                flows.record(pkt[...], outbound: true, peer: name, now: clock())
            case .log(let level, let message):
                logger.log(level: level, "\(message)")
            }
        }
    }

    /// Message 1 of a register at `link`'s relay (key generation and DH: outside the lock).
    func makeRegister(_ link: RelayLink, now: Double) throws -> (Noise.Initiator, [UInt8]) {
        var ini = try Noise.Initiator(staticKey: identity.privateKey, remoteStatic: link.publicKey)
        let msg = try ini.writeMessage1(payload: link.payload(now: now))
        return (ini, msg)
    }

    /// Opens the WebSocket transport of `link` (its bridge: a TLS WebSocket to the relay's front
    /// door and a local UDP stand-in); the table hears when it is up or gone.
    func openWebSocket(_ link: RelayLink) {
        let now = clock()
        guard let ws = link.webSocket, let url = ws.webSocket,
              let target = WebSocketUDPBridge.Target(url: url, caFile: ws.caFile, spkiSHA256: ws.spkiSHA256) else {
            lock.lock(); table.webSocketClosed(link, reason: "no usable websocket URL", now: now); let more = table.take(); lock.unlock()
            perform(more)
            return
        }
        let bridge = WebSocketUDPBridge(target: target, tunnelPort: port, logger: logger, onReady: { [weak self] local in
            guard let self else { return }
            self.lock.lock(); self.table.webSocketReady(link, local: local, now: self.clock()); let more = self.table.take(); self.lock.unlock()
            self.perform(more)
        }, onClosed: { [weak self] reason in
            guard let self else { return }
            if let b = self.bridges.withLockedValue({ $0.removeValue(forKey: ObjectIdentifier(link)) }) { DispatchQueue.global().async { b.stop() } }
            self.lock.lock(); self.table.webSocketClosed(link, reason: reason, now: self.clock()); let more = self.table.take(); self.lock.unlock()
            self.perform(more)
        })
        if let old = bridges.withLockedValue({ b -> WebSocketUDPBridge? in defer { b[ObjectIdentifier(link)] = bridge }; return b[ObjectIdentifier(link)] }) {
            DispatchQueue.global().async { old.stop() }
        }
        bridge.start()
    }

    /// The kernel's path MTU towards `sa` (from its route cache, via a connected probe socket).
    func pathMTU(_ sa: sockaddr_in6) -> Int? {
        let s = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { return nil }
        defer { close(s) }
        var a = sa
        guard withUnsafePointer(to: &a, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }) == 0 else { return nil }
        var mtu: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(s, Int32(IPPROTO_IPV6), IPV6_MTU, &mtu, &len) == 0, mtu > 0 { return Int(mtu) }
        len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(s, Int32(IPPROTO_IP), IP_MTU, &mtu, &len) == 0, mtu > 0 { return Int(mtu) }
        return nil
    }

    /// The underlay cannot carry `pkt` sealed: tell its sender the largest inner size that fits.
    func answerTooBig(_ pkt: ArraySlice<UInt8>, size: Int? = nil, to ep: sockaddr_in6) {
        let b = withUnsafeBytes(of: ep.sin6_addr) { Array($0) }
        let mapped = b[0..<10].allSatisfy { $0 == 0 } && b[10] == 0xff && b[11] == 0xff
        guard let pmtu = pathMTU(ep) else { return }
        // Through a relay, its forward frame adds its own overhead.
        let relayed = TunnelService.endpoint(ep).map { e in lock.withLock { table.relay(at: e) != nil } } ?? false
        let inner = pmtu - (mapped ? 20 : 40) - 8 - TunnelLimits.overhead - (relayed ? RelayMessage.forwardOverhead : 0)
        guard inner >= 576, inner < size ?? pkt.count else { return }
        lock.lock(); counters.tooBig += 1; lock.unlock()
        answer(pkt, .tooBig(mtu: inner))
    }

    /// Tells the sender of a packet read from the TUN device why it goes nowhere (rate-limited).
    func answer(_ pkt: ArraySlice<UInt8>, _ kind: IPHeader.ICMPError) {
        guard let icmp = IPHeader.icmpError(pkt, kind), takeICMPToken() else { return }
        let h = tunHandle
        icmp.withUnsafeBytes { tunWrite(h, $0) }
    }

    func takeICMPToken() -> Bool {
        lock.lock(); defer { lock.unlock() }
        let now = clock()
        icmpTokens = min(100, icmpTokens + (now - icmpRefilled) * 100); icmpRefilled = now
        guard icmpTokens >= 1 else { counters.icmpErrorsLimited += 1; return false }
        icmpTokens -= 1; counters.icmpErrorsSent += 1
        return true
    }

    /// Outbound SIIT: an IPv6 packet to another site's RFC 6052 name becomes IPv4 (into `out`).
    /// Returns the translated length, 0 when the packet needs no translation, nil when it was
    /// refused (counted, answered with an ICMPv6 error).
    func translateOutbound(_ pkt: ArraySlice<UInt8>, _ t: SiteTranslator, into out: inout [UInt8]) -> Int? {
        guard pkt.count >= 40, pkt[pkt.startIndex] >> 4 == 6 else { return 0 }
        let dst = pkt.withUnsafeBytes { SIIT.load6($0, 24) }
        guard t.translatesOutbound(dst) else { return 0 }
        let r = pkt.withUnsafeBytes { p in out.withUnsafeMutableBytes { SIIT.toIPv4(p, into: $0, map: t.map, decrement: false) } }
        if case .translated(let n) = r { lock.lock(); counters.translatedTo4 += 1; lock.unlock(); return n }
        lock.lock(); counters.untranslatable += 1; lock.unlock()
        if case .drop(let why) = r { logger.debug("not translated to IPv4: \(why)") }
        // The destination translates but the source has no IPv4 name: a policy refusal; else the
        // destination is the problem.
        let src = pkt.withUnsafeBytes { SIIT.load6($0, 8) }
        answer(pkt, t.toV4(dst) != nil && t.toV4(src) == nil ? .sourcePolicy : .addressUnreachable)
        return nil
    }

    func timerLoop() {
        while !isStopped {
            usleep(250_000)
            tick()
        }
    }

    // MARK: outgoing

    /// What sealing one packet for its peer needs: key, counter, the peer's index and endpoint.
    struct Sealing {
        let key: SymmetricKey; let counter: UInt64; let remote: UInt32; let ep: sockaddr_in6
        /// Through a relay: the link's key, first counter and session, and the peer's id there.
        var relay: RelayFraming? = nil
        func advanced(by i: Int) -> Sealing {
            Sealing(key: key, counter: counter + UInt64(i), remote: remote, ep: ep,
                    relay: relay.map { RelayFraming(key: $0.key, counter: $0.counter + UInt64(i), session: $0.session, id: $0.id) })
        }
    }
    struct RelayFraming { let key: SymmetricKey; let counter: UInt64; let session: UInt32; let id: UInt32 }

    /// Picks the peer for a packet from the TUN device and takes a counter of its session (the
    /// caller seals, unlocked); nil when the packet was queued (handshake pending) or dropped.
    /// `count` packets of one train (segments of one TSO burst, `bytes` in all) take consecutive
    /// counters at once; `pkt` is the first.
    func reserve(_ pkt: ArraySlice<UInt8>, count: Int = 1, bytes: Int? = nil) -> Sealing? {
        guard let dst = IPHeader.addresses(pkt)?.dst else { lock.lock(); counters.malformed += 1; lock.unlock(); return nil }
        let now = clock()
        lock.lock()
        guard let peer = table.route(dst) else {
            counters.noRoute += 1; lock.unlock()
            answer(pkt, .noRoute)
            return nil
        }
        var r = peer.outbound(pkt, count: count, bytes: bytes ?? pkt.count, now: now, table)
        var framing: RelayFraming?
        if let res = r, case .relay(let relay, let id) = res.to {
            // Counters of the relay link for the same packets, under the same lock.
            if let (key, n, session) = table.relay(at: relay)?.reserve(count) { framing = RelayFraming(key: key, counter: n, session: session, id: id) }
            else { r = nil }
        }
        let name = peer.name
        let actions = table.take()
        lock.unlock()
        if r != nil { flows.record(pkt, outbound: true, peer: name, now: now, packets: count, bytes: bytes) }
        if !actions.isEmpty { perform(actions) }
        guard let r else { return nil }
        switch r.to {
        case .direct(let e): return Sealing(key: r.key, counter: r.counter, remote: r.remote, ep: TunnelService.socketAddress(e))
        case .relay(let relay, _): return Sealing(key: r.key, counter: r.counter, remote: r.remote, ep: TunnelService.socketAddress(relay), relay: framing)
        }
    }

    // MARK: incoming

    func receive(_ b: ArraySlice<UInt8>, from: sockaddr_in6) {
        if STUN.looksLikeSTUN(b) {
            // A response to our own reflection request, or a request for our reflector.
            let source = TunnelService.endpoint(from) ?? Endpoint(.v4(IPv4Address(0)), port: 0)
            if b[b.startIndex] & 0x01 == 0x01 || b[b.startIndex + 1] & 0x10 == 0x10 {
                if let m = try? STUN.parse(b, allowClassic: false), m.type == STUN.bindingSuccess || m.type == STUN.bindingError, reflectionClient.answer(m, from: source) { return }
                lock.lock(); counters.malformed += 1; lock.unlock()
                return
            }
            // Our own hairpinning probe, back through the NAT?
            if b.count >= 20, let m = try? STUN.parse(b, allowClassic: false), m.type == STUN.bindingRequest, reflectionClient.hairpinProbe(m, from: source) { return }
            if let r = reflector, let answer = r.handle(b, from: from) { send(answer, to: from) }
            return
        }
        guard let source = TunnelService.endpoint(from) else { return }
        if RelayMessage.isRelay(b[b.startIndex]) { receiveFromRelay(b, from: source); return }
        receive(b, route: .direct(source))
    }

    /// A tunnel message that came by `from` (straight from the peer, or delivered by a relay).
    func receive(_ b: ArraySlice<UInt8>, route from: Route) {
        guard let msg = TunnelMessage.parse(b) else { lock.lock(); counters.malformed += 1; lock.unlock(); return }
        let now = clock()
        switch msg {
        case .response(let sender, let receiver, let noise):
            // A response answers one of our own pending initiations (a random index an attacker
            // cannot guess): handled here, in order with the data that follows it on this socket;
            // anything else costs one hash and one lookup.
            guard HandshakeMAC.valid(b, key: ownMac1Key) else { lock.lock(); counters.badMAC += 1; lock.unlock(); return }
            handleResponse(sender: sender, receiver: receiver, Array(noise), from: from, now: now)
        case .cookieReply(let receiver, let nonce, let sealed):
            handleCookie(receiver: receiver, nonce: nonce, sealed: sealed, now: now)
        case .initiation:
            // Initiations cost a Diffie-Hellman or two: never on this (the data path's) thread,
            // which only queues them for the handshake thread; what does not fit is dropped at
            // once, so a flood cannot stall data. Under load, an initiation that carries a mac2 is
            // checked here (two hashes) and a valid one takes the priority lane: a peer that
            // answered our cookie gets through however full the queue is.
            if b.suffix(16).contains(where: { $0 != 0 }), handshakes.underLoad {
                if handshakes.validMac2(b, from: from) {
                    if handshakes.push(Array(b), from: from, priority: true) { return }
                }
                lock.lock(); counters.handshakesDropped += 1; lock.unlock()
                return
            }
            if !handshakes.push(Array(b), from: from) { handshakes.countDrop() }
        case .data(let receiver, let counter, let ct): handleData(receiver: receiver, counter: counter, ct, from: from, now: now)
        }
    }

    /// The handshake thread: takes queued handshake messages one by one. Under load (its queue an
    /// eighth full, and for a second after), an initiation without a valid mac2 gets a cookie reply
    /// instead of a Diffie-Hellman, and each source address gets at most 20 handshakes a second.
    func handshakeLoop() {
        // Below the packet threads: under a flood, the scheduler serves the data path first.
        _ = CRelayShim_thread_nice(10)
        var secretAt = clock()
        var loadedUntil = -Double.infinity
        var perSource = RateLimiter(rate: 20, burst: 10, capacity: 8192)
        // Cookie replies to the normal lane under load: at most 10,000 a second (the rest is
        // dropped unanswered; peers whose endpoints we know use the priority lane).
        var cookieTokens = 10_000.0, cookiesAt = clock()
        let cookieKey = HandshakeMAC.cookieKey(sender: ownPublic)
        while !isStopped {
            let (batch, prioritised, drops) = handshakes.popAll(timeout: 0.25)
            if drops > 0 { lock.lock(); counters.handshakesDropped += drops; lock.unlock() }
            let now = clock()
            if batch.count >= handshakes.capacity / 8 { loadedUntil = now + 1 }
            handshakes.underLoad = now < loadedUntil
            if now - secretAt >= 120 { handshakes.rotateSecret(); secretAt = now }
            var dropped = 0, cookies = 0, badMAC = 0
            for (j, (b, from)) in batch.enumerated() {
                let loaded = now < loadedUntil
                // Under load, the normal lane gets cookie replies while the budget lasts; the rest
                // is dropped before any work (no hash at all).
                if loaded && j >= prioritised {
                    cookieTokens = min(10_000, cookieTokens + (now - cookiesAt) * 10_000); cookiesAt = now
                    guard cookieTokens >= 1 else { dropped += 1; continue }
                }
                // mac1 first: one hash drops what was not made for this node (scans, other nodes).
                guard HandshakeMAC.valid(b[...], key: ownMac1Key) else { badMAC += 1; continue }
                guard case .initiation(let sender, let noise)? = TunnelMessage.parse(b[...]) else { continue }
                if loaded {
                    let cookie = handshakes.cookie(for: from)
                    guard HandshakeMAC.validMac2(b[...], cookie: cookie) else {
                        if j >= prioritised { cookieTokens -= 1 }
                        let reply = HandshakeMAC.cookieReply(receiver: sender, cookie: cookie, mac1: HandshakeMAC.mac1(of: b[...]), key: cookieKey)
                        if !reply.isEmpty { send(reply, route: from); cookies += 1 }
                        continue
                    }
                    // Per source address (through a relay, the relay limits each node itself).
                    if case .direct(let e) = from, !perSource.allow(e.address, now: now) { dropped += 1; continue }
                }
                handleInitiation(sender: sender, Array(noise), from: from, now: now)
            }
            if dropped + cookies + badMAC > 0 {
                lock.lock(); counters.handshakesDropped += dropped; counters.cookiesSent += cookies; counters.badMAC += badMAC; lock.unlock()
            }
        }
    }

    /// A cookie from a peer under load, for our pending initiation: kept, and the initiation is
    /// made again at once with mac2.
    func handleCookie(receiver: UInt32, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, now: Double) {
        lock.lock(); table.cookieReply(receiver: receiver, nonce: nonce, sealed: sealed, now: now); let actions = table.take(); lock.unlock()
        perform(actions)
    }

    /// A valid initiation with a newer timestamp than any accepted from its peer (kept across
    /// restarts) gets a response at its source. Both Diffie-Hellman steps run without the lock.
    /// The peer's endpoint does not move here: only authenticated data on the new session (the
    /// initiator proving it is alive there) moves it.
    func handleInitiation(sender: UInt32, _ noise: [UInt8], from source: Route, now: Double) {
        guard let (responder, stamp) = PeerTable.readInitiation(identity.privateKey, noise) else {
            lock.lock(); counters.authFailed += 1; lock.unlock(); return
        }
        var r = responder
        lock.lock(); let peer = table.answerable(remoteStatic: r.remoteStatic, stamp: stamp); lock.unlock()
        guard let peer else { return }
        guard let (m2, transport) = try? r.writeMessage2() else { lock.lock(); counters.authFailed += 1; lock.unlock(); return }
        lock.lock()
        table.answered(peer, stamp: stamp, sender: sender, message: m2, transport: transport, from: source, now: now)
        let actions = table.take()
        lock.unlock()
        perform(actions)
    }

    /// A response to our initiation: the initiator's copy taken under the lock, message 2 read
    /// (DH) without it, the session installed under it.
    func handleResponse(sender: UInt32, receiver: UInt32, _ noise: [UInt8], from source: Route, now: Double) {
        lock.lock(); let begun = table.beginResponse(receiver: receiver); lock.unlock()
        guard let (peer, ini) = begun else { return }
        var initiator = ini
        guard let (_, transport) = try? initiator.readMessage2(noise) else { lock.lock(); counters.authFailed += 1; lock.unlock(); return }
        lock.lock()
        peer.responded(transport, receiver: receiver, sender: sender, from: source, now: now, table)
        let actions = table.take()
        lock.unlock()
        perform(actions)
    }

    func handleData(receiver: UInt32, counter: UInt64, _ ct: ArraySlice<UInt8>, from: Route, now: Double) {
        ct.withUnsafeBytes { c in
            handleDataRun(receiver: receiver, count: 1, stride: 0, route: from, now: now) { _ in (counter, c) }
        }
    }

    /// Data messages to one session (`receiver`): one message, or a run of consecutive segments of
    /// one GRO train. 1. Find the session's key (one lock and lookup for the run), 2. open every
    /// message unlocked into the UDP thread's scratch (`stride` bytes apart; nothing allocated),
    /// 3. replay window and peer state for all of them under one lock, 4. deliver.
    /// `message(j)` is message j's counter and ciphertext (with its tag).
    func handleDataRun(receiver: UInt32, count k: Int, stride: Int, from: sockaddr_in6, now: Double,
                       _ message: (Int) -> (counter: UInt64, ct: UnsafeRawBufferPointer)) {
        guard let source = TunnelService.endpoint(from) else { return }
        handleDataRun(receiver: receiver, count: k, stride: stride, route: .direct(source), now: now, message)
    }

    func handleDataRun(receiver: UInt32, count k: Int, stride: Int, route source: Route, now: Double,
                       _ message: (Int) -> (counter: UInt64, ct: UnsafeRawBufferPointer)) {
        precondition(k >= 1 && k <= rxLens.count && (k - 1) * stride + 65536 <= rxPlain.count)
        lock.lock()
        guard let peer = table.byIndex[receiver] else { counters.unknownIndex += k; lock.unlock(); return }
        let key = peer.session(receiver)?.receiveState(now: now)
        lock.unlock()
        guard let key else { lock.lock(); counters.authFailed += k; lock.unlock(); return }
        rxPlain.withUnsafeMutableBytes { out in
            for j in 0..<k {
                let (counter, ct) = message(j)
                rxCounters[j] = counter
                rxLens[j] = Noise.open(key: key, counter: counter, ct, into: out.baseAddress! + j * stride) ?? -1
            }
        }
        lock.lock()
        let exported = table.exported
        rxPlain.withUnsafeBytes { plain in
            for j in 0..<k {
                guard rxLens[j] >= 0 else { counters.authFailed += 1; continue }
                let packet = UnsafeRawBufferPointer(rebasing: plain[(j * stride)..<(j * stride + rxLens[j])])
                switch peer.data(index: receiver, counter: rxCounters[j], from: source, plain: packet, exported: exported, now: now, table) {
                case .deliver: continue
                case .keepalive: break
                case .replay: counters.authFailed += 1
                case .spoofedSource: counters.spoofedSource += 1
                case .notExported: counters.notExported += 1
                case .path: break
                case .badPath: counters.badPathMessages += 1
                }
                rxLens[j] = -1
            }
        }
        // Packets queued while the peer had no known endpoint go now that it has proven one.
        peer.flush(now: now, table)
        let name = peer.name
        let actions = table.take()
        lock.unlock()
        if !actions.isEmpty { perform(actions) }
        for j in 0..<k where rxLens[j] > 0 {
            deliverInbound(rxPlain[(j * stride)..<(j * stride + rxLens[j])], peer: peer, name: name, now: now)
        }
    }

    /// One opened, accepted packet from `peer`: counted in the flow table, translated to IPv6 when
    /// it is for one of this site's mapped IPv6 hosts, written to the TUN device.
    func deliverInbound(_ pt: ArraySlice<UInt8>, peer: PeerMachine, name: String, now: Double) {
        flows.add(pt, outbound: false, peer: name, now: now, to: &rxFlows)
        // Inbound SIIT: IPv4 for one of this site's mapped IPv6 hosts becomes IPv6.
        let tr = rxTranslator
        let at = pt.startIndex
        if !tr.inbound.isEmpty, pt.count >= 20, pt[at] >> 4 == 4,
           tr.inbound.contains(UInt32(pt[at + 16]) << 24 | UInt32(pt[at + 17]) << 16 | UInt32(pt[at + 18]) << 8 | UInt32(pt[at + 19])) {
            let t = tr.value
            let r = pt.withUnsafeBytes { p in rxXlat.withUnsafeMutableBytes { SIIT.toIPv6(p, into: $0, map: t.map, decrement: false) } }
            guard case .translated(let n) = r else {
                lock.lock(); counters.untranslatable += 1; lock.unlock()
                if case .drop(let why) = r { logger.debug("not translated to IPv6: \(why)") }
                // Back through the tunnel to the sender: its source has no IPv6 name here.
                if let icmp = IPHeader.icmpError(pt, .sourcePolicy), takeICMPToken() {
                    lock.lock(); peer.sealOne(icmp[...], now: now, table); let actions = table.take(); lock.unlock()
                    perform(actions)
                }
                return
            }
            lock.lock(); counters.translatedTo6 += 1; lock.unlock()
            rxXlat.withUnsafeBytes { deliver(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            return
        }
        pt.withUnsafeBytes { deliver($0) }
    }

    /// Inbound packets counted, recorded at the end of each receive batch (UDP thread).
    var rxFlows = FlowBatch()
    /// The translator as the UDP thread saw it at the start of its current batch.
    var rxTranslator = TranslatorRef(SiteTranslator(RelayConfiguration()))
    /// Opened packets (only the UDP thread uses it): one message of up to 64 KB, or a run of up to
    /// `rxLens.count` GRO segments side by side.
    var rxPlain = [UInt8](repeating: 0, count: 65536 + 63 * 2048)
    var rxLens = [Int](repeating: 0, count: 64), rxCounters = [UInt64](repeating: 0, count: 64)
    /// Which frames of a relayed run the relay link's window accepted (UDP thread only).
    var rxRelayAccepted = [Bool](repeating: false, count: 64)
    /// Inbound translation scratch (only the UDP thread uses it).
    var rxXlat = [UInt8](repeating: 0, count: 65536 + 64)

    // MARK: timers

    /// Prefixes whose addresses are never path candidates (the sites'), when candidates were last
    /// gathered, and the address-change count seen then.
    var candidateExclusions: [IPPrefix] = []
    var candidatesCheckedAt: Double = 0
    var addressChangesSeen = 0
    var relaySeenBefore: [Endpoint] = []

    /// This node's path candidates: its interface addresses (not loopback, link-local or a site's)
    /// at the tunnel port, then where relays and reflectors see it. Gathered every 2 s and at once
    /// when rtnetlink reports an address change (outside the lock: getifaddrs).
    func gatherCandidates(now: Double) -> ([PathMessage.Candidate], Set<IPAddress>)? {
        let changes = reflectionClient.addressChanges
        lock.lock()
        let relaySeen = table.relays.compactMap { $0.isRegistered ? $0.observed : nil }
        // At once when an address changed or a relay saw us somewhere new (its pong), else every 2 s.
        let due = now - candidatesCheckedAt >= 2 || changes != addressChangesSeen || relaySeen != relaySeenBefore
        if due { candidatesCheckedAt = now; addressChangesSeen = changes; relaySeenBefore = relaySeen }
        let exclusions = candidateExclusions
        lock.unlock()
        guard due, port != 0 else { return nil }
        let own = ReflectionClient.localAddresses()
        var out: [PathMessage.Candidate] = []
        func add(_ c: PathMessage.Candidate) {
            guard PathMessage.probeable(c.endpoint), !out.contains(where: { $0.endpoint == c.endpoint }), out.count < PathMessage.maxCandidates else { return }
            out.append(c)
        }
        for a in own.sorted(by: { "\($0)" < "\($1)" }) where !exclusions.contains(where: { $0.contains(a) }) {
            add(.init(kind: .local, endpoint: Endpoint(a, port: port)))
        }
        let obs = reflectionClient.observed
        for fam in [IPFamily.ipv4, .ipv6] {
            if let a = ReflectionVote.decide(obs.filter { $0.mapped.address.family == fam }).address, let e = Endpoint(a) { add(.init(kind: .reflexive, endpoint: e)) }
        }
        for e in relaySeen { add(.init(kind: .reflexive, endpoint: e)) }
        return (out, own)
    }

    /// Every 250 ms: the machines' timers, then the flow table's expiry.
    func tick() {
        let now = clock()
        let gathered = gatherCandidates(now: now)
        lock.lock()
        if let (list, own) = gathered { table.localCandidatesChanged(list, own: own, now: now) }
        table.tick(now: now)
        let endpoints = table.knownRoutes
        let actions = table.take()
        lock.unlock()
        handshakes.setKnown(endpoints)
        perform(actions)
        flows.expire(now: now)
    }

    public func behaviourSnapshot() -> NATBehaviour? { reflectionClient.natBehaviour }

    public func reflection() -> [ReflectionVote.Observation] { reflectionClient.observed }

    // MARK: views

    /// This node's links to relays, the home relay marked.
    func relayViews() -> [RelayLinkView] {
        lock.lock(); defer { lock.unlock() }
        let now = clock()
        let home = table.home
        return table.relays.map { l in
            let state: String
            switch l.phase {
            case .registered: state = "registered"
            case .registering: state = "registering"
            case .idle: state = l.lastError.map { "waiting (\($0))" } ?? "standby (used on demand)"
            }
            let transport: String
            switch l.transport {
            case .udp: transport = "udp"
            case .webSocketOpening: transport = "udp (opening websocket)"
            case .webSocket: transport = "websocket"
            }
            return RelayLinkView(address: "\(l.udpEndpoint)", state: state, home: l === home, id: l.isRegistered ? l.id : nil, observed: l.observed.map { "\($0)" },
                                 registeredSecondsAgo: l.registeredAt.map { now - $0 }, lastError: l.lastError, transport: transport,
                                 callsign: l.claim.map { "\($0.1): \($0.0)" })
        }
    }

    public func peerViews() -> [String: PeerRuntime] {
        lock.lock(); defer { lock.unlock() }
        let now = clock()
        var out: [String: PeerRuntime] = [:]
        for p in table.peers {
            out[p.name] = PeerRuntime(state: p.state, endpoint: p.endpoint.map { "\($0)" },
                                      lastHandshakeSecondsAgo: p.lastHandshake.map { now - $0 },
                                      rxBytes: p.rxBytes, txBytes: p.txBytes, rxPackets: p.rxPackets, txPackets: p.txPackets,
                                      latencyMs: p.latency.map { $0 * 1000 })
            out[p.name]?.path = p.route.map { "\($0)" }
            out[p.name]?.paths = p.paths.map { "\($0.route)" }
            out[p.name]?.pathChange = p.routeChange?.why
            out[p.name]?.pathChangeSecondsAgo = p.routeChange.map { now - $0.at }
        }
        return out
    }

    /// How the node looks for a direct path to the peer `name` (nil: no such peer).
    public func pathsView(peer name: String) -> PathsView? {
        lock.lock(); defer { lock.unlock() }
        guard let p = table.peers.first(where: { $0.name == name }) else { return nil }
        let now = clock(), f = p.finder
        func view(_ c: [PathMessage.Candidate]) -> [PathsView.Candidate] { c.map { .init(endpoint: "\($0.endpoint)", kind: "\($0.kind)") } }
        var paths: [String: Double?] = [:]
        for x in p.paths { paths["\(x.route)"] = x.lastReceived > 0 ? now - x.lastReceived : nil }
        let probes = f.targets.map { e, t in PathsView.Probe(endpoint: "\(e)", sent: t.sent, roundTripMs: f.rtt[e].map { $0 * 1000 }) }
            + f.rtt.filter { f.targets[$0.key] == nil }.map { e, r in PathsView.Probe(endpoint: "\(e)", sent: 0, roundTripMs: r * 1000) }
        return PathsView(peer: p.name, holePunching: f.settings.holePunching, route: p.route.map { "\($0)" }, paths: paths,
                         lastChange: p.routeChange?.why, lastChangeSecondsAgo: p.routeChange.map { now - $0.at },
                         local: view(f.local), remote: view(f.remote), peerReflexive: f.peerReflexive.map { "\($0)" }, seenAs: f.seenAs.map { "\($0)" },
                         attempting: f.attempting, nextAttemptInSeconds: f.attempting ? nil : max(0, f.nextAttempt - now),
                         cached: f.cachedPaths.map { "\($0)" },
                         probes: probes.sorted { $0.endpoint < $1.endpoint }, attempts: f.attempts, successes: f.successes, failures: f.failures,
                         probesSent: f.probesSent, acksSent: f.acksSent, acksReceived: f.acksReceived, unmatchedAcks: f.unmatchedAcks,
                         candidatesRefused: f.candidatesRefused, probesLimited: f.probesLimited)
    }

    public func countersSnapshot() -> TunnelCounters { lock.lock(); defer { lock.unlock() }; return counters }
}


/// A dual-stack (IPv4-mapped) UDP socket bound to `port` (0 = any free one). Returns it and the bound port;
/// the error names the setting to change.
func bindDualStackUDP(port: UInt16, what: String, key: String, buffers: Int32? = nil, address: IPAddress? = nil) throws -> (Int32, UInt16) {
    let s = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard s >= 0 else { throw NodeIdentity.Failure(description: "cannot open a UDP socket for \(what): \(String(cString: strerror(errno)))") }
    var zero: Int32 = 0
    setsockopt(s, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size))
    if var big = buffers {
        setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(s, SOL_SOCKET, SO_SNDBUF, &big, socklen_t(MemoryLayout<Int32>.size))
    }
    var addr = sockaddr_in6(); addr.sin6_family = sa_family_t(AF_INET6); addr.sin6_port = port.bigEndian
    if let address { addr = TunnelService.socketAddress(Endpoint(address, port: port)) }
    guard withUnsafePointer(to: &addr, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }) == 0 else {
        let e = errno; close(s)
        throw NodeIdentity.Failure(description: "cannot bind \(what): \(String(cString: strerror(e))) (\(key))")
    }
    var bound = sockaddr_in6(); var len = socklen_t(MemoryLayout<sockaddr_in6>.size)
    _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
    return (s, UInt16(bigEndian: bound.sin6_port))
}

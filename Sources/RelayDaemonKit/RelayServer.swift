import Crypto
import Foundation
import Logging
import RelayControlAPI
import RelayCore
import RelayFrontDoor
import RelayStore
import RelayTunnel
import Synchronization
import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// The relay role's loop: its UDP socket and thread around `RelayRegistry`, and the WebSocket
/// connections of the front door (each one a node's transport when its UDP is blocked: it stands
/// in the registry as a `stream` endpoint, so registration, limits and forwarding are the same).
/// Off unless `[relay] enabled = true`.
final class RelayServer: @unchecked Sendable {
    let logger: Logger
    let clock: () -> Double
    private let lock = NSLock()
    private let registry: RelayRegistry
    private var fd: Int32 = -1
    private(set) var port: UInt16 = 0
    private let stopped = Atomic<Bool>(false)
    /// node.adaptive_poll: the relay's thread spins briefly between datagrams that come close together.
    let adaptivePolling = Atomic<Bool>(true)
    private let running = DispatchGroup()
    /// The largest datagram taken (bigger ones are counted as oversized and dropped).
    static let maxDatagram = 9000
    /// WebSocket connections by number (`Endpoint.stream`), under `lock`.
    private var streams: [UInt64: WebSocketSender] = [:]
    private var streamRemotes: [UInt64: String] = [:]
    private var nextStream: UInt64 = 1

    /// Callsigns and admission lists (nil: no state directory, or it could not be opened).
    let store: RelayStore?
    /// Store work (SQLite) happens here, off the packet loop.
    private let storeQueue = DispatchQueue(label: "relay-store")
    private var config: RelayRoleConfig
    private var lastExpiry: Double = 0

    init(identity: NodeIdentity, config: RelayRoleConfig, logger: Logger, store: RelayStore? = nil, clock: @escaping () -> Double = { Date().timeIntervalSince1970 }) {
        self.logger = logger
        self.clock = clock
        self.store = store
        self.config = config
        registry = RelayRegistry(staticKey: identity.privateKey, policy: RelayRegistry.Policy(config))
        refreshAdmission()
    }

    func start(port: UInt16, address: IPAddress? = nil) throws {
        let (s, bound) = try bindDualStackUDP(port: port, what: "UDP port \(port) for the relay", key: "relay.port", buffers: 8 << 20, address: address)
        fd = s
        self.port = bound
        running.enter()
        let group = running
        let t = Thread { [self] in loop(); group.leave() }
        t.name = "relay"
        t.start()
        logger.info("relay on UDP port \(bound) (\(registry.policy.allowedKeys.count) listed keys, \(registry.policy.tokens.count) tokens, at most \(registry.policy.maxNodes) nodes)")
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        _ = running.wait(timeout: .now() + 2)
        if fd >= 0 { close(fd); fd = -1 }
    }

    func configure(_ c: RelayRoleConfig) {
        lock.withLock {
            let (allowed, blocked) = (registry.policy.storeAllowedKeys, registry.policy.blockedKeys)
            registry.policy = RelayRegistry.Policy(c)
            registry.policy.storeAllowedKeys = allowed; registry.policy.blockedKeys = blocked
            config = c
        }
    }

    // MARK: the store (callsigns, admission)

    /// Reads the allow and block lists into the registry; blocked nodes' registrations end.
    func refreshAdmission() {
        guard let store else { return }
        do {
            let (allowed, blocked) = try store.admissionKeys()
            let decode = { (s: Set<String>) in Set(s.compactMap { Data(base64Encoded: $0).map(Array.init) }) }
            lock.withLock {
                registry.policy.storeAllowedKeys = decode(allowed)
                registry.policy.blockedKeys = decode(blocked)
                registry.blockRegistered(registry.policy.blockedKeys)
            }
        } catch { logger.error("relay store: cannot read the admission lists: \(error)") }
    }

    /// Claims and events the registry produced (under `lock`): handled on the store's queue.
    private func takeStoreWork() -> ([(id: UInt32, key: [UInt8], listed: Bool, callsign: String)], [RelayRegistry.Event]) {
        let c = registry.claims, e = registry.events
        if !c.isEmpty { registry.claims = [] }
        if !e.isEmpty { registry.events = [] }
        return (c, e)
    }

    private func storeWork(_ claims: [(id: UInt32, key: [UInt8], listed: Bool, callsign: String)], _ events: [RelayRegistry.Event]) {
        guard !claims.isEmpty || !events.isEmpty else { return }
        let quota = lock.withLock { config.callsignQuota }
        let sources = events.map { describe($0.address) }
        storeQueue.async { [self] in
            let now = clock()
            for (e, source) in zip(events, sources) {
                logger.info("relay event=\(e.kind) key=\(Data(e.key).base64EncodedString()) id=\(e.id) from=\(source)\(e.detail.isEmpty ? "" : " " + e.detail)")
                if e.kind == "registered" { try? store?.touch(key: Data(e.key).base64EncodedString(), now: now) }
            }
            for c in claims {
                let key = Data(c.key).base64EncodedString()
                var result = RelayClaimResult.unavailable, name = String(c.callsign.uppercased().prefix(32).map { $0.isASCII && !$0.isWhitespace ? $0 : "?" })
                if let store {
                    do {
                        switch try store.claim(c.callsign, key: key, listed: c.listed, quota: quota, now: now) {
                        case .claimed(let n): result = .claimed; name = n
                        case .alreadyYours(let n): result = .alreadyYours; name = n
                        case .taken(let n): result = .taken; name = n
                        case .invalid: result = .invalid
                        case .quota: result = .quota
                        case .blocked(let n): result = .blocked; name = n
                        }
                    } catch { logger.error("relay store: claim of \(name) failed: \(error)") }
                }
                logger.info("relay event=claim key=\(key) callsign=\(name) result=\(result.code)")
                let out: [([UInt8], Endpoint)] = lock.withLock { registry.answerClaim(id: c.id, result, callsign: name); return registry.take() }
                flush(out)
            }
        }
    }

    /// Once an hour: callsigns unused for callsign_release_days are released.
    private func expireCallsigns(now: Double) {
        guard let store, now - lastExpiry >= 3600 else { return }
        lastExpiry = now
        let days = lock.withLock { config.callsignReleaseDays }
        storeQueue.async { [self] in
            if let gone = try? store.expire(unusedFor: Double(days) * 86400, now: now), !gone.isEmpty {
                logger.notice("relay event=callsigns_released callsigns=\(gone.joined(separator: ",")) reason=unused_\(days)_days")
            }
        }
    }

    func describe(_ e: Endpoint) -> String {
        guard let n = e.streamNumber else { return "\(e)" }
        let remote = lock.withLock { streamRemotes[n] }
        return "websocket:\(remote ?? "?")"
    }

    /// Callsigns with their nodes' state, and the admission lists.
    func devices() -> DevicesResponse {
        let now = clock()
        let records = (try? store?.callsigns()) ?? []
        let admission = ((try? store?.admission()) ?? []).map { AdmissionView(list: $0.kind, subject: $0.subject, addedAt: Date(timeIntervalSince1970: $0.addedAt)) }
        let views = lock.withLock { Dictionary(registry.views(now: now).map { ($0.publicKey, $0) }, uniquingKeysWith: { a, _ in a }) }
        let devices = records.map { r in
            let v = views[r.key]
            return DeviceView(callsign: r.callsign, publicKey: r.key, connected: v != nil, connectedSecondsAgo: v?.registeredSecondsAgo,
                              lastActivitySecondsAgo: v?.lastHeardSecondsAgo ?? now - r.lastSeen, claimedAt: Date(timeIntervalSince1970: r.claimedAt), listed: r.listed)
        }
        return DevicesResponse(devices: devices, admission: admission, storeProblem: storeProblem)
    }

    var storeProblem: String? {
        if store == nil { return "no relay store (relayd has no state directory it can write)" }
        return store?.setAside.map { "the relay store was corrupt (\($0.reason)): kept aside as \($0.path); callsigns and admission lists start empty" }
    }

    /// `GET /devices/CALLSIGN`: shown when the device is listed, or to a caller with one of the
    /// relay's tokens (Authorization: Bearer); otherwise not found (its existence is not told).
    func publicDevice(_ callsign: String, authorization: String?) -> PublicDevice? {
        guard let r = try? store?.record(callsign) else { return nil }
        let tokens = lock.withLock { config.tokens }
        let bearer = authorization.flatMap { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : nil }
        guard r.listed || (bearer.map { b in tokens.contains { constantTimeEqual($0, b) } } ?? false) else { return nil }
        let now = clock()
        let v = lock.withLock { registry.views(now: now).first { $0.publicKey == r.key } }
        return PublicDevice(callsign: r.callsign, connected: v != nil, connectedSince: v.map { Date(timeIntervalSince1970: now - $0.registeredSecondsAgo) },
                            lastActivity: Date(timeIntervalSince1970: v.map { now - $0.lastHeardSecondsAgo } ?? r.lastSeen), services: [])
    }

    func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var d = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<x.count { d |= x[i] ^ (i < y.count ? y[i] : 0) }
        return d == 0
    }

    var status: RelayServerStatus {
        lock.lock(); defer { lock.unlock() }
        return RelayServerStatus(port: port, publicKey: Data(registry.staticKey.publicKey.rawRepresentation).base64EncodedString(),
                                 nodes: registry.active, pending: registry.pending, maxNodes: registry.policy.maxNodes, counters: registry.counters)
    }

    /// Registered nodes; one on a WebSocket shows "websocket from ADDRESS:PORT".
    func nodes() -> [RelayNodeView] {
        lock.lock(); defer { lock.unlock() }
        return registry.views(now: clock()) { e in e.streamNumber.map { "websocket from \(streamRemotes[$0] ?? "?")" } ?? "\(e)" }
    }

    /// recvmmsg (with UDP GRO: a node's train of frames arrives as one buffer) under one lock per
    /// batch; forward frames become deliver frames in place, and what goes to one destination in a
    /// row leaves as one UDP GSO train (sendmmsg); everything else takes the general path.
    private func loop() {
        let slot = 65536, batch = 32
        let rx = UnsafeMutablePointer<UInt8>.allocate(capacity: slot * batch)
        defer { rx.deallocate() }
        var lens = [Int32](repeating: 0, count: batch), segs = [Int32](repeating: 0, count: batch)
        var from = [sockaddr_in6](repeating: sockaddr_in6(), count: batch)
        let gro = CRelayShim_udp_enable_gro(fd) == 0
        var out = Trains()
        var toStreams: [(UInt64, [UInt8])] = []
        var lastTick = clock()
        var pfd = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        var waiter = AdaptivePoll()
        while !stopped.load(ordering: .relaxed) {
            pfd[0].revents = 0
            if waiter.wait(&pfd, count: 1, fixed: 0, adaptive: adaptivePolling.load(ordering: .relaxed)) {
                for _ in 0..<16 {
                    let n = from.withUnsafeMutableBytes { f in Int(CRelayShim_recv_batch_gro(fd, rx, slot, Int32(batch), &lens, &segs, f.baseAddress, Int32(MSG_DONTWAIT))) }
                    guard n > 0 else { break }
                    let now = clock()
                    lock.lock()
                    for i in 0..<n {
                        let total = Int(lens[i])
                        guard total > 0, let source = TunnelService.endpoint(from[i]) else { continue }
                        guard source.streamNumber == nil else { registry.counters.malformed += 1; continue }
                        let step = gro && segs[i] > 0 ? Int(segs[i]) : total
                        guard step <= RelayServer.maxDatagram else { registry.counters.oversized += 1; continue }
                        var off = 0
                        while off < total {
                            let len = min(step, total - off)
                            let p = UnsafeMutableRawBufferPointer(start: rx + i * slot + off, count: len)
                            switch registry.forwardInPlace(p, from: source, now: now) {
                            case .forwarded(let to):
                                if let n = to.streamNumber { out.close(); toStreams.append((n, Array(p))) }
                                else { out.add(offset: i * slot + off, length: len, to: TunnelService.socketAddress(to)) }
                            case .handled: out.close()
                            case .slow: out.close(); registry.receive(Array(p)[...], from: source, now: now)
                            }
                            off += len
                        }
                        out.close()
                    }
                    let extra = registry.take()
                    let senders = toStreams.map { streams[$0.0] }
                    let (claims, events) = takeStoreWork()
                    lock.unlock()
                    storeWork(claims, events)
                    let dropped = out.send(fd, rx) + zip(senders, toStreams).filter { !($0.0?.send($0.1.1) ?? false) }.count
                    toStreams.removeAll(keepingCapacity: true)
                    if dropped > 0 { lock.lock(); registry.counters.sendDropped += dropped; lock.unlock() }
                    flush(extra)
                    if n < batch { break }
                }
            }
            let now = clock()
            if now - lastTick >= 1 {
                lastTick = now
                lock.lock(); registry.tick(now: now); let (claims, events) = takeStoreWork(); lock.unlock()
                storeWork(claims, events)
                expireCallsigns(now: now)
            }
        }
    }

    /// Forwarded frames, sent from where they lie in the receive buffer: consecutive equal-size
    /// frames to one destination make one UDP GSO train.
    struct Trains {
        var offsets = [Int](repeating: 0, count: 64), lens = [Int32](repeating: 0, count: 64), segs = [Int32](repeating: 0, count: 64)
        var addrs = [sockaddr_in6](repeating: sockaddr_in6(), count: 64)
        var count = 0, segments = 0
        var open = false
        var pending: [(Int, Int32, Int32, sockaddr_in6)] = []

        mutating func add(offset: Int, length: Int, to: sockaddr_in6) {
            let last = count - 1
            if open, last >= 0, offsets[last] + Int(lens[last]) == offset, length == Int(segs[last]), segments < 64, Int(lens[last]) + length <= 65000, same(addrs[last], to) {
                lens[last] += Int32(length); segments += 1
                return
            }
            if count == 64 { pending.append((offset, Int32(length), Int32(length), to)); open = false; return }
            offsets[count] = offset; lens[count] = Int32(length); segs[count] = Int32(length); addrs[count] = to
            count += 1; segments = 1; open = true
        }
        /// The next frame starts a new train.
        mutating func close() { open = false }

        func same(_ a: sockaddr_in6, _ b: sockaddr_in6) -> Bool { var a = a, b = b; return memcmp(&a, &b, MemoryLayout<sockaddr_in6>.size) == 0 }

        /// Sends everything; returns how many messages could not be sent (the socket's buffer was full).
        mutating func send(_ fd: Int32, _ base: UnsafeMutablePointer<UInt8>) -> Int {
            var dropped = 0
            var start = 0
            while start < count {
                var err: Int32 = 0
                let sent = offsets.withUnsafeBufferPointer { o in lens.withUnsafeBufferPointer { l in segs.withUnsafeBufferPointer { sg in addrs.withUnsafeBytes { a in
                    Int(CRelayShim_send_batch_gso(fd, base, o.baseAddress! + start, Int32(count - start), l.baseAddress! + start, sg.baseAddress! + start,
                                                  a.baseAddress! + start * MemoryLayout<sockaddr_in6>.stride, &err))
                } } } }
                if sent <= 0 { dropped += 1; start += 1 } else { start += sent }
            }
            for (off, len, _, to) in pending {
                var a = to
                let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, base + off, Int(len), Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
                if r < 0 { dropped += 1 }
            }
            count = 0; segments = 0; open = false; pending.removeAll(keepingCapacity: true)
            return dropped
        }
    }

    private func flush(_ out: [([UInt8], Endpoint)]) {
        guard !out.isEmpty else { return }
        var dropped = 0
        let senders: [UInt64: WebSocketSender] = out.contains { $0.1.streamNumber != nil } ? lock.withLock { streams } : [:]
        for (bytes, to) in out {
            if let n = to.streamNumber {
                if !(senders[n]?.send(bytes) ?? false) { dropped += 1 }
                continue
            }
            var sa = TunnelService.socketAddress(to)
            let n = withUnsafePointer(to: &sa) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
            if n < 0 { dropped += 1 }
        }
        if dropped > 0 { lock.lock(); registry.counters.sendDropped += dropped; lock.unlock() }
    }

    // MARK: WebSocket transport

    /// A WebSocket to the relay opened: its stand-in endpoint's number, or nil when the relay holds
    /// as many connections as nodes it may hold.
    func openStream(_ sender: WebSocketSender, remote: String) -> UInt64? {
        lock.withLock {
            guard streams.count < registry.policy.maxNodes else { return nil }
            let n = nextStream
            nextStream += 1
            streams[n] = sender
            streamRemotes[n] = remote
            return n
        }
    }

    /// One relay message from a WebSocket: the same path as a datagram from a UDP source.
    func streamMessage(_ n: UInt64, _ bytes: [UInt8]) {
        let now = clock()
        lock.lock()
        if bytes.count > RelayServer.maxDatagram { registry.counters.oversized += 1; lock.unlock(); return }
        registry.receive(bytes[...], from: .stream(n), now: now)
        let out = registry.take()
        let (claims, events) = takeStoreWork()
        lock.unlock()
        flush(out)
        storeWork(claims, events)
    }

    /// The WebSocket closed: its registration ends at once.
    func closeStream(_ n: UInt64) {
        let (claims, events) = lock.withLock { () -> ([(id: UInt32, key: [UInt8], listed: Bool, callsign: String)], [RelayRegistry.Event]) in
            streams[n] = nil
            registry.disconnected(.stream(n))
            return takeStoreWork()
        }
        storeWork(claims, events)  // names the connection by its address: before that is forgotten
        lock.withLock { streamRemotes[n] = nil }
    }

    var streamCount: Int { lock.withLock { streams.count } }
}

/// The relay's WebSocket route (`/relay` on the front door): each connection carries relay
/// messages, one per binary WebSocket message, both ways (docs/relay-protocol.md).
final class RelayWebSocketEndpoint: WebSocketEndpoint, @unchecked Sendable {
    let server: RelayServer
    init(server: RelayServer) { self.server = server }

    func open(remote: String, sender: WebSocketSender) -> (any WebSocketSession)? {
        guard let n = server.openStream(sender, remote: remote) else {
            server.logger.warning("relay: refused a WebSocket from \(remote): the relay holds relay.max_nodes connections")
            return nil
        }
        server.logger.debug("relay: WebSocket \(n) from \(remote)")
        return Session(server: server, number: n)
    }

    final class Session: WebSocketSession, @unchecked Sendable {
        let server: RelayServer, number: UInt64
        init(server: RelayServer, number: UInt64) { self.server = server; self.number = number }
        func received(_ message: [UInt8]) { server.streamMessage(number, message) }
        func closed() { server.closeStream(number) }
    }
}

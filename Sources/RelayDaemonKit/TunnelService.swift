import Crypto
import Foundation
import Synchronization
import Logging
import RelayControlAPI
import RelayCore
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

/// A peer as the tunnel sees it: identity, where to send, which virtual prefixes are behind it.
/// One object per public key for as long as the key is configured: a reload updates it in place.
final class TunnelPeer {
    var name: String
    let publicKey: [UInt8]
    var endpoint: sockaddr_in6?
    var prefixes: [IPPrefix]
    var current: TunnelSession?
    var previous: TunnelSession?
    /// Responder side: a new session not used for sending until the initiator's first packet on it
    /// arrives (otherwise we could send on keys the initiator has not installed yet).
    var next: TunnelSession?
    var pending: (initiator: Noise.Initiator, index: UInt32, sentAt: Double, firstAt: Double)?
    var queue: [[UInt8]] = []
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

    init(name: String, publicKey: [UInt8], endpoint: sockaddr_in6?, prefixes: [IPPrefix]) {
        self.name = name; self.publicKey = publicKey; self.endpoint = endpoint; self.prefixes = prefixes
    }
}

/// The packet path between the TUN device and the peers: Noise IK sessions over UDP.
public final class TunnelService: @unchecked Sendable {
    let identity: NodeIdentity
    let ownPublic: [UInt8]
    let logger: Logger
    let tun: () -> TunHandle
    let lock = NSLock()
    var peers: [TunnelPeer] = []
    var byIndex: [UInt32: TunnelPeer] = [:]
    public internal(set) var counters = TunnelCounters()
    /// What this site exports to its peers: its virtual prefixes. A peer's packet to anything else
    /// (the gateway's own addresses, the underlay, another routed network) is dropped.
    var exported: [IPPrefix] = []
    /// mac1 key of messages to this node, and the handshake thread's bounded queue.
    let ownMac1Key: SymmetricKey
    let handshakes = HandshakeQueue(capacity: 4096)
    /// The greatest initiation timestamp per peer, persisted (set before start by the daemon).
    public var initiationStamps = InitiationStamps(directory: nil)
    var socketFD: Int32 = -1
    public private(set) var port: UInt16 = 0
    var stopped = false
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
        self.logger = logger
        self.tun = tun
        self.clock = clock
        self.flows = flows
    }

    // MARK: configuration

    static func socketAddress(_ e: Endpoint) -> sockaddr_in6 {
        var sa = sockaddr_in6()
        sa.sin6_family = sa_family_t(AF_INET6)
        sa.sin6_port = e.port.bigEndian
        let bytes: [UInt8]
        switch e.address {
        case .v4(let a): bytes = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] + a.bytes
        case .v6(let a): bytes = a.bytes
        }
        withUnsafeMutableBytes(of: &sa.sin6_addr) { for i in 0..<16 { $0[i] = bytes[i] } }
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

    static func describe(_ sa: sockaddr_in6) -> String {
        let b = withUnsafeBytes(of: sa.sin6_addr) { Array($0) }
        let port = UInt16(bigEndian: sa.sin6_port)
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff {
            return "\(b[12]).\(b[13]).\(b[14]).\(b[15]):\(port)"
        }
        return "[\(IPv6Address(bytes: b)!)]:\(port)"
    }

    /// Applies a configuration: keeps sessions of unchanged peers, drops removed ones.
    public func configure(_ cfg: RelayConfiguration) {
        lock.lock(); defer { lock.unlock() }
        busyPollAtomic.store(UInt64(max(0, cfg.node.busyPoll)) * 1000, ordering: .relaxed)
        singleThreadAtomic.store(cfg.node.packetThreads(cpus: ProcessInfo.processInfo.activeProcessorCount) == 1, ordering: .relaxed)
        var next: [TunnelPeer] = []
        for p in cfg.peers {
            guard let key = Data(base64Encoded: p.publicKey).map(Array.init), key.count == 32 else { continue }
            let prefixes = p.sites.flatMap(\.virtualPrefixes)
            let ep = p.endpoint.map(TunnelService.socketAddress)
            if let old = peers.first(where: { $0.publicKey == key }) {
                // The same object: its sessions (and their counters) are never copied.
                old.name = p.name
                old.prefixes = prefixes
                if let ep { old.endpoint = ep }
                next.append(old)
            } else {
                let peer = TunnelPeer(name: p.name, publicKey: key, endpoint: ep, prefixes: prefixes)
                peer.lastInitiationStamp = initiationStamps.stamp(for: key)
                next.append(peer)
            }
        }
        peers = next
        handshakes.setKnown(peers.compactMap(\.endpoint))
        exported = cfg.site.map { [$0.virtual4, $0.virtual6, $0.virtual6Lan].compactMap { $0 } } ?? []
        translator = TranslatorRef(SiteTranslator(cfg))
        if reflectionServers != cfg.reflector.servers { reflectionServers = cfg.reflector.servers; lastReflection = 0 }
        reflectionInterval = Double(cfg.reflector.interval)
        let schedule = STUNSchedule(rto: Double(cfg.reflector.rtoMilliseconds) / 1000, count: cfg.reflector.retransmissions)
        if schedule != reflecting.schedule { reflecting = STUNTransactions(schedule: schedule) }
        byIndex = [:]
        for p in peers {
            for s in [p.current, p.previous, p.next].compactMap({ $0 }) { byIndex[s.localIndex] = p }
            if let pend = p.pending { byIndex[pend.index] = p }
        }
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
        for (name, body) in [("tunnel-udp", udpLoop), ("tunnel-tun", tunLoop), ("tunnel-handshakes", handshakeLoop), ("tunnel-timers", timerLoop), ("address-watch", addressWatch)] as [(String, () -> Void)] {
            running.enter()
            let group = running
            let t = Thread { body(); group.leave() }
            t.name = name
            t.start()
        }
        logger.info("peer tunnels on UDP port \(self.port)")
        // Say hello to every peer we know how to reach: after a restart the peers learn at once that
        // our old sessions are gone (instead of after their 15-second no-answer timer).
        lock.lock()
        let now = clock()
        for p in peers where p.endpoint != nil && p.current == nil && p.pending == nil { initiate(p, now: now) }
        lock.unlock()
    }

    let running = DispatchGroup()

    /// Stops the loops and waits for them to finish (each wakes within 250 ms), then closes the socket.
    public func stop() {
        lock.lock(); stopped = true; lock.unlock()
        _ = running.wait(timeout: .now() + 2)
        if socketFD >= 0 { close(socketFD); socketFD = -1 }
    }

    var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    /// Sends one datagram; returns 0 or the errno (EMSGSIZE: the path MTU to the peer is smaller).
    @discardableResult
    func send(_ bytes: [UInt8], to sa: sockaddr_in6) -> Int32 {
        var a = sa
        let n = withUnsafePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(socketFD, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        return n < 0 ? errno : 0
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
        let inner = pmtu - (mapped ? 20 : 40) - 8 - TunnelLimits.overhead
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
        var n = 0
        while !isStopped {
            usleep(50_000)
            lock.lock(); stunTick(now: clock()); lock.unlock()
            n += 1
            if n % 5 == 0 { tick() }
        }
    }

    // MARK: outgoing

    /// What sealing one packet for its peer needs: key, counter, the peer's index and endpoint.
    struct Sealing {
        let key: SymmetricKey; let counter: UInt64; let remote: UInt32; let ep: sockaddr_in6
        func advanced(by i: Int) -> Sealing { Sealing(key: key, counter: counter + UInt64(i), remote: remote, ep: ep) }
    }

    /// Picks the peer for a packet from the TUN device and takes a counter of its session (the
    /// caller seals, unlocked); nil when the packet was queued (handshake pending) or dropped.
    /// `count` packets of one train (segments of one TSO burst, `bytes` in all) take consecutive
    /// counters at once; `pkt` is the first.
    func reserve(_ pkt: ArraySlice<UInt8>, count: Int = 1, bytes: Int? = nil) -> Sealing? {
        guard let (src, dst) = IPHeader.addresses(pkt) else { lock.lock(); counters.malformed += 1; lock.unlock(); return nil }
        let now = clock()
        lock.lock()
        guard let peer = peers.first(where: { p in p.prefixes.contains { $0.contains(dst) } }) else {
            counters.noRoute += 1; lock.unlock()
            answer(pkt, .noRoute)
            return nil
        }
        if peer.current?.expired(now: now) == false, let ep = peer.endpoint {
            let (key, n, remote) = peer.current!.reserve(count)  // in place, no copy of the session
            peer.lastSent = now; peer.txBytes += UInt64(bytes ?? pkt.count); peer.txPackets += UInt64(count)
            if peer.unansweredSince == nil { peer.unansweredSince = now }
            let rekey = peer.current!.wantsRekey(now: now) && peer.pending == nil
            let name = peer.name
            lock.unlock()
            flows.record(pkt, outbound: true, peer: name, now: now, packets: count, bytes: bytes)
            if rekey { lock.lock(); initiate(peer, now: now); lock.unlock() }
            _ = src
            return Sealing(key: key, counter: n, remote: remote, ep: ep)
        }
        if peer.queue.count >= 32 { peer.queue.removeFirst(); counters.queueOverflow += 1 }
        peer.queue.append(Array(pkt))
        if peer.pending == nil { initiate(peer, now: now) }
        lock.unlock()
        return nil
    }

    /// Sends a handshake initiation (lock held).
    func initiate(_ peer: TunnelPeer, now: Double) {
        guard let ep = peer.endpoint else { return }  // the peer will call us
        do {
            var ini = try Noise.Initiator(staticKey: identity.privateKey, remoteStatic: peer.publicKey)
            var stamp = [UInt8](); put64be(UInt64(now * 1e9), &stamp)
            let msg = try ini.writeMessage1(payload: stamp)
            if let old = peer.pending { byIndex[old.index] = nil }
            let index = freshIndex()
            let cookie = peer.cookie.flatMap { now - $0.at < 120 ? $0.value : nil }
            let wire = TunnelMessage.initiation(sender: index, noise: msg, mac1Key: HandshakeMAC.key(receiver: peer.publicKey), cookie: cookie)
            peer.lastMac1 = Array(HandshakeMAC.mac1(of: wire[...]))
            peer.pending = (ini, index, now, peer.pending?.firstAt ?? now)
            peer.nextRetry = now + TunnelLimits.rekeyTimeout + Double.random(in: 0...0.333)
            byIndex[index] = peer
            counters.handshakesSent += 1
            send(wire, to: ep)
        } catch {
            logger.error("cannot start a handshake with \(peer.name): \(error)")
        }
    }

    func freshIndex() -> UInt32 {
        while true { let i = UInt32.random(in: 1...UInt32.max); if byIndex[i] == nil { return i } }
    }

    // MARK: incoming

    func receive(_ b: ArraySlice<UInt8>, from: sockaddr_in6) {
        if STUN.looksLikeSTUN(b) {
            // A response to our own reflection request, or a request for our reflector.
            if b[b.startIndex] & 0x01 == 0x01 || b[b.startIndex + 1] & 0x10 == 0x10 {
                if let m = try? STUN.parse(b, allowClassic: false), m.type == STUN.bindingSuccess || m.type == STUN.bindingError { reflectionAnswer(m, from: from) }
                else { lock.lock(); counters.malformed += 1; lock.unlock() }
                return
            }
            // Our own hairpinning probe, back through the NAT?
            if b.count >= 20, let m = try? STUN.parse(b, allowClassic: false), m.type == STUN.bindingRequest, hairpinProbe(m, from: from) { return }
            if let r = reflector, let answer = r.handle(b, from: from) { send(answer, to: from) }
            return
        }
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
                        if !reply.isEmpty { send(reply, to: from); cookies += 1 }
                        continue
                    }
                    guard let ip = TunnelService.endpoint(from)?.address, perSource.allow(ip, now: now) else { dropped += 1; continue }
                }
                handleInitiation(sender: sender, Array(noise), from: from, now: now)
            }
            if dropped + cookies + badMAC > 0 {
                lock.lock(); counters.handshakesDropped += dropped; counters.cookiesSent += cookies; counters.badMAC += badMAC; lock.unlock()
            }
        }
    }

    /// A cookie from a peer under load, for our pending initiation: kept, and the initiation is
    /// sent again at once with mac2.
    func handleCookie(receiver: UInt32, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, now: Double) {
        lock.lock(); defer { lock.unlock() }
        guard let peer = byIndex[receiver], let pend = peer.pending, pend.index == receiver,
              let cookie = HandshakeMAC.openCookie(nonce: nonce, sealed: sealed, mac1: peer.lastMac1, key: HandshakeMAC.cookieKey(sender: peer.publicKey))
        else { counters.unknownIndex += 1; return }
        let fresh = peer.cookie.map { now - $0.at >= 1 } ?? true  // at most one re-send a second
        peer.cookie = (cookie, now)
        counters.cookiesReceived += 1
        if fresh { initiate(peer, now: now) }
    }

    /// The source as a cookie binds it: its 16 address bytes and 2 port bytes.
    static func sourceBytes(_ sa: sockaddr_in6) -> [UInt8] {
        withUnsafeBytes(of: sa.sin6_addr) { Array($0) } + withUnsafeBytes(of: sa.sin6_port) { Array($0) }
    }

    /// A valid initiation with a newer timestamp than any accepted from its peer (kept across
    /// restarts) gets a response at its source. The peer's endpoint does not move here: only
    /// authenticated data on the new session (the initiator proving it is alive there) moves it.
    func handleInitiation(sender: UInt32, _ noise: [UInt8], from: sockaddr_in6, now: Double) {
        var r = Noise.Responder(staticKey: identity.privateKey)
        guard let payload = try? r.readMessage1(noise), payload.count == 8 else { lock.lock(); counters.authFailed += 1; lock.unlock(); return }
        let stamp = payload.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        lock.lock()
        guard let peer = peers.first(where: { $0.publicKey == r.remoteStatic }) else { counters.unknownPeer += 1; lock.unlock(); return }
        guard stamp > peer.lastInitiationStamp else { counters.replayedInitiation += 1; lock.unlock(); return }
        guard let (m2, transport) = try? r.writeMessage2() else { counters.authFailed += 1; lock.unlock(); return }
        peer.lastInitiationStamp = stamp
        let index = freshIndex()
        let session = TunnelSession(localIndex: index, remoteIndex: sender, transport: transport, createdAt: now, isInitiator: false)
        if peer.current == nil {
            install(peer, session, now: now)  // nothing to keep sending on: use it at once
        } else {
            if let old = peer.next { byIndex[old.localIndex] = nil }
            peer.next = session
            byIndex[index] = peer
            peer.lastHandshake = now
        }
        counters.handshakesCompleted += 1
        peer.responseSentAt = (index, now)
        let key = peer.publicKey, name = peer.name
        lock.unlock()
        let response = TunnelMessage.response(sender: index, receiver: sender, noise: m2, mac1Key: HandshakeMAC.key(receiver: key))
        // Durable before the answer leaves: after a crash, this initiation (and every older one) is
        // still refused.
        do { try initiationStamps.record(key, stamp) } catch {
            logger.warning("cannot keep the handshake timestamp of \(name) in \(initiationStamps.path ?? "-"): \(error); a replay after a restart would be accepted once")
        }
        send(response, to: from)
        lock.lock(); flushQueue(peer, now: now); lock.unlock()
    }

    func handleResponse(sender: UInt32, receiver: UInt32, _ noise: [UInt8], from: sockaddr_in6, now: Double) {
        lock.lock(); defer { lock.unlock() }
        guard let peer = byIndex[receiver], var pend = peer.pending, pend.index == receiver else { counters.unknownIndex += 1; return }
        guard let (_, transport) = try? pend.initiator.readMessage2(noise) else { counters.authFailed += 1; return }
        peer.pending = nil
        peer.latency = now - pend.sentAt
        install(peer, TunnelSession(localIndex: receiver, remoteIndex: sender, transport: transport, createdAt: now, isInitiator: true), now: now)
        peer.endpoint = from
        counters.handshakesCompleted += 1
        flushQueue(peer, now: now)
        if peer.queue.isEmpty && peer.current != nil {
            // Confirm the session to the responder right away (WireGuard sends a keepalive).
            if let s = peer.current, let ep = peer.endpoint { let ka = s.seal([][...]); peer.lastSent = now; send(ka, to: ep) }
        }
    }

    /// New current session; the old one stays as previous until it expires (lock held).
    func install(_ peer: TunnelPeer, _ s: TunnelSession, now: Double) {
        if let prev = peer.previous { byIndex[prev.localIndex] = nil }
        peer.previous = peer.current
        peer.current = s
        byIndex[s.localIndex] = peer
        peer.lastHandshake = now
        logger.debug("session with \(peer.name) established (index \(s.localIndex), \(s.isInitiator ? "initiator" : "responder"))")
    }

    func flushQueue(_ peer: TunnelPeer, now: Double) {
        guard let s = peer.current, let ep = peer.endpoint else { return }
        for pkt in peer.queue {
            send(s.seal(pkt[...]), to: ep)
            peer.txBytes += UInt64(pkt.count); peer.txPackets += 1
            flows.record(pkt[...], outbound: true, peer: peer.name, now: now)
        }
        if !peer.queue.isEmpty { peer.lastSent = now }
        peer.queue.removeAll()
    }

    func handleData(receiver: UInt32, counter: UInt64, _ ct: ArraySlice<UInt8>, from: sockaddr_in6, now: Double) {
        ct.withUnsafeBytes { c in
            handleDataRun(receiver: receiver, count: 1, stride: 0, from: from, now: now) { _ in (counter, c) }
        }
    }

    /// Data messages to one session (`receiver`): one message, or a run of consecutive segments of
    /// one GRO train. 1. Find the session's key (one lock and lookup for the run), 2. open every
    /// message unlocked into the UDP thread's scratch (`stride` bytes apart; nothing allocated),
    /// 3. replay window and peer state for all of them under one lock, 4. deliver.
    /// `message(j)` is message j's counter and ciphertext (with its tag).
    func handleDataRun(receiver: UInt32, count k: Int, stride: Int, from: sockaddr_in6, now: Double,
                       _ message: (Int) -> (counter: UInt64, ct: UnsafeRawBufferPointer)) {
        precondition(k >= 1 && k <= rxLens.count && (k - 1) * stride + 65536 <= rxPlain.count)
        lock.lock()
        guard let peer = byIndex[receiver] else { counters.unknownIndex += k; lock.unlock(); return }
        // Sessions are read and updated in place (a copy would copy the replay window on write).
        var key: SymmetricKey?
        if peer.current?.localIndex == receiver { key = peer.current?.receiveState(now: now) }
        else if peer.previous?.localIndex == receiver { key = peer.previous?.receiveState(now: now) }
        else if peer.next?.localIndex == receiver { key = peer.next?.receiveState(now: now) }
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
        for j in 0..<k {
            guard rxLens[j] >= 0 else { counters.authFailed += 1; continue }
            let counter = rxCounters[j]
            var fresh = false
            if peer.current?.localIndex == receiver { fresh = peer.current!.acceptCounter(counter) }
            else if peer.previous?.localIndex == receiver { fresh = peer.previous!.acceptCounter(counter) }
            else if let s = peer.next, s.localIndex == receiver {
                fresh = s.acceptCounter(counter)
                // Confirmed by the initiator: it becomes the session we send on.
                peer.next = nil
                if fresh { install(peer, s, now: s.createdAt) }
            }
            guard fresh else { counters.authFailed += 1; rxLens[j] = -1; continue }  // a replay
            peer.endpoint = from  // roaming: the last authenticated source (liveness proven here)
            peer.lastReceived = now
            peer.unansweredSince = nil
            if let r = peer.responseSentAt, r.index == receiver {
                // The initiator confirms a new session at once: response-to-first-data is a round trip.
                peer.latency = now - r.at
                peer.responseSentAt = nil
            }
            let plen = rxLens[j]
            if plen == 0 { rxLens[j] = -1; continue }  // keepalive
            // The inner source must belong to this peer's sites: no peer may speak for another site.
            let src = rxPlain.withUnsafeBytes { IPHeader.source(UnsafeRawBufferPointer(rebasing: $0[(j * stride)..<(j * stride + plen)])) }
            guard let src, peer.prefixes.contains(where: { $0.contains(src) }) else {
                counters.spoofedSource += 1; rxLens[j] = -1; continue
            }
            // ... and its destination must be something this site exports.
            let dst = rxPlain.withUnsafeBytes { IPHeader.destination(UnsafeRawBufferPointer(rebasing: $0[(j * stride)..<(j * stride + plen)])) }
            guard let dst, exported.contains(where: { $0.contains(dst) }) else {
                counters.notExported += 1; rxLens[j] = -1; continue
            }
            peer.rxBytes += UInt64(plen); peer.rxPackets += 1
        }
        // Packets queued while the peer had no known endpoint go now that it has proven one.
        if !peer.queue.isEmpty && peer.current != nil { flushQueue(peer, now: now) }
        let name = peer.name
        lock.unlock()
        for j in 0..<k where rxLens[j] > 0 {
            deliverInbound(rxPlain[(j * stride)..<(j * stride + rxLens[j])], peer: peer, name: name, now: now)
        }
    }

    /// One opened, accepted packet from `peer`: counted in the flow table, translated to IPv6 when
    /// it is for one of this site's mapped IPv6 hosts, written to the TUN device.
    func deliverInbound(_ pt: ArraySlice<UInt8>, peer: TunnelPeer, name: String, now: Double) {
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
                    lock.lock()
                    if let s = peer.current, let ep = peer.endpoint {
                        let wire = s.seal(icmp[...]); peer.lastSent = now; lock.unlock(); send(wire, to: ep)
                    } else { lock.unlock() }
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
    /// Inbound translation scratch (only the UDP thread uses it).
    var rxXlat = [UInt8](repeating: 0, count: 65536 + 64)

    // MARK: timers

    func tick() {
        let now = clock()
        lock.lock(); defer { lock.unlock() }
        handshakes.setKnown(peers.compactMap(\.endpoint))
        for peer in peers {
            if let pend = peer.pending, now >= peer.nextRetry {
                if now - pend.firstAt >= TunnelLimits.rekeyAttemptTime {
                    byIndex[pend.index] = nil
                    peer.pending = nil
                    peer.queue.removeAll()
                    logger.notice("handshake with \(peer.name) gave up after \(Int(TunnelLimits.rekeyAttemptTime)) s")
                } else {
                    initiate(peer, now: now)
                }
            }
            if let since = peer.unansweredSince, now - since >= TunnelLimits.keepaliveTimeout + TunnelLimits.rekeyTimeout, peer.pending == nil {
                // We keep sending and hear nothing back: the peer may have restarted and lost our session.
                peer.unansweredSince = nil
                initiate(peer, now: now)
            }
            if let s = peer.current, s.expired(now: now) { byIndex[s.localIndex] = nil; peer.current = nil }
            if let s = peer.previous, s.expired(now: now) { byIndex[s.localIndex] = nil; peer.previous = nil }
            if let s = peer.next, s.expired(now: now) { byIndex[s.localIndex] = nil; peer.next = nil }
            // Passive keepalive: we heard from the peer but have not said anything for a while.
            if let s = peer.current, let ep = peer.endpoint, peer.lastReceived > peer.lastSent, now - peer.lastSent >= TunnelLimits.keepaliveTimeout {
                send(s.seal([][...]), to: ep); peer.lastSent = now
            }
        }
        flows.expire(now: now)
        // Re-check the public address every 60 s (the first time right after start).
        if now - lastReflection >= reflectionInterval || (lastReflection == 0) { askPeers(now: now) }
    }

    // MARK: reflection (this node's public address, as its peers see it)

    /// Test I (RFC 5780 terms) towards every peer and configured reflector, retransmitted on the
    /// RFC 8489 schedule; the answers are observations for the vote.
    var reflecting = STUNTransactions<String>(schedule: STUNSchedule())
    var reflectionServers: [Endpoint] = []
    var reflectionInterval: Double = 60
    var observations: [ReflectionVote.Observation] = []
    var lastReflection: Double = 0
    /// RFC 5780 behaviour discovery, against the first reflector that names an OTHER-ADDRESS.
    var discovery: NATDiscovery?
    var discoveryRound: Double = -1
    public private(set) var behaviour: NATBehaviour?

    /// Asks every peer with a known endpoint and every configured reflector (lock held).
    func askPeers(now: Double) {
        lastReflection = now
        var targets: [(String, Endpoint)] = peers.compactMap { p in p.endpoint.flatMap(TunnelService.endpoint).map { (p.name, $0) } }
        targets += reflectionServers.map { ("stun \($0)", $0) }
        for (name, ep) in targets where !reflecting.entries.values.contains(where: { $0.tag == name }) {
            let (_, m) = reflecting.begin(name, to: ep, now: now)
            send(m, to: TunnelService.socketAddress(ep))
        }
    }

    /// A STUN response on the tunnel port: to a test I request, or to a discovery test.
    func reflectionAnswer(_ m: STUN.Message, from: sockaddr_in6) {
        lock.lock(); defer { lock.unlock() }
        let now = clock()
        if var d = discovery, d.owns(m.transactionID) {
            for (msg, to) in d.receive(m, from: TunnelService.endpoint(from) ?? Endpoint(.v4(IPv4Address(0)), port: 0), now: now) { send(msg, to: TunnelService.socketAddress(to)) }
            discovery = d
            finishDiscovery()
            return
        }
        guard let pend = reflecting.finish(m.transactionID) else { counters.malformed += 1; return }
        guard m.type == STUN.bindingSuccess, let v = m.attribute(STUN.Attr.xorMappedAddress),
              let mapped = STUN.decodeAddress(v, xor: true, transactionID: m.transactionID) else {
            logger.info("reflector \(pend.tag) answered without a mapped address (error or malformed)")
            return
        }
        observations.removeAll { $0.observer == pend.tag && $0.mapped.address.family == mapped.address.family }
        observations.append(ReflectionVote.Observation(observer: pend.tag, mapped: mapped, at: Date()))
        // RFC 5780: a reflector with a second address lets us classify the NAT, once per round.
        if discovery == nil, discoveryRound != lastReflection, let o = m.attribute(STUN.Attr.otherAddress),
           let other = STUN.decodeAddress(o, xor: false, transactionID: m.transactionID), other.address != pend.to.address, other.port != pend.to.port {
            discoveryRound = lastReflection
            let own = mapped.port == port && TunnelService.localAddresses().contains(mapped.address)
            var d = NATDiscovery(server: pend.to, other: other, mapped: mapped, behindNAT: !own, schedule: reflecting.schedule)
            for (msg, to) in d.start(now: now) { send(msg, to: TunnelService.socketAddress(to)) }
            discovery = d
        }
    }

    /// A Binding request that is our own hairpinning probe coming back (lock not held).
    func hairpinProbe(_ m: STUN.Message, from: sockaddr_in6) -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard var d = discovery, d.owns(m.transactionID) else { return false }
        for (msg, to) in d.receive(m, from: TunnelService.endpoint(from) ?? Endpoint(.v4(IPv4Address(0)), port: 0), now: clock()) { send(msg, to: TunnelService.socketAddress(to)) }
        discovery = d
        finishDiscovery()
        return true
    }

    func finishDiscovery() {
        guard let r = discovery?.result else { return }
        behaviour = r
        discovery = nil
        logger.info("NAT behaviour: mapping \(r.mapping.rawValue), filtering \(r.filtering.rawValue)\(r.hairpinning.map { $0 ? ", hairpinning" : ", no hairpinning" } ?? "") (\(r.explanation))")
    }

    /// Retransmissions and timeouts of the STUN client (every 50 ms; lock held).
    func stunTick(now: Double) {
        let (resend, failed) = reflecting.tick(now: now)
        for (m, to) in resend { send(m, to: TunnelService.socketAddress(to)) }
        for f in failed { logger.info("reflector \(f.tag) at \(f.to) did not answer (\(f.sent) requests)") }
        if var d = discovery {
            for (m, to) in d.tick(now: now) { send(m, to: TunnelService.socketAddress(to)) }
            discovery = d
            finishDiscovery()
        }
    }

    /// This host's interface addresses (to tell "no NAT" from a NAT).
    static func localAddresses() -> Set<IPAddress> {
        var out: Set<IPAddress> = []
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return out }
        defer { freeifaddrs(list) }
        var p = list
        while let i = p {
            if let sa = i.pointee.ifa_addr {
                if Int32(sa.pointee.sa_family) == AF_INET {
                    let a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
                    out.insert(.v4(IPv4Address(UInt32(bigEndian: a))))
                } else if Int32(sa.pointee.sa_family) == AF_INET6 {
                    var s6 = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee }
                    s6.sin6_port = 0
                    if let e = TunnelService.endpoint(s6) { out.insert(e.address) }
                }
            }
            p = i.pointee.ifa_next
        }
        return out
    }

    /// Local addresses changed (rtnetlink RTM_NEWADDR/RTM_DELADDR, no privilege needed to listen):
    /// ask the reflectors again now instead of at the next 60-second check.
    func addressWatch() {
        let s = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0 /* NETLINK_ROUTE */)
        guard s >= 0 else { return }
        defer { close(s) }
        // struct sockaddr_nl (linux/netlink.h): family, pad, pid, groups.
        struct SockaddrNL { var family: UInt16; var pad: UInt16 = 0; var pid: UInt32 = 0; var groups: UInt32 }
        var addr = SockaddrNL(family: UInt16(AF_NETLINK), groups: 0x10 | 0x100)  // RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        guard withUnsafePointer(to: &addr, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<SockaddrNL>.size)) } }) == 0 else { return }
        var buf = [UInt8](repeating: 0, count: 16384)
        while !isStopped {
            var pfd = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 200) > 0 else { continue }
            var changed = false
            while recv(s, &buf, buf.count, Int32(MSG_DONTWAIT)) > 0 { changed = true }
            if changed {
                lock.lock(); lastReflection = 0; addressChanges += 1; lock.unlock()
                logger.info("local addresses changed: asking the reflectors again")
            }
        }
    }

    var addressChanges = 0

    public func behaviourSnapshot() -> NATBehaviour? { lock.lock(); defer { lock.unlock() }; return behaviour }

    public func reflection() -> [ReflectionVote.Observation] { lock.lock(); defer { lock.unlock() }; return observations }

    // MARK: views

    public func peerViews() -> [String: PeerRuntime] {
        lock.lock(); defer { lock.unlock() }
        let now = clock()
        var out: [String: PeerRuntime] = [:]
        for p in peers {
            let state = p.current != nil ? "up" : (p.pending != nil ? "handshaking" : (p.endpoint == nil ? "waiting for peer" : "idle"))
            out[p.name] = PeerRuntime(state: state, endpoint: p.endpoint.map(TunnelService.describe), lastHandshakeSecondsAgo: p.lastHandshake.map { now - $0 },
                                      rxBytes: p.rxBytes, txBytes: p.txBytes, rxPackets: p.rxPackets, txPackets: p.txPackets,
                                      latencyMs: p.latency.map { $0 * 1000 })
        }
        return out
    }

    public func countersSnapshot() -> TunnelCounters { lock.lock(); defer { lock.unlock() }; return counters }
}

func put64be(_ v: UInt64, _ out: inout [UInt8]) { for i in (0..<8).reversed() { out.append(UInt8(truncatingIfNeeded: v >> (UInt64(i) * 8))) } }

/// Just enough of IPv4/IPv6 headers for routing decisions.
public enum IPHeader {
    /// The source address of an IPv4 or IPv6 packet (nil when too short or neither).
    @inline(__always)
    public static func source(_ p: UnsafeRawBufferPointer) -> IPAddress? { address(p, v4: 12, v6: 8) }

    /// The destination address of an IPv4 or IPv6 packet (nil when too short or neither).
    @inline(__always)
    public static func destination(_ p: UnsafeRawBufferPointer) -> IPAddress? { address(p, v4: 16, v6: 24) }

    @inline(__always)
    static func address(_ p: UnsafeRawBufferPointer, v4: Int, v6: Int) -> IPAddress? {
        guard let first = p.first else { return nil }
        switch first >> 4 {
        case 4: return p.count >= 20 ? .v4(IPv4Address(p[v4], p[v4 + 1], p[v4 + 2], p[v4 + 3])) : nil
        case 6: return p.count >= 40 ? .v6(SIIT.load6(p, v6)) : nil
        default: return nil
        }
    }

    public static func addresses(_ p: ArraySlice<UInt8>) -> (src: IPAddress, dst: IPAddress)? {
        guard let first = p.first else { return nil }
        let s = p.startIndex
        switch first >> 4 {
        case 4:
            guard p.count >= 20 else { return nil }
            return (.v4(IPv4Address(p[s + 12], p[s + 13], p[s + 14], p[s + 15])), .v4(IPv4Address(p[s + 16], p[s + 17], p[s + 18], p[s + 19])))
        case 6:
            guard p.count >= 40 else { return nil }
            let (a, b) = p.withUnsafeBytes { (SIIT.load6($0, 8), SIIT.load6($0, 24)) }  // no allocation per packet
            return (.v6(a), .v6(b))
        default: return nil
        }
    }
}

extension IPHeader {
    /// The Internet checksum (RFC 1071); 0 over data that includes a correct checksum.
    public static func checksum(_ b: ArraySlice<UInt8>) -> UInt16 { internetChecksum(b) }

    /// Why relayd refuses a packet, as an ICMP/ICMPv6 error (RFC 792/1191, RFC 4443).
    public enum ICMPError: Equatable, Sendable {
        /// Fragmentation needed / packet too big, with the MTU that fits.
        case tooBig(mtu: Int)
        /// No site owns the destination: net unreachable / no route.
        case noRoute
        /// The destination cannot be translated (e.g. an embedded address outside the site's LAN):
        /// host unreachable / address unreachable.
        case addressUnreachable
        /// The source has no name in the other family (no explicit mapping): communication
        /// administratively prohibited (ICMPv4 type 3 code 13, ICMPv6 type 1 code 1).
        case sourcePolicy

        var v4: (type: UInt8, code: UInt8) {
            switch self { case .tooBig: return (3, 4); case .noRoute: return (3, 0); case .addressUnreachable: return (3, 1); case .sourcePolicy: return (3, 13) }
        }
        var v6: (type: UInt8, code: UInt8) {
            switch self { case .tooBig: return (2, 0); case .noRoute: return (1, 0); case .addressUnreachable: return (1, 3); case .sourcePolicy: return (1, 1) }
        }
    }

    /// The ICMP error that tells `original`'s sender to send smaller packets: IPv4 "fragmentation
    /// needed" (RFC 1191) with the next-hop MTU, or ICMPv6 "packet too big" (RFC 4443).
    public static func packetTooBig(_ original: ArraySlice<UInt8>, mtu: Int) -> [UInt8]? { icmpError(original, .tooBig(mtu: mtu)) }

    /// The ICMP/ICMPv6 error about `original`, addressed to its sender. It comes from the original
    /// destination, so the sender's conntrack sees it as related to its flow (and the tunnel's
    /// source check accepts it). nil when no error may be sent: not IPv4/IPv6, an ICMP error itself
    /// (RFC 1122/4443: never about an error), "too big" for IPv4 without DF.
    public static func icmpError(_ original: ArraySlice<UInt8>, _ kind: ICMPError) -> [UInt8]? {
        guard let (src, dst) = addresses(original) else { return nil }
        let o = Array(original)
        var rest: UInt32 = 0
        if case .tooBig(let mtu) = kind { rest = UInt32(mtu) }
        switch (src, dst) {
        case (.v4(let s), .v4(let d)):
            let ihl = Int(o[0] & 0x0f) * 4
            guard ihl >= 20, o.count >= ihl else { return nil }
            if case .tooBig = kind, o[6] & 0x40 == 0 { return nil }                          // DF not set: it may fragment
            if o[9] == 1, o.count > ihl, [3, 4, 5, 11, 12].contains(o[ihl]) { return nil }   // never answer an ICMP error
            if o[6] & 0x1f != 0 || o[7] != 0 { return nil }                                   // only about first fragments
            let quote = Array(o.prefix(min(o.count, 548 - 28)))
            var icmp: [UInt8] = [kind.v4.type, kind.v4.code, 0, 0, 0, 0, UInt8(rest >> 8 & 0xff), UInt8(rest & 0xff)] + quote
            let c = checksum(icmp[...]); icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
            let total = 20 + icmp.count
            var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 0, 0, 0, 64, 1, 0, 0] + d.bytes + s.bytes
            let h = checksum(ip[...]); ip[10] = UInt8(h >> 8); ip[11] = UInt8(h & 0xff)
            return ip + icmp
        case (.v6(let s), .v6(let d)):
            if o[6] == 58, o.count > 40, o[40] < 128 { return nil }                     // an ICMPv6 error
            let quote = Array(o.prefix(min(o.count, 1280 - 48)))
            var icmp: [UInt8] = [kind.v6.type, kind.v6.code, 0, 0, UInt8(rest >> 24 & 0xff), UInt8(rest >> 16 & 0xff), UInt8(rest >> 8 & 0xff), UInt8(rest & 0xff)] + quote
            // Checksum over the pseudo-header (source, destination, length, next header 58).
            let len = UInt32(icmp.count)
            var pseudo = d.bytes + s.bytes
            pseudo += [UInt8(len >> 24), UInt8(len >> 16 & 0xff), UInt8(len >> 8 & 0xff), UInt8(len & 0xff), 0, 0, 0, 58]
            let c = checksum((pseudo + icmp)[...]); icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
            var ip: [UInt8] = [0x60, 0, 0, 0, UInt8(icmp.count >> 8), UInt8(icmp.count & 0xff), 58, 64]
            ip += d.bytes + s.bytes
            return ip + icmp
        default: return nil
        }
    }
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

/// Handshake messages waiting for the handshake thread: bounded (a full queue drops, it never
/// blocks the data path that fills it), with a small priority lane for initiations whose mac2
/// proved a cookie. It also holds what both threads need of the cookie mechanism: whether the node
/// is under load, and the secret cookies are made from (new every two minutes).
final class HandshakeQueue: @unchecked Sendable {
    private let cond = NSCondition()
    private var items: [([UInt8], sockaddr_in6)] = []
    private var priority: [([UInt8], sockaddr_in6)] = []
    private var drops = 0
    private var loaded = false
    private var secret = SymmetricKey(size: .bits256)
    /// Peers' endpoints (address and port): their messages take the priority lane.
    private var known = Set<[UInt8]>()
    let capacity: Int
    static let priorityCapacity = 64
    init(capacity: Int) { self.capacity = capacity }

    /// False when the lane is full (the message is dropped). Messages from a peer's known endpoint
    /// take the priority lane too (spoofing one only competes with that peer, in a lane of 64).
    func push(_ b: [UInt8], from: sockaddr_in6, priority: Bool = false) -> Bool {
        // `known` is read under the lock only: setKnown replaces it from the handshake thread
        // (reading it outside the lock crashed relayd under a flood once).
        let source = TunnelService.sourceBytes(from)
        cond.lock(); defer { cond.unlock() }
        if priority || known.contains(source) {
            if self.priority.count >= HandshakeQueue.priorityCapacity { return false }
            self.priority.append((b, from))
        } else {
            if items.count >= capacity { return false }
            items.append((b, from))
        }
        cond.signal()
        return true
    }

    /// A drop counted here, reported by the handshake thread (the data path takes no other lock).
    func countDrop() { cond.lock(); drops += 1; cond.unlock() }

    /// Everything queued (the priority lane first; how many of those), and the drops since.
    func popAll(timeout: Double) -> (batch: [([UInt8], sockaddr_in6)], prioritised: Int, drops: Int) {
        cond.lock(); defer { cond.unlock() }
        if items.isEmpty && priority.isEmpty { _ = cond.wait(until: Date().addingTimeInterval(timeout)) }
        let p = priority.count
        var taken: [([UInt8], sockaddr_in6)] = []
        swap(&taken, &items)
        items.reserveCapacity(capacity)
        let batch = p == 0 ? taken : priority + taken
        priority.removeAll(keepingCapacity: true)
        let d = drops
        drops = 0
        return (batch, p, d)
    }

    var underLoad: Bool {
        get { cond.lock(); defer { cond.unlock() }; return loaded }
        set { cond.lock(); loaded = newValue; cond.unlock() }
    }

    func rotateSecret() { cond.lock(); secret = SymmetricKey(size: .bits256); cond.unlock() }

    func setKnown(_ endpoints: [sockaddr_in6]) {
        let set = Set(endpoints.map(TunnelService.sourceBytes))
        cond.lock(); known = set; cond.unlock()
    }

    /// The cookie for a source: bound to its address and port, from the current secret.
    func cookie(for from: sockaddr_in6) -> [UInt8] {
        cond.lock(); let k = secret; cond.unlock()
        return HandshakeMAC.cookie(secret: k, source: TunnelService.sourceBytes(from))
    }

    func validMac2(_ b: ArraySlice<UInt8>, from: sockaddr_in6) -> Bool { HandshakeMAC.validMac2(b, cookie: cookie(for: from)) }
}

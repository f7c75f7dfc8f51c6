import Crypto
import Foundation
import Logging
import RelayControlAPI
import RelayCore
import RelayTunnel
import Synchronization
import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// The relay role's loop: its UDP socket and thread around `RelayRegistry`. Off unless
/// `[relay] enabled = true`.
final class RelayServer: @unchecked Sendable {
    let logger: Logger
    let clock: () -> Double
    private let lock = NSLock()
    private let registry: RelayRegistry
    private var fd: Int32 = -1
    private(set) var port: UInt16 = 0
    private let stopped = Atomic<Bool>(false)
    private let running = DispatchGroup()
    /// The largest datagram taken (bigger ones are counted as oversized and dropped).
    static let maxDatagram = 9000

    init(identity: NodeIdentity, config: RelayRoleConfig, logger: Logger, clock: @escaping () -> Double = { Date().timeIntervalSince1970 }) {
        self.logger = logger
        self.clock = clock
        registry = RelayRegistry(staticKey: identity.privateKey, policy: RelayRegistry.Policy(config))
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

    func configure(_ c: RelayRoleConfig) { lock.lock(); registry.policy = RelayRegistry.Policy(c); lock.unlock() }

    var status: RelayServerStatus {
        lock.lock(); defer { lock.unlock() }
        return RelayServerStatus(port: port, publicKey: Data(registry.staticKey.publicKey.rawRepresentation).base64EncodedString(),
                                 nodes: registry.active, pending: registry.pending, maxNodes: registry.policy.maxNodes, counters: registry.counters)
    }

    func nodes() -> [RelayNodeView] { lock.lock(); defer { lock.unlock() }; return registry.views(now: clock()) }

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
        var lastTick = clock()
        while !stopped.load(ordering: .relaxed) {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 250) > 0 {
                for _ in 0..<16 {
                    let n = from.withUnsafeMutableBytes { f in Int(CRelayShim_recv_batch_gro(fd, rx, slot, Int32(batch), &lens, &segs, f.baseAddress, Int32(MSG_DONTWAIT))) }
                    guard n > 0 else { break }
                    let now = clock()
                    lock.lock()
                    for i in 0..<n {
                        let total = Int(lens[i])
                        guard total > 0, let source = TunnelService.endpoint(from[i]) else { continue }
                        let step = gro && segs[i] > 0 ? Int(segs[i]) : total
                        guard step <= RelayServer.maxDatagram else { registry.counters.oversized += 1; continue }
                        var off = 0
                        while off < total {
                            let len = min(step, total - off)
                            let p = UnsafeMutableRawBufferPointer(start: rx + i * slot + off, count: len)
                            switch registry.forwardInPlace(p, from: source, now: now) {
                            case .forwarded(let to): out.add(offset: i * slot + off, length: len, to: TunnelService.socketAddress(to))
                            case .handled: out.close()
                            case .slow: out.close(); registry.receive(Array(p)[...], from: source, now: now)
                            }
                            off += len
                        }
                        out.close()
                    }
                    let extra = registry.take()
                    lock.unlock()
                    let dropped = out.send(fd, rx)
                    if dropped > 0 { lock.lock(); registry.counters.sendDropped += dropped; lock.unlock() }
                    flush(extra)
                    if n < batch { break }
                }
            }
            let now = clock()
            if now - lastTick >= 1 { lastTick = now; lock.lock(); registry.tick(now: now); lock.unlock() }
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
        for (bytes, to) in out {
            var sa = TunnelService.socketAddress(to)
            let n = withUnsafePointer(to: &sa) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
            if n < 0 { dropped += 1 }
        }
        if dropped > 0 { lock.lock(); registry.counters.sendDropped += dropped; lock.unlock() }
    }
}

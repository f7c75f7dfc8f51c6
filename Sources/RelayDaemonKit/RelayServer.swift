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

    private func loop() {
        var buf = [UInt8](repeating: 0, count: RelayServer.maxDatagram + 1)
        var lastTick = clock()
        while !stopped.load(ordering: .relaxed) {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 250) > 0 {
                // Up to 64 datagrams, then the sends they caused (outside the lock).
                var taken = 0
                while taken < 64 {
                    var from = sockaddr_in6(); var len = socklen_t(MemoryLayout<sockaddr_in6>.size)
                    let n = buf.withUnsafeMutableBytes { b in
                        withUnsafeMutablePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, b.baseAddress, b.count, Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC), $0, &len) } }
                    }
                    if n < 0 { break }
                    taken += 1
                    guard let source = TunnelService.endpoint(from) else { continue }
                    let now = clock()
                    lock.lock()
                    if n > RelayServer.maxDatagram { registry.counters.oversized += 1 } else { registry.receive(buf[0..<n], from: source, now: now) }
                    let out = registry.take()
                    lock.unlock()
                    flush(out)
                }
            }
            let now = clock()
            if now - lastTick >= 1 { lastTick = now; lock.lock(); registry.tick(now: now); lock.unlock() }
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

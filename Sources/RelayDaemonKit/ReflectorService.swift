import Foundation
import Logging
import RelayControlAPI
import RelayCore
import RelayIPC
#if canImport(Glibc)
import Glibc
#endif

/// The STUN reflector (RFC 8489 Binding): on its own UDP port (default 3478, IPv4 and IPv6) and on
/// the tunnel port, where STUN's top bits and magic cookie tell it apart from Relay's messages.
/// Rate-limited per source with bounded state; every drop is counted.
public final class ReflectorService: @unchecked Sendable {
    let logger: Logger
    let lock = NSLock()
    var limiter: RateLimiter
    var counters = ReflectorCounters()
    var fd: Int32 = -1
    public private(set) var port: UInt16 = 0
    var stopped = false
    let running = DispatchGroup()

    public init(logger: Logger, rate: Double = 20, burst: Double = 40) {
        self.logger = logger
        limiter = RateLimiter(rate: rate, burst: burst, capacity: 4096)
    }

    public var snapshot: ReflectorCounters { lock.lock(); defer { lock.unlock() }; var c = counters; c.trackedSources = limiter.tracked; c.port = port; c.discoverySockets = discovery?.sockets; return c }

    /// Decides on one datagram from `from`; returns the bytes to send back, if any.
    public func handle(_ b: ArraySlice<UInt8>, from: sockaddr_in6) -> [UInt8]? {
        guard let src = TunnelService.endpoint(from) else { return nil }
        lock.lock()
        guard limiter.allow(src.address, now: Date().timeIntervalSince1970) else { counters.rateLimited += 1; lock.unlock(); return nil }
        lock.unlock()
        switch Reflector.answer(b, from: src) {
        case .respond(let r):
            lock.lock(); if r.count > 1, r[1] == 0x11 { counters.errors += 1 } else { counters.answered += 1 }; lock.unlock()
            return r
        case .drop:
            lock.lock(); counters.malformed += 1; lock.unlock()
            return nil
        }
    }

    /// RFC 5780 mode: four sockets (`discovery.sockets`); nil: one dual-stack wildcard socket.
    public private(set) var discovery: Reflector.Discovery?
    var fds: [Int32] = []

    public func start(port: UInt16) throws { try start(ReflectorConfig.with(port: port)) }

    public func start(_ cfg: ReflectorConfig) throws {
        if let a = cfg.address, let b = cfg.otherAddress {
            let d = Reflector.Discovery(primary: Endpoint(a, port: cfg.port), other: Endpoint(b, port: cfg.alternatePort))
            do {
                for e in d.sockets {
                    let (s, _) = try bindDualStackUDP(port: e.port, what: "the STUN reflector on \(e)", key: "reflector.address, reflector.other_address, reflector.port, reflector.other_port", address: e.address)
                    fds.append(s)
                }
            } catch { for s in fds { close(s) }; fds = []; throw error }
            discovery = d
            port = cfg.port
        } else {
            let (s, p) = try bindDualStackUDP(port: cfg.port, what: "the STUN reflector on UDP port \(cfg.port)", key: "reflector.port, or reflector.enabled = false", address: cfg.address)
            fds = [s]; port = p
            UDPBatch.setReceiveTimeout(s, milliseconds: 200)
        }
        fd = fds[0]
        running.enter()
        let t = Thread { [self] in loop(); running.leave() }
        t.name = "reflector"
        t.start()
        if let d = discovery {
            logger.info("STUN reflector with RFC 5780 behaviour discovery on \(d.sockets.map(\.description).joined(separator: ", "))")
        } else {
            logger.info("STUN reflector on UDP port \(self.port)")
        }
    }

    /// Receives and answers in batches (recvmmsg / sendmmsg, up to 64 datagrams per syscall). One
    /// socket: a blocking receive (no poll per batch). Four sockets (RFC 5780): poll, and answers
    /// leave from the socket CHANGE-REQUEST asks for.
    func loop() {
        let batch = 64, slot = 1536, n = fds.count
        let rx = UnsafeMutablePointer<UInt8>.allocate(capacity: batch * slot)
        let tx: [UnsafeMutablePointer<UInt8>] = (0..<n).map { _ in UnsafeMutablePointer<UInt8>.allocate(capacity: batch * slot) }
        defer { rx.deallocate(); for t in tx { t.deallocate() } }
        var lens = [Int32](repeating: 0, count: batch)
        var from = [sockaddr_in6](repeating: sockaddr_in6(), count: batch)
        var outLens = [[Int32]](repeating: [Int32](repeating: 0, count: batch), count: n)
        var to = [[sockaddr_in6]](repeating: [sockaddr_in6](repeating: sockaddr_in6(), count: batch), count: n)
        var outCount = [Int](repeating: 0, count: n)
        var pfds = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let software = Reflector.software
        var busy = 0
        while true {
            lock.lock(); let stop = stopped; lock.unlock()
            if stop { return }
            if n > 1 {
                for i in 0..<n { pfds[i].revents = 0 }
                guard poll(&pfds, nfds_t(n), 200) > 0 else { continue }
            }
            for sock in 0..<n where n == 1 || pfds[sock].revents != 0 {
                // One socket waits in recvmmsg itself (SO_RCVTIMEO bounds it, for stop()). Under
                // load (the last batch had several), it first lets more arrive for 60 µs, like a
                // NIC's interrupt coalescing: a wake-up and two system calls per datagram cost more
                // than the answers, and one batch of 30 is far cheaper than 30 of one.
                var got = 0
                if n == 1 && busy > 1 {
                    let until = monotonicNanoseconds() + 60_000
                    while monotonicNanoseconds() < until {}
                    got = UDPBatch.receive(fds[0], rx, slot: slot, count: batch, lens: &lens, addrs: &from)
                }
                if got == 0 { got = UDPBatch.receive(fds[sock], rx, slot: slot, count: batch, lens: &lens, addrs: &from, wait: n == 1) }
                busy = got
                guard got > 0 else { continue }
                let now = Date().timeIntervalSince1970
                lock.lock()
                for i in 0..<got {
                    guard lens[i] > 0 else { counters.malformed += 1; continue }  // truncated: oversized
                    guard let src = TunnelService.endpoint(from[i]) else { continue }
                    guard limiter.allow(src.address, now: now) else { counters.rateLimited += 1; continue }
                    let req = UnsafeRawBufferPointer(start: rx + i * slot, count: Int(lens[i]))
                    if discovery == nil {
                        let dst = UnsafeMutableRawBufferPointer(start: tx[0] + outCount[0] * slot, count: slot)
                        if let len = Reflector.answerFast(req, from: src, into: dst) {
                            counters.answered += 1
                            outLens[0][outCount[0]] = Int32(len); to[0][outCount[0]] = from[i]; outCount[0] += 1
                            continue
                        }
                    }
                    let (answer, route) = Reflector.answer(Array(req)[...], from: src, software: software, discovery: discovery, receivedOn: sock)
                    switch answer {
                    case .respond(let r) where r.count <= slot:
                        if r.count > 1, r[1] == 0x11 { counters.errors += 1 } else { counters.answered += 1 }
                        if route.changeAddress || route.changePort { counters.changed += 1 }
                        let out = discovery == nil ? 0 : Reflector.Discovery.socket(sock, route)
                        r.withUnsafeBytes { UnsafeMutableRawBufferPointer(start: tx[out] + outCount[out] * slot, count: slot).copyMemory(from: $0) }
                        var dest = from[i]
                        if let p = route.responsePort { dest.sin6_port = p.bigEndian }
                        outLens[out][outCount[out]] = Int32(r.count); to[out][outCount[out]] = dest; outCount[out] += 1
                    default: counters.malformed += 1
                    }
                }
                lock.unlock()
                for out in 0..<n where outCount[out] > 0 {
                    UDPBatch.send(fds[out], tx[out], slot: slot, count: outCount[out], lens: outLens[out], addrs: to[out])
                    outCount[out] = 0
                }
            }
        }
    }

    public func stop() {
        lock.lock(); stopped = true; lock.unlock()
        _ = running.wait(timeout: .now() + 2)
        for s in fds { close(s) }
        fds = []; fd = -1
    }
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

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

    public var snapshot: ReflectorCounters { lock.lock(); defer { lock.unlock() }; var c = counters; c.trackedSources = limiter.tracked; c.port = port; return c }

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

    public func start(port: UInt16) throws {
        (fd, self.port) = try bindDualStackUDP(port: port, what: "the STUN reflector on UDP port \(port)", key: "reflector.port, or reflector.enabled = false")
        running.enter()
        let t = Thread { [self] in loop(); running.leave() }
        t.name = "reflector"
        t.start()
        logger.info("STUN reflector on UDP port \(self.port)")
    }

    /// Receives and answers in batches (recvmmsg / sendmmsg, up to 64 datagrams per syscall).
    func loop() {
        let batch = 64, slot = 1536
        let rx = UnsafeMutablePointer<UInt8>.allocate(capacity: batch * slot), tx = UnsafeMutablePointer<UInt8>.allocate(capacity: batch * slot)
        defer { rx.deallocate(); tx.deallocate() }
        var lens = [Int32](repeating: 0, count: batch), outLens = [Int32](repeating: 0, count: batch)
        var from = [sockaddr_in6](repeating: sockaddr_in6(), count: batch), to = [sockaddr_in6](repeating: sockaddr_in6(), count: batch)
        while true {
            lock.lock(); let stop = stopped; lock.unlock()
            if stop { return }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 200) > 0 else { continue }
            for _ in 0..<64 {
                let n = UDPBatch.receive(fd, rx, slot: slot, count: batch, lens: &lens, addrs: &from)
                guard n > 0 else { break }
                var out = 0
                let now = Date().timeIntervalSince1970
                lock.lock()
                for i in 0..<n {
                    guard lens[i] > 0 else { counters.malformed += 1; continue }  // truncated: oversized
                    guard let src = TunnelService.endpoint(from[i]) else { continue }
                    guard limiter.allow(src.address, now: now) else { counters.rateLimited += 1; continue }
                    let req = UnsafeRawBufferPointer(start: rx + i * slot, count: Int(lens[i]))
                    let dst = UnsafeMutableRawBufferPointer(start: tx + out * slot, count: slot)
                    if let len = Reflector.answerFast(req, from: src, into: dst) {
                        counters.answered += 1
                        outLens[out] = Int32(len); to[out] = from[i]; out += 1
                        continue
                    }
                    switch Reflector.answer(Array(req)[...], from: src) {
                    case .respond(let r) where r.count <= slot:
                        if r.count > 1, r[1] == 0x11 { counters.errors += 1 } else { counters.answered += 1 }
                        r.withUnsafeBytes { dst.copyMemory(from: $0) }
                        outLens[out] = Int32(r.count); to[out] = from[i]; out += 1
                    default: counters.malformed += 1
                    }
                }
                lock.unlock()
                if out > 0 { UDPBatch.send(fd, tx, slot: slot, count: out, lens: outLens, addrs: to) }
                if n < batch { break }
            }
        }
    }

    public func stop() {
        lock.lock(); stopped = true; lock.unlock()
        _ = running.wait(timeout: .now() + 2)
        if fd >= 0 { close(fd); fd = -1 }
    }
}

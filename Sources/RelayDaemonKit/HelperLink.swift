import Foundation
import Logging
import RelayControlAPI
import RelayCore
import RelayIPC
import RelayWire

/// relayd's connection to relay-helper: applies the desired kernel state, re-applies after the
/// helper restarts (reconnecting with backoff), holds the TUN fd the helper handed over, and asks
/// the helper for the truth when relayctl wants it.
public final class HelperLink: @unchecked Sendable {
    public let socketPath: String
    let logger: Logger
    private let lock = NSCondition()      // guards everything below and wakes the link thread
    private let callLock = NSLock()        // one request at a time on the connection
    private var client: HelperClient?
    private var desired: DesiredKernelState?
    private var needApply = false
    private var stopped = false
    private var status: HelperLinkStatus
    /// The TUN device the helper handed over. Dropping it does not close it under a packet thread
    /// that holds a handle: the descriptor closes when the last holder lets go.
    private var device: TunDescriptor?
    private var deviceSpec: DeviceSpec?
    private var thread: Thread?

    public init(socketPath: String, logger: Logger) {
        self.socketPath = socketPath
        self.logger = logger
        status = HelperLinkStatus(socket: socketPath, connected: false)
    }

    public var snapshot: HelperLinkStatus { lock.lock(); defer { lock.unlock() }; return status }

    /// The TUN fd (or -1), for the packet path.
    /// The descriptor and whether it was opened with offloads (virtio headers), read together.
    public var tunHandle: TunHandle { lock.lock(); defer { lock.unlock() }; return TunHandle(descriptor: device, vnetHeader: device != nil && deviceSpec?.offload == true) }

    let running = DispatchGroup()

    public func start() {
        running.enter()
        let t = Thread { [self] in run(); running.leave() }
        t.name = "helper-link"
        thread = t
        t.start()
    }

    public func stop() {
        lock.lock()
        stopped = true
        lock.broadcast()
        lock.unlock()
        _ = running.wait(timeout: .now() + 5)
        callLock.lock()
        client = nil
        callLock.unlock()
        lock.lock(); device = nil; lock.unlock()
    }

    /// Sets what the kernel should hold; the link thread applies it (now, and after reconnects).
    public func setDesired(_ d: DesiredKernelState) {
        lock.lock()
        desired = d
        needApply = true
        lock.broadcast()
        lock.unlock()
    }

    /// Waits until the current desired state has been applied (or the timeout passes). Returns the
    /// last error if it was not applied.
    public func waitApplied(timeout: Double) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock(); defer { lock.unlock() }
        while needApply && !stopped {
            if !lock.wait(until: deadline) { break }
        }
        return needApply ? (status.lastError ?? "not applied yet") : nil
    }

    /// Everything the helper owns, as the kernel reports it. Throws when the helper is unreachable.
    public func observe() throws -> ObservedState {
        try withClient { try $0.observe() }
    }

    private func withClient<T>(_ body: (HelperClient) throws -> T) throws -> T {
        callLock.lock(); defer { callLock.unlock() }
        guard let c = client else {
            throw WireError("helper.unreachable", "relayd is not connected to relay-helper at \(socketPath): start it (systemctl start relay-helper); relayd reconnects by itself")
        }
        do { return try body(c) } catch let e as WireError where e.code.hasPrefix("kernel.") || e.code.hasPrefix("policy.") || e.code.hasPrefix("route.") || e.code.hasPrefix("device.") || e.code.hasPrefix("nat.") {
            throw e  // the helper answered: the connection is fine
        } catch {
            client = nil
            lock.lock(); status.connected = false; status.lastError = "\(error)"; needApply = true; lock.broadcast(); lock.unlock()
            throw error
        }
    }

    private func run() {
        var backoff = 0.2
        while true {
            lock.lock()
            if stopped { lock.unlock(); return }
            lock.unlock()

            callLock.lock()
            let connected = client != nil
            callLock.unlock()
            if !connected {
                do {
                    let c = try HelperClient(path: socketPath)
                    let hello = try c.hello()
                    callLock.lock(); client = c; callLock.unlock()
                    lock.lock()
                    status.connected = true; status.connects += 1; status.lastError = nil
                    needApply = true
                    lock.unlock()
                    logger.info("connected to relay-helper \(hello.version) at \(socketPath) (table \(hello.table), permission \(hello.permission))")
                    backoff = 0.2
                } catch {
                    lock.lock()
                    let first = status.lastError == nil || status.connected
                    status.connected = false; status.lastError = "\(error)"
                    lock.unlock()
                    if first { logger.warning("relay-helper unreachable, retrying with backoff: \(error)") }
                    sleepUnlessStopped(backoff)
                    backoff = min(backoff * 2, 10)
                    continue
                }
            }

            lock.lock()
            let want = needApply ? desired : nil
            lock.unlock()
            if let want {
                do {
                    try applyNow(want)
                    lock.lock()
                    if desired == want { needApply = false }
                    status.lastAppliedAt = Date(); status.lastError = nil
                    lock.broadcast()
                    lock.unlock()
                } catch {
                    lock.lock(); status.lastError = "\(error)"; lock.broadcast(); lock.unlock()
                    logger.error("applying the kernel state failed: \(error)")
                    sleepUnlessStopped(backoff)
                    backoff = min(backoff * 2, 10)
                    continue
                }
            }
            // Idle: wake for a new desired state or stop; check the helper is alive every 2 s.
            lock.lock()
            if !needApply && !stopped { _ = lock.wait(until: Date().addingTimeInterval(2)) }
            let idle = !needApply
            lock.unlock()
            if idle { _ = try? withClient { try $0.hello() } }
        }
    }

    private func sleepUnlessStopped(_ s: Double) {
        lock.lock()
        if !stopped { _ = lock.wait(until: Date().addingTimeInterval(s)) }
        lock.unlock()
    }

    /// Drops the device and waits (up to 1 s) until the packet threads have let go of it too, so
    /// that the descriptor is closed and the device can be opened again (a TUN device takes one).
    private func releaseDevice() {
        weak var old: TunDescriptor?
        lock.lock(); old = device; device = nil; lock.unlock()
        let deadline = Date().addingTimeInterval(1)
        while old != nil && Date() < deadline { usleep(5_000) }
    }

    /// NAT table, then the device (kept open across helper restarts), then routes to it.
    private func applyNow(_ d: DesiredKernelState) throws {
        let report = try withClient { try $0.apply(d.nat) }
        if report.changed { logger.info("helper applied NAT: \(report.changedElements) elements, chains \(report.rewrittenChains), sets \(report.replacedSets)") }
        lock.lock(); let have = device != nil, haveSpec = deviceSpec; lock.unlock()
        if let spec = d.device {
            if !have || haveSpec != spec {
                if have { releaseDevice() }
                let (dev, fd) = try withClient { try $0.openDevice(spec) }
                // The packet loops drain it until EAGAIN.
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                lock.lock(); device = TunDescriptor(fd: fd); deviceSpec = spec; status.device = dev.name; lock.unlock()
                logger.info("helper handed over TUN \(dev.name) (index \(dev.index), mtu \(dev.mtu))")
            }
        } else if have {
            releaseDevice()
            lock.lock(); deviceSpec = nil; status.device = nil; lock.unlock()
        }
        let r = try withClient { try $0.applyRoutes(d.routes) }
        if r.routesChanged > 0 { logger.info("helper changed \(r.routesChanged) routes") }
    }
}

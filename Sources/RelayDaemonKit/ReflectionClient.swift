import Foundation
import Logging
import RelayConfig
import RelayCore
import Synchronization
import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// This node's public address as its peers and the configured reflectors see it, and its NAT's
/// behaviour (RFC 5780), as its own service: STUN requests from the tunnel's port (so the mapping
/// observed is the tunnel's), answers handed over by the tunnel's receive loop. Test I towards
/// every peer and reflector every `interval` seconds and whenever a local address changes,
/// retransmitted on the RFC 8489 schedule; the answers are observations for the vote. Its state
/// machines (`STUNTransactions`, `NATDiscovery`) live in RelayCore; this is their loop.
final class ReflectionClient: @unchecked Sendable {
    let logger: Logger
    let clock: () -> Double
    private let lock = NSLock()
    private var reflecting = STUNTransactions<String>(schedule: STUNSchedule())
    private var servers: [Endpoint] = []
    private var interval: Double = 60
    private var observations: [ReflectionVote.Observation] = []
    private var lastRound: Double = 0
    /// RFC 5780 behaviour discovery, against the first reflector that names an OTHER-ADDRESS.
    private var discovery: NATDiscovery?
    private var discoveryRound: Double = -1
    private var behaviour: NATBehaviour?
    private(set) var addressChanges = 0
    /// Log lines written under the lock, logged after it is released.
    private var notes: [String] = []
    /// Releases the lock, then logs what was noted under it and sends `out`.
    private func unlockThenSend(_ out: [([UInt8], Endpoint)]) {
        let send = self.send, lines = notes
        notes = []
        lock.unlock()
        for l in lines { logger.info("\(l)") }
        for (m, to) in out { send(m, to) }
    }
    private let stopped = Atomic<Bool>(false)
    private let running = DispatchGroup()
    /// The tunnel's socket (sends from its port), its port, and the peers to ask (name, endpoint).
    private var send: ([UInt8], Endpoint) -> Void = { _, _ in }
    private var port: UInt16 = 0
    private var peers: () -> [(String, Endpoint)] = { [] }

    init(logger: Logger, clock: @escaping () -> Double) { self.logger = logger; self.clock = clock }

    func configure(_ r: ReflectorConfig) {
        lock.lock(); defer { lock.unlock() }
        if servers != r.servers { servers = r.servers; lastRound = 0 }
        interval = Double(r.interval)
        let schedule = STUNSchedule(rto: Double(r.rtoMilliseconds) / 1000, count: r.retransmissions)
        if schedule != reflecting.schedule { reflecting = STUNTransactions(schedule: schedule) }
    }

    /// Starts the timer and address-watch threads.
    func start(port: UInt16, send: @escaping ([UInt8], Endpoint) -> Void, peers: @escaping () -> [(String, Endpoint)]) {
        lock.lock(); self.port = port; self.send = send; self.peers = peers; lock.unlock()
        for (name, body) in [("reflection", timerLoop), ("address-watch", addressWatch)] as [(String, () -> Void)] {
            running.enter()
            let group = running
            let t = Thread { body(); group.leave() }
            t.name = name
            t.start()
        }
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        _ = running.wait(timeout: .now() + 2)
    }

    var observed: [ReflectionVote.Observation] { lock.lock(); defer { lock.unlock() }; return observations }
    var natBehaviour: NATBehaviour? { lock.lock(); defer { lock.unlock() }; return behaviour }

    // MARK: loop

    private func timerLoop() {
        var n = 0
        while !stopped.load(ordering: .relaxed) {
            usleep(50_000)
            let now = clock()
            let peerList = n % 5 == 0 ? peers() : nil
            lock.lock()
            var out = tick(now: now)
            // Re-check the public address every `interval` seconds (the first time right after start).
            if let peerList, now - lastRound >= interval || lastRound == 0 { out += round(now: now, peers: peerList) }
            unlockThenSend(out)
            n += 1
        }
    }

    /// Test I to every peer with a known endpoint and every configured reflector (lock held).
    private func round(now: Double, peers: [(String, Endpoint)]) -> [([UInt8], Endpoint)] {
        lastRound = now
        var out: [([UInt8], Endpoint)] = []
        for (name, ep) in peers + servers.map({ ("stun \($0)", $0) }) where !reflecting.entries.values.contains(where: { $0.tag == name }) {
            let (_, m) = reflecting.begin(name, to: ep, now: now)
            out.append((m, ep))
        }
        return out
    }

    /// Retransmissions and timeouts of the STUN client and of discovery (every 50 ms; lock held).
    private func tick(now: Double) -> [([UInt8], Endpoint)] {
        let (resend, failed) = reflecting.tick(now: now)
        var out = resend
        for f in failed { notes.append("reflector \(f.tag) at \(f.to) did not answer (\(f.sent) requests)") }
        if var d = discovery {
            out += d.tick(now: now)
            discovery = d
            finishDiscovery()
        }
        return out
    }

    // MARK: answers (from the tunnel's receive loop)

    /// A STUN response on the tunnel port: to a test I request, or to a discovery test. False when
    /// it answers nothing we asked (the caller counts it).
    func answer(_ m: STUN.Message, from: Endpoint) -> Bool {
        let now = clock()
        lock.lock()
        var out: [([UInt8], Endpoint)] = []
        defer { unlockThenSend(out) }
        if var d = discovery, d.owns(m.transactionID) {
            out = d.receive(m, from: from, now: now)
            discovery = d
            finishDiscovery()
            return true
        }
        guard let pend = reflecting.finish(m.transactionID) else { return false }
        guard m.type == STUN.bindingSuccess, let v = m.attribute(STUN.Attr.xorMappedAddress),
              let mapped = STUN.decodeAddress(v, xor: true, transactionID: m.transactionID) else {
            notes.append("reflector \(pend.tag) answered without a mapped address (error or malformed)")
            return true
        }
        observations.removeAll { $0.observer == pend.tag && $0.mapped.address.family == mapped.address.family }
        observations.append(ReflectionVote.Observation(observer: pend.tag, mapped: mapped, at: Date()))
        // RFC 5780: a reflector with a second address lets us classify the NAT, once per round.
        if discovery == nil, discoveryRound != lastRound, let o = m.attribute(STUN.Attr.otherAddress),
           let other = STUN.decodeAddress(o, xor: false, transactionID: m.transactionID), other.address != pend.to.address, other.port != pend.to.port {
            discoveryRound = lastRound
            let own = mapped.port == port && ReflectionClient.localAddresses().contains(mapped.address)
            var d = NATDiscovery(server: pend.to, other: other, mapped: mapped, behindNAT: !own, schedule: reflecting.schedule)
            out = d.start(now: now)
            discovery = d
        }
        return true
    }

    /// A Binding request that is our own hairpinning probe coming back through the NAT.
    func hairpinProbe(_ m: STUN.Message, from: Endpoint) -> Bool {
        let now = clock()
        lock.lock()
        var out: [([UInt8], Endpoint)] = []
        defer { unlockThenSend(out) }
        guard var d = discovery, d.owns(m.transactionID) else { return false }
        out = d.receive(m, from: from, now: now)
        discovery = d
        finishDiscovery()
        return true
    }

    private func finishDiscovery() {
        guard let r = discovery?.result else { return }
        behaviour = r
        discovery = nil
        notes.append("NAT behaviour: mapping \(r.mapping.rawValue), filtering \(r.filtering.rawValue)\(r.hairpinning.map { $0 ? ", hairpinning" : ", no hairpinning" } ?? "") (\(r.explanation))")
    }

    // MARK: local addresses

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
    /// ask the reflectors again now instead of at the next periodic check.
    private func addressWatch() {
        let s = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0 /* NETLINK_ROUTE */)
        guard s >= 0 else { return }
        defer { close(s) }
        // struct sockaddr_nl (linux/netlink.h): family, pad, pid, groups.
        struct SockaddrNL { var family: UInt16; var pad: UInt16 = 0; var pid: UInt32 = 0; var groups: UInt32 }
        var addr = SockaddrNL(family: UInt16(AF_NETLINK), groups: 0x10 | 0x100)  // RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        guard withUnsafePointer(to: &addr, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<SockaddrNL>.size)) } }) == 0 else { return }
        var buf = [UInt8](repeating: 0, count: 16384)
        while !stopped.load(ordering: .relaxed) {
            var pfd = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 200) > 0 else { continue }
            var changed = false
            while recv(s, &buf, buf.count, Int32(MSG_DONTWAIT)) > 0 { changed = true }
            if changed {
                lock.lock(); lastRound = 0; addressChanges += 1; lock.unlock()
                logger.info("local addresses changed: asking the reflectors again")
            }
        }
    }
}

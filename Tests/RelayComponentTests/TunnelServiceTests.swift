import CRelayShim
import Foundation
import Logging
import Testing
import RelayConfig
import RelayCore
import RelayDaemonKit
import RelayTunnel

/// Two real TunnelServices talking UDP over loopback; each "TUN" is one end of a SOCK_DGRAM
/// socketpair (it carries whole packets like a TUN fd), so the test plays the kernel. Time is
/// injected, so rekeying and expiry are tested without waiting.
final class TunnelPair {
    final class Clock: @unchecked Sendable { var now: Double = 1_000_000; let lock = NSLock()
        func get() -> Double { lock.lock(); defer { lock.unlock() }; return now }
        func advance(_ s: Double) { lock.lock(); now += s; lock.unlock() } }
    let clock = Clock()
    var a: TunnelService!, b: TunnelService!
    var tunA = [Int32](repeating: -1, count: 2), tunB = [Int32](repeating: -1, count: 2)
    let idA = NodeIdentity.generate(), idB = NodeIdentity.generate()

    init() throws {
        guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &tunA) == 0, socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &tunB) == 0 else {
            throw NodeIdentity.Failure(description: "socketpair")
        }
        let ta = tunA[0], tb = tunB[0], c = clock
        a = TunnelService(identity: idA, logger: Logger(label: "a"), flows: FlowTable(), tunFD: { ta }, clock: { c.get() })
        b = TunnelService(identity: idB, logger: Logger(label: "b"), flows: FlowTable(), tunFD: { tb }, clock: { c.get() })
        try a.start(port: 0)
        try b.start(port: 0)
        a.configure(config(site: "240.1.1.0/24", peer: "b", key: idB.publicKeyBase64, port: b.port, peerSite: "240.2.2.0/24"))
        b.configure(config(site: "240.2.2.0/24", peer: "a", key: idA.publicKeyBase64, port: a.port, peerSite: "240.1.1.0/24"))
    }

    func config(site: String, peer: String, key: String, port: UInt16, peerSite: String) -> RelayConfiguration {
        RelayConfiguration(site: SiteConfig(name: "self", lan4: IPPrefix("192.168.1.0/24"), virtual4: IPPrefix(site)),
                           peers: [PeerConfig(name: peer, publicKey: key, endpoint: Endpoint("127.0.0.1:\(port)"), sites: [SiteConfig(name: peer, virtual4: IPPrefix(peerSite))])])
    }

    deinit { a.stop(); b.stop(); for fd in tunA + tunB { close(fd) } }

    /// Writes a packet "from the kernel" into A's TUN; returns what B's kernel side receives.
    func send(_ pkt: [UInt8], into tun: Int32, expectAt other: Int32, timeout: Double = 2) -> [UInt8]? {
        _ = pkt.withUnsafeBytes { write(tun, $0.baseAddress, $0.count) }
        return receive(other, timeout: timeout)
    }

    func receive(_ fd: Int32, timeout: Double) -> [UInt8]? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, Int32(timeout * 1000)) > 0 else { return nil }
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = read(fd, &buf, buf.count)
        return n > 0 ? Array(buf[0..<n]) : nil
    }

    static func ipv4(src: String, dst: String, payload: String = "hello") -> [UInt8] {
        let s = IPv4Address(src)!.bytes, d = IPv4Address(dst)!.bytes, body = Array(payload.utf8)
        let total = 20 + 8 + body.count
        var p: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 1, 0, 0, 64, 17, 0, 0] + s + d
        p += [0x30, 0x39, 0x23, 0x28, UInt8((8 + body.count) >> 8), UInt8((8 + body.count) & 0xff), 0, 0] + body
        return p
    }
}

@Suite("component: tunnel service over loopback", .serialized)
struct TunnelServiceTests {
    @Test("packets cross both ways after a handshake; a peer cannot speak for another site; strangers and garbage get silence")
    func pathAndPolicing() throws {
        let t = try TunnelPair()
        let pkt = TunnelPair.ipv4(src: "240.1.1.20", dst: "240.2.2.20")
        #expect(t.send(pkt, into: t.tunA[1], expectAt: t.tunB[1]) == pkt, "A -> B (first packet waits for the handshake)")
        let back = TunnelPair.ipv4(src: "240.2.2.20", dst: "240.1.1.20", payload: "reply")
        #expect(t.send(back, into: t.tunB[1], expectAt: t.tunA[1]) == back, "B -> A")
        #expect(t.a.countersSnapshot().handshakesCompleted == 1 && t.b.countersSnapshot().handshakesCompleted == 1)

        // B's kernel hands B a packet claiming to come from A's site towards A: B seals it (B does
        // not police its own TUN), but A refuses it: B may only speak for 240.2.2.0/24.
        let spoof = TunnelPair.ipv4(src: "240.1.1.99", dst: "240.1.1.20")
        t.b.configure(t.config(site: "240.2.2.0/24", peer: "a", key: t.idA.publicKeyBase64, port: t.a.port, peerSite: "240.1.0.0/16"))
        #expect(t.send(spoof, into: t.tunB[1], expectAt: t.tunA[1], timeout: 0.5) == nil)
        #expect(t.a.countersSnapshot().spoofedSource == 1)
        // No route: a destination no peer owns is dropped and counted.
        #expect(t.send(TunnelPair.ipv4(src: "240.1.1.20", dst: "240.9.9.9"), into: t.tunA[1], expectAt: t.tunB[1], timeout: 0.3) == nil)
        #expect(t.a.countersSnapshot().noRoute == 1)

        // A stranger: garbage, a forged initiation from an unknown key, a replayed datagram. No answer.
        let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0); defer { close(s) }
        var to = sockaddr_in(); to.sin_family = sa_family_t(AF_INET); to.sin_port = t.a.port.bigEndian; to.sin_addr.s_addr = inet_addr("127.0.0.1")
        func fire(_ b: [UInt8]) { _ = withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(s, b, b.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } }
        fire(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        fire([0xC4, 0, 0, 0] + [UInt8](repeating: 7, count: 40))
        var stranger = try Noise.Initiator(staticKey: NodeIdentity.generate().privateKey, remoteStatic: Array(t.idA.privateKey.publicKey.rawRepresentation))
        var stamp = [UInt8](repeating: 0, count: 8); stamp[0] = 0x7f
        let forA = HandshakeMAC.key(receiver: Array(t.idA.privateKey.publicKey.rawRepresentation))
        fire(TunnelMessage.initiation(sender: 1, noise: try stranger.writeMessage1(payload: stamp), mac1Key: forA))
        // One made for another node (mac1 keyed by B's public key): dropped before any Noise work.
        var other = try Noise.Initiator(staticKey: NodeIdentity.generate().privateKey, remoteStatic: Array(t.idA.privateKey.publicKey.rawRepresentation))
        let forB = HandshakeMAC.key(receiver: Array(t.idB.privateKey.publicKey.rawRepresentation))
        fire(TunnelMessage.initiation(sender: 2, noise: try other.writeMessage1(payload: stamp), mac1Key: forB))
        var pfd = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, 500) == 0, "a stranger got an answer")
        let c = t.a.countersSnapshot()
        #expect(c.malformed == 1 && c.unknownIndex == 1 && c.unknownPeer == 1 && c.badMAC == 1, "\(c)")
    }

    @Test("rekey after 120 s by the initiator, old session still accepted meanwhile; sessions expire after 180 s and a new handshake follows")
    func timers() throws {
        let t = try TunnelPair()
        let pkt = TunnelPair.ipv4(src: "240.1.1.20", dst: "240.2.2.20")
        #expect(t.send(pkt, into: t.tunA[1], expectAt: t.tunB[1]) == pkt)
        #expect(t.a.countersSnapshot().handshakesSent == 1)
        t.clock.advance(121)
        // The next packet goes out on the old session and triggers a rekey.
        #expect(t.send(pkt, into: t.tunA[1], expectAt: t.tunB[1]) == pkt)
        try waitFor { t.b.countersSnapshot().handshakesCompleted == 2 }
        #expect(t.a.countersSnapshot().handshakesSent == 2)
        #expect(t.send(pkt, into: t.tunA[1], expectAt: t.tunB[1]) == pkt, "on the new session")
        // Long silence: the sessions expire (A has been sending without an answer, so its timer starts
        // a fresh handshake too); traffic flows on a new session.
        t.clock.advance(200)
        try waitFor { t.a.countersSnapshot().handshakesSent >= 3 }
        #expect(t.send(pkt, into: t.tunA[1], expectAt: t.tunB[1]) == pkt)
        #expect(t.b.countersSnapshot().handshakesCompleted >= 3)
    }

    @Test("a UDP GRO train that mixes valid, replayed and forged datagrams: the valid ones arrive once each, in order; the others are counted")
    func groTrainWithReplaysAndForgeries() throws {
        let t = try TunnelPair()
        // P sits between A and B on loopback (A's endpoint for B), so the test holds A's sealed
        // datagrams and can hand them to B as one GSO message: B's socket has UDP_GRO on, so the
        // kernel delivers them as one train and B opens them as a run.
        let p = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0); defer { close(p) }
        var off: Int32 = 0
        setsockopt(p, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &off, 4)
        var any = sockaddr_in6(); any.sin6_family = sa_family_t(AF_INET6)
        var len = socklen_t(MemoryLayout<sockaddr_in6>.size)
        _ = withUnsafePointer(to: &any) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(p, $0, len) } }
        _ = withUnsafeMutablePointer(to: &any) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(p, $0, &len) } }
        let proxyPort = UInt16(bigEndian: any.sin6_port)
        t.a.configure(t.config(site: "240.1.1.0/24", peer: "b", key: t.idB.publicKeyBase64, port: proxyPort, peerSite: "240.2.2.0/24"))

        func loopback(_ port: UInt16) -> sockaddr_in6 {
            var a = sockaddr_in6(); a.sin6_family = sa_family_t(AF_INET6); a.sin6_port = port.bigEndian
            _ = inet_pton(AF_INET6, "::ffff:127.0.0.1", &a.sin6_addr)
            return a
        }
        // A also asks its peers for its reflected address (STUN) and confirms a new session with a
        // keepalive (an empty data message): P passes over those.
        func take(_ type: UInt8) -> [UInt8]? {
            while let d = t.receive(p, timeout: 2) { if d.first == type && (type != 0xC4 || d.count > TunnelLimits.overhead) { return d } }
            return nil
        }
        func give(_ bytes: [UInt8], to port: UInt16, segment: Int = 0) -> Int32 {
            var to = loopback(port), err: Int32 = 0
            var offsets = [0], lens = [Int32(bytes.count)], segs = [Int32(segment)]
            return CRelayShim_send_batch_gso(p, bytes, &offsets, 1, &lens, &segs, &to, &err)
        }
        // The handshake through P, then the first packet.
        let first = TunnelPair.ipv4(src: "240.1.1.20", dst: "240.2.2.20", payload: "packet-0")
        _ = first.withUnsafeBytes { write(t.tunA[1], $0.baseAddress, $0.count) }
        let initiation = try #require(take(0xC1), "A's initiation")
        #expect(give(initiation, to: t.b.port) == 1)
        let response = try #require(take(0xC2), "B's response (to P, where the initiation came from)")
        #expect(give(response, to: t.a.port) == 1)
        let d0 = try #require(take(0xC4), "the first data message")
        #expect(give(d0, to: t.b.port) == 1)
        #expect(t.receive(t.tunB[1], timeout: 2) == first)

        // Four more packets of one size: A seals them, P keeps them.
        let pkts = (1...4).map { TunnelPair.ipv4(src: "240.1.1.20", dst: "240.2.2.20", payload: "packet-\($0)") }
        var sealed: [[UInt8]] = []
        for pkt in pkts {
            _ = pkt.withUnsafeBytes { write(t.tunA[1], $0.baseAddress, $0.count) }
            sealed.append(try #require(take(0xC4), "data message for \(pkt)"))
        }
        #expect(Set(sealed.map(\.count)).count == 1)
        var forged = sealed[2]
        forged[forged.count - 20] ^= 0x01
        let train = [sealed[0], sealed[1], sealed[0], forged, sealed[3]]
        let before = t.b.countersSnapshot().authFailed
        #expect(give(train.flatMap { $0 }, to: t.b.port, segment: sealed[0].count) == 1, "one GSO message")
        #expect(t.receive(t.tunB[1], timeout: 2) == pkts[0])
        #expect(t.receive(t.tunB[1], timeout: 2) == pkts[1])
        #expect(t.receive(t.tunB[1], timeout: 2) == pkts[3], "the forged third is dropped, the fourth follows")
        #expect(t.receive(t.tunB[1], timeout: 0.3) == nil, "nothing else: the replay is not delivered twice")
        try waitFor { t.b.countersSnapshot().authFailed == before + 2 }
        // The replayed and forged datagrams changed nothing: the session goes on.
        let after = TunnelPair.ipv4(src: "240.1.1.20", dst: "240.2.2.20", payload: "packet-5")
        _ = after.withUnsafeBytes { write(t.tunA[1], $0.baseAddress, $0.count) }
        #expect(give(try #require(take(0xC4)), to: t.b.port) == 1)
        #expect(t.receive(t.tunB[1], timeout: 2) == after)
    }

    func waitFor(_ cond: () -> Bool) throws {
        let end = Date().addingTimeInterval(3)
        while Date() < end { if cond() { return }; usleep(20_000) }
        Issue.record("condition not met in 3 s")
    }

    /// B translates A's IPv4 to IPv6 for its mapped host (192.168.1.30, as 240.2.2.30); A's site has
    /// no IPv6 names, so every such packet is answered with an ICMP error through the tunnel. A
    /// recording proxy (B's endpoint for A) sees every data message B seals, while B reloads its
    /// configuration in a loop and sends its own traffic: no (session, counter) pair may repeat.
    @Test("reloads in a loop while traffic and ICMP errors flow: no session counter is ever used twice")
    func reloadsNeverReuseACounter() throws {
        var tunA = [Int32](repeating: -1, count: 2), tunB = [Int32](repeating: -1, count: 2)
        #expect(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &tunA) == 0 && socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &tunB) == 0)
        defer { for fd in tunA + tunB { close(fd) } }
        for fd in [tunA[1], tunB[1]] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        let idA = NodeIdentity.generate(), idB = NodeIdentity.generate()
        let ta = tunA[0], tb = tunB[0]
        let a = TunnelService(identity: idA, logger: Logger(label: "a"), flows: FlowTable(), tunFD: { ta })
        let b = TunnelService(identity: idB, logger: Logger(label: "b"), flows: FlowTable(), tunFD: { tb })
        try a.start(port: 0); try b.start(port: 0)
        defer { a.stop(); b.stop() }

        // The proxy: one UDP socket on loopback, forwarding B -> A (recording) and A -> B.
        let p = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0); defer { close(p) }
        var sin = sockaddr_in(); sin.sin_family = sa_family_t(AF_INET); sin.sin_addr.s_addr = UInt32(0x7f000001).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(p, $0, len) } }
        _ = withUnsafeMutablePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(p, $0, &len) } }
        let proxyPort = UInt16(bigEndian: sin.sin_port)

        let site = SiteConfig(name: "B", lan4: IPPrefix("192.168.1.0/24"), virtual4: IPPrefix("240.2.2.0/24"), virtual6: IPPrefix("64:ff9b:2222::/96"),
                              lan6: IPPrefix("fd00:cafe::/64"), virtual6Lan: IPPrefix("fd22:2222::/64"),
                              map: [ExplicitMapping(ipv4: IPv4Address("192.168.1.30")!, ipv6: IPv6Address("fd00:cafe::30")!)])
        let bConfig = RelayConfiguration(site: site, peers: [PeerConfig(name: "a", publicKey: idA.publicKeyBase64, endpoint: Endpoint("127.0.0.1:\(proxyPort)"),
                                                                        sites: [SiteConfig(name: "A", virtual4: IPPrefix("240.1.1.0/24"))])])
        a.configure(RelayConfiguration(site: SiteConfig(name: "A", lan4: IPPrefix("10.9.0.0/24"), virtual4: IPPrefix("240.1.1.0/24")),
                                       peers: [PeerConfig(name: "b", publicKey: idB.publicKeyBase64, endpoint: Endpoint("127.0.0.1:\(b.port)"),
                                                          sites: [SiteConfig(name: "B", virtual4: IPPrefix("240.2.2.0/24"))])]))
        b.configure(bConfig)

        final class Seen: @unchecked Sendable {
            let lock = NSLock(); var pairs = Set<[UInt8]>(); var repeats = 0; var data = 0; var stopped = false
            var running: Bool { lock.lock(); defer { lock.unlock() }; return !stopped }
        }
        let seen = Seen()
        let aPort = a.port, bPort = b.port
        let proxy = Thread {
            var buf = [UInt8](repeating: 0, count: 65536)
            while seen.running {
                var pfd = pollfd(fd: p, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 50) > 0 else { continue }
                var from = sockaddr_in(); var flen = socklen_t(MemoryLayout<sockaddr_in>.size)
                let n = withUnsafeMutablePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(p, &buf, buf.count, 0, $0, &flen) } }
                guard n > 0 else { continue }
                let fromB = UInt16(bigEndian: from.sin_port) == bPort
                if fromB && n >= 32 && buf[0] == 0xC4 {
                    seen.lock.lock()
                    seen.data += 1
                    if !seen.pairs.insert(Array(buf[4..<16])).inserted { seen.repeats += 1 }  // receiver index and counter
                    seen.lock.unlock()
                }
                var to = sockaddr_in(); to.sin_family = sa_family_t(AF_INET); to.sin_addr.s_addr = UInt32(0x7f000001).bigEndian
                to.sin_port = (fromB ? aPort : bPort).bigEndian
                _ = withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(p, buf, n, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            }
        }
        proxy.start()
        // The handshake, started from B's side, then the load for 3 s: A's packets that draw ICMP
        // errors from B, B's own packets, B reloading as fast as it can. Bounded in count and time.
        let toA = TunnelPair.ipv4(src: "240.2.2.20", dst: "240.1.1.20", payload: "from-b")
        let needsICMP = TunnelPair.ipv4(src: "240.1.1.20", dst: "240.2.2.30", payload: "to-mapped-v6-host")
        _ = toA.withUnsafeBytes { write(tunB[1], $0.baseAddress, $0.count) }
        let end = Date().addingTimeInterval(3)
        let writers = [(tunA[1], needsICMP), (tunB[1], toA)].map { fd, pkt in
            Thread {
                var sent = 0
                while Date() < end && sent < 400_000 {
                    _ = pkt.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                    sent += 1
                    if sent % 64 == 0 { usleep(100) }
                }
            }
        }
        let drains = [tunA[1], tunB[1]].map { fd in
            Thread { var buf = [UInt8](repeating: 0, count: 65536); while Date() < end.addingTimeInterval(0.5) { if read(fd, &buf, buf.count) <= 0 { usleep(200) } } }
        }
        for t in writers + drains { t.start() }
        var reloads = 0
        while Date() < end && reloads < 200_000 { b.configure(bConfig); reloads += 1 }
        Thread.sleep(forTimeInterval: 0.8)
        seen.lock.lock(); seen.stopped = true; seen.lock.unlock()
        Thread.sleep(forTimeInterval: 0.1)
        let c = b.countersSnapshot()
        seen.lock.lock(); let repeats = seen.repeats, data = seen.data; seen.lock.unlock()
        #expect(c.icmpErrorsSent >= 50, "B answered \(c.icmpErrorsSent) ICMP errors; the test needs them")
        #expect(data >= 300 && reloads >= 100, "\(data) data messages, \(reloads) reloads")
        #expect(repeats == 0, "\(repeats) of \(data) data messages from B reused a (session, counter) pair across \(reloads) reloads")
        // (A may still refuse a few counters as too old for its 2048-wide window: B's two packet
        // threads take counters in one order and can send them in another, far apart under a slow
        // build. That is the window doing its job; the proxy's record above is the proof.)
    }
}

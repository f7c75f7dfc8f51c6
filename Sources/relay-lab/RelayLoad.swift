import ArgumentParser
import Crypto
import Foundation
import RelayCore
import RelayTunnel
import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// Simulated nodes against a relay: each registers (Noise IK, a token), activates with a ping,
/// then the nodes exchange forward frames between random pairs at a paced rate, and leave. Bounded
/// in nodes, rate and time. Prints a JSON summary (the load test and `make bench` read it).
struct RelayLoad: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "relay-load",
        abstract: "Register simulated nodes with a relay and forward datagrams between them (tests and make bench; loopback or a lab namespace only).")
    @Option(help: "The relay, IPv4ADDRESS:PORT.") var relay: String
    @Option(help: "The relay's public key (base64).") var key: String
    @Option(help: "A token the relay admits.") var token: String
    @Option(help: "Local IPv4 address to bind the nodes' sockets to.") var bind = "127.0.0.1"
    @Option(help: "Simulated nodes (2...20000).") var nodes = 300
    @Option(help: "Datagrams per second in all (0...200000).") var rate = 3000
    @Option(help: "Seconds of forwarding (0...120).") var seconds = 10.0
    @Option(help: "Bytes per datagram (1...1400).") var size = 200
    @Option(help: "Registrations per second (1...100000).") var registrationRate = 2000

    struct Summary: Codable {
        var nodes: Int, registered: Int, refused: Int, registerSeconds: Double, registrationsPerSecond: Double
        var sent: Int, received: Int, notHere: Int, badFrames: Int, seconds: Double, forwardedPerSecond: Double
    }

    final class Node {
        let fd: Int32
        let key = Curve25519.KeyAgreement.PrivateKey()
        let index = UInt32.random(in: 1...UInt32.max)
        var initiator: Noise.Initiator?
        var id: UInt32 = 0, send: SymmetricKey?, receive: SymmetricKey?, counter: UInt64 = 0
        var window = ReplayWindow()
        var active = false
        init(fd: Int32) { self.fd = fd }
        func frame(_ kind: RelayFrameKind, _ body: ArraySlice<UInt8>) -> [UInt8] {
            defer { counter += 1 }
            return RelayMessage.frame(kind, session: id, counter: counter, body: body, key: send!)
        }
    }

    func run() throws {
        guard let ep = Endpoint(relay), case .v4(let dst) = ep.address else { throw ValidationError("--relay must be IPv4ADDRESS:PORT") }
        guard let pub = Data(base64Encoded: key).map(Array.init), pub.count == 32 else { throw ValidationError("--key must be a 32-byte public key in base64") }
        guard case .v4(let local)? = IPAddress(bind) else { throw ValidationError("--bind must be an IPv4 address") }
        guard (2...20_000).contains(nodes), (0...200_000).contains(rate), (0...120).contains(seconds), (1...1400).contains(size),
              (1...100_000).contains(registrationRate) else { throw ValidationError("--nodes 2...20000, --rate 0...200000, --seconds 0...120, --size 1...1400, --registration-rate 1...100000") }
        var limit = rlimit(); getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        if limit.rlim_cur < rlim_t(nodes + 64) { limit.rlim_cur = min(limit.rlim_max, rlim_t(nodes + 64)); setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
        var to = sockaddr_in(); to.sin_family = sa_family_t(AF_INET); to.sin_port = ep.port.bigEndian; to.sin_addr.s_addr = dst.value.bigEndian
        var all: [Node] = []
        defer { for n in all { close(n.fd) } }
        for _ in 0..<nodes {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw ValidationError("socket: \(String(cString: strerror(errno)))") }
            var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); a.sin_addr.s_addr = local.value.bigEndian
            _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            var big: Int32 = 1 << 20
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, socklen_t(MemoryLayout<Int32>.size))
            all.append(Node(fd: fd))
        }
        func sendTo(_ n: Node, _ bytes: [UInt8]) -> Bool {
            withUnsafePointer(to: &to) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(n.fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == bytes.count
        }
        var buf = [UInt8](repeating: 0, count: 65536)
        // epoll: with thousands of sockets, only the ready ones are looked at.
        let epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epfd >= 0 else { throw ValidationError("epoll_create1: \(String(cString: strerror(errno)))") }
        defer { close(epfd) }
        for (i, n) in all.enumerated() {
            var ev = epoll_event()
            ev.events = EPOLLIN.rawValue
            ev.data.u32 = UInt32(i)
            _ = epoll_ctl(epfd, EPOLL_CTL_ADD, n.fd, &ev)
        }
        var events = [epoll_event](repeating: epoll_event(), count: 512)
        var registered = 0, refused = 0, received = 0, notHere = 0, bad = 0
        /// Drains every socket that has something (one epoll_wait).
        func drain(_ timeoutMs: Int32, _ handle: (Node, ArraySlice<UInt8>) -> Void) {
            let k = epoll_wait(epfd, &events, Int32(events.count), timeoutMs)
            guard k > 0 else { return }
            for j in 0..<Int(k) {
                let node = all[Int(events[j].data.u32)]
                while true {
                    let n = recv(node.fd, &buf, buf.count, 0)
                    if n <= 0 { break }
                    handle(node, buf[0..<n])
                }
            }
        }
        func onMessage(_ node: Node, _ b: ArraySlice<UInt8>) {
            switch RelayMessage.parse(b) {
            case .registered(let sender, let receiver, let noise)?:
                guard receiver == node.index, var ini = node.initiator, let (payload, tr) = try? ini.readMessage2(Array(noise)), let g = RelayGrant(payload), g.id == sender else { bad += 1; return }
                node.id = g.id; node.send = tr.send.key; node.receive = tr.receive.key; node.initiator = nil
                _ = sendTo(node, node.frame(.ping, [][...]))
            case .refused?: refused += 1
            case .frame(let kind, _, let counter, let body)?:
                guard let k = node.receive, RelayMessage.verify(b, key: k), node.window.accept(counter) else { bad += 1; return }
                switch kind {
                case .pong: if !node.active { node.active = true; registered += 1 }
                case .deliver: received += 1
                case .notHere: notHere += 1
                default: bad += 1
                }
            default: bad += 1
            }
        }
        // Registration, paced.
        let regStart = Date()
        for (i, n) in all.enumerated() {
            var ini = try Noise.Initiator(staticKey: n.key, remoteStatic: pub)
            var stamp = [UInt8](); let ns = UInt64(Date().timeIntervalSince1970 * 1e9)
            for s in (0..<8).reversed() { stamp.append(UInt8(truncatingIfNeeded: ns >> (UInt64(s) * 8))) }
            let m1 = try ini.writeMessage1(payload: stamp + Array(token.utf8))
            n.initiator = ini
            _ = sendTo(n, RelayMessage.register(sender: n.index, noise: m1, mac1Key: HandshakeMAC.key(receiver: pub)))
            let due = regStart.addingTimeInterval(Double(i + 1) / Double(registrationRate))
            repeat { drain(0, onMessage) } while Date() < due
        }
        let regDeadline = Date().addingTimeInterval(10)
        while registered + refused < nodes && Date() < regDeadline { drain(20, onMessage) }
        let registerSeconds = Date().timeIntervalSince(regStart)
        // Forwarding between random active pairs, paced in 5 ms steps.
        let active = all.filter(\.active)
        var sent = 0
        let start = Date()
        let total = active.count >= 2 ? Int(Double(rate) * seconds) : 0
        let payload = [UInt8](repeating: 0x5a, count: size)
        while sent < total {
            let due = Int(Date().timeIntervalSince(start) * Double(rate))
            while sent < min(due, total) {
                let a = active[Int.random(in: 0..<active.count)]
                var b = active[Int.random(in: 0..<active.count)]
                if b === a { b = active[(active.firstIndex { $0 === a }! + 1) % active.count] }
                var body: [UInt8] = []; body.reserveCapacity(4 + size)
                withUnsafeBytes(of: b.id.littleEndian) { body += $0 }
                body += payload
                if sendTo(a, a.frame(.forward, body[...])) { sent += 1 }
                // Keep the registrations alive (heartbeat): every node pings about once a second.
                if sent % max(1, rate / max(1, active.count)) == 0 { _ = sendTo(a, a.frame(.ping, [][...])) }
            }
            drain(5, onMessage)
        }
        let quiet = Date().addingTimeInterval(1)
        while Date() < quiet { drain(20, onMessage) }
        let elapsed = Date().timeIntervalSince(start)
        for n in active { _ = sendTo(n, n.frame(.leave, [][...])) }
        let s = Summary(nodes: nodes, registered: registered, refused: refused, registerSeconds: registerSeconds, registrationsPerSecond: Double(registered) / registerSeconds,
                        sent: sent, received: received, notHere: notHere, badFrames: bad, seconds: elapsed, forwardedPerSecond: Double(received) / max(0.001, elapsed - 1))
        let data = try JSONEncoder().encode(s)
        print(String(decoding: data, as: UTF8.self))
    }
}

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
        var sent: Int, received: Int, notHere: Int, badFrames: Int, seconds: Double, forwardedPerSecond: Double, cookies: Int
    }

    func run() throws {
        guard let ep = Endpoint(relay), case .v4(let dst) = ep.address else { throw ValidationError("--relay must be IPv4ADDRESS:PORT") }
        guard let pub = Data(base64Encoded: key).map(Array.init), pub.count == 32 else { throw ValidationError("--key must be a 32-byte public key in base64") }
        guard case .v4(let local)? = IPAddress(bind) else { throw ValidationError("--bind must be an IPv4 address") }
        guard (2...20_000).contains(nodes), (0...200_000).contains(rate), (0...120).contains(seconds), (1...1400).contains(size),
              (1...100_000).contains(registrationRate) else { throw ValidationError("--nodes 2...20000, --rate 0...200000, --seconds 0...120, --size 1...1400, --registration-rate 1...100000") }
        var limit = rlimit(); getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        if limit.rlim_cur < rlim_t(nodes + 64) { limit.rlim_cur = min(limit.rlim_max, rlim_t(nodes + 64)); setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
        var to = socketAddress(dst, ep.port)
        let all = try (0..<nodes).map { _ in try SimulatedNode(bind: local) }
        func sendTo(_ n: SimulatedNode, _ bytes: [UInt8]) -> Bool { n.send(bytes, to: &to) }
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
        var registered = 0, refused = 0, received = 0, notHere = 0, bad = 0, cookies = 0
        /// Drains every socket that has something (one epoll_wait).
        func drain(_ timeoutMs: Int32, _ handle: (SimulatedNode, ArraySlice<UInt8>) -> Void) {
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
        func onMessage(_ node: SimulatedNode, _ b: ArraySlice<UInt8>) {
            switch RelayMessage.parse(b) {
            case .registered(let sender, let receiver, let noise)?:
                guard let ping = node.registered(sender: sender, receiver: receiver, noise: noise) else { bad += 1; return }
                _ = sendTo(node, ping)
            case .refused?: refused += 1
            case .cookie(let receiver, let nonce, let sealed)?:
                // The relay is under load: our register again, with mac2 under its cookie.
                if let again = node.cookie(receiver: receiver, nonce: nonce, sealed: sealed) { cookies += 1; _ = sendTo(node, again) } else { bad += 1 }
            case .frame(let kind, _, let counter, _)?:
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
            _ = sendTo(n, try n.register(relayKey: pub, token: token))
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
                        sent: sent, received: received, notHere: notHere, badFrames: bad, seconds: elapsed, forwardedPerSecond: Double(received) / max(0.001, elapsed - 1),
                        cookies: cookies)
        let data = try JSONEncoder().encode(s)
        print(String(decoding: data, as: UTF8.self))
    }
}

import CRelayShim
import Foundation
import RelayCore
import RelayIPC
import RelayTestHarness
#if canImport(Glibc)
import Glibc
#endif

/// STUN Binding requests answered per second: relayd's reflector against coturn's turnserver
/// (STUN only), both on loopback in one namespace, driven by the same load generator
/// (`relay-lab stun-load`, four source addresses), each server pinned to one core; alternating
/// rounds, medians.
struct StunBench {
    static func run(_ lab: Lab, seconds: Int = 2, rounds: Int = 5) throws -> (relay: Double, coturn: Double) {
        let h = try lab.host("stun")
        let dir = lab.logDirectory.appendingPathComponent("stunbench").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(lab.logDirectory.path, 0o755)
        try "[node]\nname = \"bench\"\nlisten_port = 0\n[reflector]\nport = 3478\nrate = 100000\nburst = 100000\n".write(toFile: dir + "/relayd.toml", atomically: true, encoding: .utf8)
        for p in [dir, dir + "/relayd.toml"] { chown(p, 65534, 65534) }
        let relayd = try h.spawn(["taskset", "-c", "0", try Binaries.path("relayd"), "--config", dir + "/relayd.toml", "--state-dir", dir + "/state",
                                  "--socket", dir + "/relayd.sock", "--helper-socket", dir + "/none", "--log-level", "warning"], label: "relayd", as: 65534)
        let coturn = try h.spawn(["taskset", "-c", "0", "turnserver", "-n", "-S", "-z", "--no-cli", "--no-tls", "--no-dtls", "-L", "127.0.0.1", "-p", "3479",
                                  "--log-file", "stdout", "--no-stdout-log", "--userdb", dir + "/db", "--pidfile", dir + "/pid", "-m", "1"], label: "coturn")
        try waitUntil("both servers") { let o = try h.run(["ss", "-lnuH"]).stdout; return o.contains(":3478") && o.contains(":3479") }
        _ = relayd; _ = coturn
        func load(_ port: Int) throws -> Double {
            let out = try h.run(["taskset", "-c", "1", try Binaries.path("relay-lab"), "stun-load", "--port", String(port), "--seconds", String(seconds)],
                                timeout: Double(seconds + 20)).stdout
            return Double(out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        // Alternating short rounds, median of each: this machine's neighbours make single runs vary
        // by ±30%, and alternating spreads the noise over both servers alike.
        var cs: [Double] = [], rs: [Double] = []
        for _ in 0..<rounds { cs.append(try load(3479)); rs.append(try load(3478)) }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        return (median(rs), median(cs))
    }
}

import ArgumentParser

/// A STUN load generator: keeps `window` Binding requests in flight from `sources` sockets, each
/// bound to its own loopback address (127.0.0.1, .2, ...: relayd limits each source address's rate,
/// as a public reflector must, and one source would measure that limit instead of the server), sent
/// and received in batches (sendmmsg / recvmmsg, so the generator is not what limits the rate), and
/// counts valid answers per second (bounded in time).
struct StunLoad: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stun-load", abstract: "STUN Binding load against 127.0.0.1:PORT (benchmarks).")
    @Option var port: Int
    @Option var seconds = 3.0
    @Option var window = 256
    @Option(help: "Source addresses (127.0.0.1 upwards), one socket each.") var sources = 4

    func validate() throws {
        guard (1...200).contains(sources) else { throw ValidationError("--sources must be 1 to 200 (127.0.0.1 upwards), not \(sources)") }
        guard window >= sources else { throw ValidationError("--window (\(window)) must be at least --sources (\(sources)): each source keeps part of it in flight") }
    }

    func run() throws {
        func v4mapped(_ last: UInt8, port: Int) -> sockaddr_in6 {
            var a = sockaddr_in6(); a.sin6_family = sa_family_t(AF_INET6); a.sin6_port = UInt16(port).bigEndian
            withUnsafeMutableBytes(of: &a.sin6_addr) { $0[10] = 0xff; $0[11] = 0xff; $0[12] = 127; $0[15] = last }
            return a
        }
        let n = sources
        var socks: [Int32] = []
        for i in 0..<n {
            let s = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
            var big: Int32 = 4 << 20
            setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(s, SOL_SOCKET, SO_SNDBUF, &big, socklen_t(MemoryLayout<Int32>.size))
            var me = v4mapped(UInt8(1 + i), port: 0)
            guard withUnsafePointer(to: &me, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }) == 0 else {
                throw ValidationError("cannot bind 127.0.0.\(1 + i): \(String(cString: strerror(errno)))")
            }
            socks.append(s)
        }
        defer { for s in socks { close(s) } }
        let to = v4mapped(1, port: port)
        let slot = 64, batch = 64, perSource = window / n
        let tx = UnsafeMutablePointer<UInt8>.allocate(capacity: slot * batch), rx = UnsafeMutablePointer<UInt8>.allocate(capacity: 2048 * batch)
        defer { tx.deallocate(); rx.deallocate() }
        let req = STUN.encode(type: STUN.bindingRequest, transactionID: [UInt8](repeating: 0, count: 12), attributes: [], fingerprint: false)
        for i in 0..<batch { for j in 0..<20 { tx[i * slot + j] = req[j] } }
        let txLens = [Int32](repeating: 20, count: batch), addrs = [sockaddr_in6](repeating: to, count: batch)
        var rxLens = [Int32](repeating: 0, count: batch), from = [sockaddr_in6](repeating: sockaddr_in6(), count: batch)
        var seq: UInt64 = 0, answered = 0
        var inFlight = [Int](repeating: 0, count: n)
        var pfds = socks.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let start = Date(), end = start.addingTimeInterval(seconds)
        while Date() < end {
            for (k, s) in socks.enumerated() {
                while inFlight[k] < perSource {
                    let m = min(batch, perSource - inFlight[k])
                    for i in 0..<m { seq += 1; withUnsafeBytes(of: seq.littleEndian) { for b in 0..<8 { tx[i * slot + 8 + b] = $0[b] } } }
                    let sent = UDPBatch.send(s, tx, slot: slot, count: m, lens: txLens, addrs: addrs)
                    if sent <= 0 { break }
                    inFlight[k] += sent
                }
            }
            for k in 0..<n { pfds[k].revents = 0 }
            // Nothing for 50 ms: some were lost; refill every window.
            if poll(&pfds, nfds_t(n), 50) <= 0 { for k in 0..<n { inFlight[k] = 0 }; continue }
            for (k, s) in socks.enumerated() where pfds[k].revents != 0 {
                while true {
                    let got = UDPBatch.receive(s, rx, slot: 2048, count: batch, lens: &rxLens, addrs: &from)
                    if got <= 0 { break }
                    for i in 0..<got where rxLens[i] >= 20 && rx[i * 2048] == 0x01 && rx[i * 2048 + 1] == 0x01 { answered += 1 }
                    inFlight[k] = max(0, inFlight[k] - got)
                }
            }
        }
        print(String(format: "%.0f", Double(answered) / Date().timeIntervalSince(start)))
    }
}

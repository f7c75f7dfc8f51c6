import Foundation
import RelayCore
import RelayTestHarness
#if canImport(Glibc)
import Glibc
#endif

/// STUN Binding requests answered per second: relayd's reflector against coturn's turnserver
/// (STUN only), both on loopback in one namespace, driven by the same load generator
/// (`relay-lab stun-load`), each server pinned to one core.
struct StunBench {
    static func run(_ lab: Lab, seconds: Int = 3) throws -> (relay: Double, coturn: Double) {
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
        let c = try load(3479), r = try load(3478)
        return (r, c)
    }
}

import ArgumentParser

/// A STUN load generator: keeps `window` Binding requests in flight from one socket and counts
/// valid answers per second (bounded in time).
struct StunLoad: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stun-load", abstract: "STUN Binding load against 127.0.0.1:PORT (benchmarks).")
    @Option var port: Int
    @Option var seconds = 3.0
    @Option var window = 64

    func run() throws {
        let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var big: Int32 = 4 << 20
        setsockopt(s, SOL_SOCKET, SO_RCVBUF, &big, socklen_t(MemoryLayout<Int32>.size))
        var to = sockaddr_in(); to.sin_family = sa_family_t(AF_INET); to.sin_port = UInt16(port).bigEndian; to.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var req = STUN.encode(type: STUN.bindingRequest, transactionID: [UInt8](repeating: 0, count: 12), attributes: [])
        var buf = [UInt8](repeating: 0, count: 2048)
        var seq: UInt64 = 0, answered = 0, inFlight = 0
        func sendOne() {
            seq += 1
            withUnsafeBytes(of: seq.littleEndian) { for i in 0..<8 { req[8 + i] = $0[i] } }
            // (the FINGERPRINT is not recomputed: the request is sent without it)
            _ = send(s, req, 20, 0)
            inFlight += 1
        }
        req = Array(req[0..<20]); req[2] = 0; req[3] = 0
        let start = Date(), end = start.addingTimeInterval(seconds)
        while Date() < end {
            while inFlight < window { sendOne() }
            var pfd = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 50) <= 0 { inFlight = 0; continue }  // lost some: refill the window
            while true {
                let n = recv(s, &buf, buf.count, Int32(MSG_DONTWAIT))
                if n <= 0 { break }
                if n >= 20 && buf[0] == 0x01 && buf[1] == 0x01 { answered += 1 }
                inFlight = max(0, inFlight - 1)
            }
        }
        print(String(format: "%.0f", Double(answered) / Date().timeIntervalSince(start)))
    }
}

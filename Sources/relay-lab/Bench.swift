import ArgumentParser
import CRelayCrypto
import Foundation
import RelayCore
import RelayIPC
import RelayNftables
import RelayTestHarness

/// `make bench`: one run, anchors measured in the same run, a table of ratios.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the benchmarks and print a table of ratios against anchors measured in the same run.")
    @Option(help: "Map sizes to measure.") var sizes: [Int] = [10_000, 100_000]
    @Option(help: "Repetitions per measurement (the median is reported).") var repeats = 3
    @Flag(help: "Skip the site-to-site path benchmark.") var noPaths = false
    @Flag(help: "Skip the helper apply benchmark.") var noApply = false
    @Flag(help: "Skip the STUN reflector benchmark.") var noStun = false
    @Flag(help: "Skip the IPv6 -> IPv4 translation benchmark (Relay against tayga).") var noSiit = false
    @Flag(help: "Skip the AEAD benchmark (relayd's ChaCha20-Poly1305 against libcrypto's).") var noAead = false
    @Flag(help: "Skip the handshake-flood benchmark.") var noFlood = false
    @Flag(help: "Skip the relay benchmarks (relayed path against the direct one; 10,000 nodes at one relay).") var noRelay = false
    @Flag(help: "Skip the relay forwarding benchmark (relayd's relay against coturn's TURN relay).") var noRelayForwarding = false
    @Flag(help: "Skip the WebSocket relay benchmark (the relayed path over TLS against a chain of stunnel processes).") var noWebSocket = false
    @Flag(help: "Skip the NAT traversal benchmark (the 25 ordered pairs of NAT kinds).") var noPunch = false
    @Option(help: "Rounds of the NAT traversal matrix (25 cells each; RELAY_BENCH_PUNCH_ROUNDS overrides).") var punchRounds = 20
    @Option(help: "Simulated nodes for the relay scale row.") var relayNodes = 10_000
    @Option(help: "Flow counts for relayd's memory figures.") var memoryFlows: [Int] = [10_000, 100_000]

    func run() throws {
        print("Relay benchmarks (\(ProcessInfo.processInfo.activeProcessorCount) cores); median of \(repeats)")
        var rows: [(String, Double, Double)] = []
        if !noApply { try Lab.with("bench") { lab in
            let gw = try lab.host("gw"), ref = try lab.host("ref")
            let helper = try HelperFixture.start(in: gw)
            for n in sizes {
                let state = NATState(snat: (0..<n).map { i in
                    let v = UInt32(i)
                    return PrefixMapping(IPPrefix(network: .v4(IPv4Address(0x0a00_0000 | v)), length: 32),
                                         IPPrefix(network: .v4(IPv4Address(0xf000_0000 | v)), length: 32))
                }, remote: [try IPPrefix(parsing: "240.0.0.0/4")])
                let text = TablePlan(state, spec: TableSpec()).render()
                let file = lab.logDirectory.appendingPathComponent("bench-\(n).nft").path
                try text.write(toFile: file, atomically: true, encoding: .utf8)
                var relay: [Double] = [], nft: [Double] = []
                for _ in 0..<repeats {
                    let client = try HelperClient(path: helper.socketPath)
                    try client.cleanup()
                    let t0 = Date()
                    let report = try client.apply(state)
                    relay.append(Date().timeIntervalSince(t0))
                    precondition(report.changed)
                    _ = try ref.run(["nft", "delete", "table", "inet", "relay"], check: false)
                    let t1 = Date()
                    try ref.run(["nft", "-f", file], timeout: 120)
                    nft.append(Date().timeIntervalSince(t1))
                }
                // Both kernels hold the same number of entries.
                let observed = try HelperClient(path: helper.socketPath).observe().table.sets.first { $0.name == "snat4" }?.entries
                guard observed == n else { throw HarnessError("helper holds \(observed ?? -1) entries, expected \(n)") }
                rows.append(("apply \(n) map entries (one request)", median(relay), median(nft)))
            }
            if ProcessInfo.processInfo.environment["RELAY_BENCH_VERBOSE"] == "1" {
                print(helper.process.log().split(separator: "\n").filter { $0.contains(" ms") }.joined(separator: "\n"))
            }
        } }
        print("")
        print(pad("benchmark", 40) + pad("relay-helper", 14) + pad("anchor: nft -f", 16) + "ratio (anchor/relay, >1 = faster)")
        for (name, r, a) in rows {
            print(pad(name, 40) + pad(String(format: "%.3f s", r), 14) + pad(String(format: "%.3f s", a), 16) + String(format: "%.2fx", a / r))
        }
        if !noAead {
            let (r, l) = AEADBench.run(repeats: repeats)
            let name = String(cString: CRelayCrypto_implementation())
            print("")
            print(pad("ChaCha20-Poly1305, 1408 B (ns/message)", 40) + pad(name, 14) + pad("libcrypto", 16) + "ratio (anchor/relay, >1 = faster)")
            print(pad("  seal", 40) + pad(String(format: "%.0f", r.sealNs), 14) + pad(String(format: "%.0f", l.sealNs), 16) + String(format: "%.2fx", l.sealNs / r.sealNs))
            print(pad("  open", 40) + pad(String(format: "%.0f", r.openNs), 14) + pad(String(format: "%.0f", l.openNs), 16) + String(format: "%.2fx", l.openNs / r.openNs))
        }
        if !noPaths { try paths() }
        if !noFlood { try flood() }
        if !noRelay { try relayed() }
        if !noPunch { try PunchBench.run(rounds: ProcessInfo.processInfo.environment["RELAY_BENCH_PUNCH_ROUNDS"].flatMap(Int.init) ?? punchRounds) }
        if !noRelayForwarding { try forwarding() }
        if !noWebSocket { try webSocket() }
        if !noSiit { try translation() }
        if !noStun {
            let (r, c) = try Lab.with("bench-stun") { try StunBench.run($0) }
            print("")
            print(pad("STUN Binding answers/s (one core)", 40) + pad(String(format: "%.0f", r), 14) + pad(String(format: "%.0f coturn", c), 16) + String(format: "%.2fx (goal >= 1)", r / max(c, 1)))
        }
    }

    func paths() throws {
        print("")
        print("Site to site, host A to host B (iperf3 3 s, ping x\(PathBench.pings), TCP 1-byte request/response 2 s):")
        var cpu: (idle: [Double], atThousand: [Double], rate: Double?)?
        let relay = try Lab.with("bench-relay") { lab -> (PathBench.Figures, [(Int, Int, Double)], (mallocs: Int, datagrams: Int)?) in
            let (f, s) = try PathBench.relayPath(lab)
            cpu = try PathBench.cpuCost(s)
            let allocs = try PathBench.allocations(s)
            return (f, try PathBench.memory(s, flows: memoryFlows), allocs)
        }
        // The same with node.busy_poll: the packet loops stay awake 30 ms after their last packet.
        let busy = try Lab.with("bench-relay-busy") { try PathBench.relayPath($0, busyPoll: 30_000).0 }
        let kernel = try Lab.with("bench-kernel") { try PathBench.kernelPath($0) }
        let stunnel = try Lab.with("bench-stunnel") { try PathBench.stunnelPath($0) }
        func v(_ x: Double?, _ fmt: String) -> String { x.map { String(format: fmt, $0) } ?? "-" }
        func ratio(_ a: Double?, _ b: Double?) -> String { (a != nil && b != nil && b! > 0) ? String(format: "%.2fx", a! / b!) : "-" }
        print(pad("metric", 30) + pad("Relay", 10) + pad("Relay bp", 10) + pad("kernel+NAT", 12) + pad("stunnel", 10)
              + pad("Relay/kernel", 14) + pad("bp/kernel", 11) + pad("Relay/stunnel", 15) + "bp/stunnel")
        let r = relay.0
        func row(_ name: String, _ k: KeyPath<PathBench.Figures, Double?>, _ fmt: String, stunnel st: Bool) {
            print(pad(name, 30) + pad(v(r[keyPath: k], fmt), 10) + pad(v(busy[keyPath: k], fmt), 10) + pad(v(kernel[keyPath: k], fmt), 12)
                  + pad(st ? v(stunnel?[keyPath: k], fmt) : "-", 10)
                  + pad(ratio(r[keyPath: k], kernel[keyPath: k]), 14) + pad(ratio(busy[keyPath: k], kernel[keyPath: k]), 11)
                  + pad(st ? ratio(r[keyPath: k], stunnel?[keyPath: k]) : "-", 15) + (st ? ratio(busy[keyPath: k], stunnel?[keyPath: k]) : "-"))
        }
        row("TCP Gbit/s", \.tcpGbps, "%.2f", stunnel: true)
        row("UDP Gbit/s (received)", \.udpGbps, "%.2f", stunnel: false)
        row("ping RTT ms (lower is better)", \.rttMs, "%.3f", stunnel: false)
        row("ping RTT ms, median", \.rttMedianMs, "%.3f", stunnel: false)
        row("TCP request/response per s", \.rrPerSec, "%.0f", stunnel: true)
        print("Relay: default configuration (adaptive polling); Relay bp: node.busy_poll = 30000 (µs) on both gateways")
        if let c = cpu {
            func pct(_ xs: [Double]) -> String { xs.map { String(format: "%.1f%%", $0) }.joined(separator: " / ") }
            print(pad("relayd CPU A / B, idle 10 s", 30) + pct(c.idle) + " of a core (goal < 1%)")
            print(pad("relayd CPU A / B, 1,000 rr/s", 30) + pct(c.atThousand) + " of a core (goal <= 10%)" + (c.rate.map { String(format: "; %.0f request/responses per s reached", $0) } ?? ""))
        }
        print("goals: TCP above the stunnel pair (Relay/stunnel > 1); RTT under 2x the kernel path's (the mean row; the median row is for context)")
        if let a = relay.2 {
            print(pad("relayd A heap allocations", 30) + String(format: "%d malloc calls while sealing %d datagrams (%.3f per 1000; perf uprobe)", a.mallocs, a.datagrams,
                                                               Double(a.mallocs) * 1000 / Double(max(a.datagrams, 1))))
        }
        for (n, active, mb) in relay.1 {
            print(pad("relayd peak RSS, \(n) flows", 30) + String(format: "%.1f MiB (%d tracked)", mb, active))
        }
    }

    /// The tunnel's round trip and loss while gateway B takes 60,000 spoofed-source initiations a
    /// second with a valid mac1; the anchor is the same tunnel a moment before, without the flood.
    func flood() throws {
        print("")
        print("Handshake flood at gateway B (60,000 initiations/s, valid mac1, spoofed sources; ping x\(PathBench.pings) host A to host B):")
        try Lab.with("bench-flood") { lab in
            let s = try SiteToSite(lab)
            try s.start()
            try s.underlay.ip("route", "add", "blackhole", "10.99.0.0/16")
            _ = try s.hostA.run(["ping", "-c", "3", "-W", "2", "240.2.2.20"], check: false)
            func pings() throws -> (loss: Double, avg: Double) {
                let out = try s.hostA.run(["ping", "-c", String(PathBench.pings), "-i", "0.01", "-W", "1", "-q", "240.2.2.20"], check: false).stdout
                let loss = out.range(of: #"[\d.]+% packet loss"#, options: .regularExpression).map { Double(out[$0].split(separator: "%")[0]) ?? 100 } ?? 100
                let avg = out.range(of: #"= [\d.]+/[\d.]+/"#, options: .regularExpression).map { Double(out[$0].split(separator: "/")[1]) ?? 0 } ?? 0
                return (loss, avg)
            }
            let quiet = try pings()
            let flood = try s.underlay.spawn([try Binaries.path("relay-lab"), "handshake-flood", "--target", "10.20.20.20:51820", "--key", s.publicKeyB,
                                              "--rate", "60000", "--seconds", "6"], label: "flood")
            Thread.sleep(forTimeInterval: 1)
            let loud = try pings()
            _ = try flood.waitForExit(timeout: 30)
            let sent = flood.log().trimmingCharacters(in: .whitespacesAndNewlines)
            print(pad("metric", 30) + pad("flood", 12) + pad("anchor: quiet", 16) + "ratio (flood/quiet)")
            print(pad("ping RTT ms (lower is better)", 30) + pad(String(format: "%.3f", loud.avg), 12) + pad(String(format: "%.3f", quiet.avg), 16)
                  + String(format: "%.2fx (goal < 2)", loud.avg / max(quiet.avg, 0.001)))
            print(pad("ping loss %", 30) + pad(String(format: "%.0f", loud.loss), 12) + pad(String(format: "%.0f", quiet.loss), 16) + "(goal 0)")
            print("flood generator: \(sent)")
        }
    }

    /// Through a relay (both gateways behind NATs, nothing between them) against the direct path,
    /// on the same topology shape; then one relay with `relayNodes` simulated nodes.
    func relayed() throws {
        print("")
        print("Through a relay, host A to host B (iperf3 3 s, ping x\(PathBench.pings), TCP 1-byte request/response 2 s; the relay's per-node limits raised), against the direct tunnel:")
        // Both labs stay up and TCP is measured in alternation (direct, relayed, three rounds, the
        // median of each): these virtual CPUs run in phases of tens of seconds, and one direct run
        // followed by one relayed run put the two sides in different phases (0.73x-0.91x in seven
        // sequential runs on one day).
        var rounds: [(direct: Double?, relayed: Double?)] = []
        let (direct, relayed) = try Lab.with("bench-direct") { dl -> (PathBench.Figures, PathBench.Figures) in
            var (direct, ds) = try PathBench.relayPath(dl)
            let relayed = try Lab.with("bench-relayed") { lab -> PathBench.Figures in
                let s = try SiteToSite(lab, extraHostNumbers: [], relays: 1)
                // The relay's per-node limits (1 Gbit/s by default) raised: this measures the path.
                try s.start(extraConfig: "[sessions]\nmax = 200000\nudp_timeout = 600\n", relayExtra: "node_bytes_per_second = 10000000000\nnode_datagrams_per_second = 10000000")
                try waitUntil("the gateways reach each other through the relay", timeout: 30) {
                    try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
                }
                try PathBench.profileWholeMachine(s, "relayed")
                var relayed = try PathBench.measure(client: s.hostA, server: s.hostB, address: "240.2.2.20")
                rounds.append((direct.tcpGbps, relayed.tcpGbps))
                for _ in 0..<2 {
                    let d = try PathBench.tcp(client: ds.hostA, server: ds.hostB, address: "240.2.2.20")
                    let r = try PathBench.tcp(client: s.hostA, server: s.hostB, address: "240.2.2.20")
                    rounds.append((d, r))
                }
                relayed.tcpGbps = PathBench.median(rounds.compactMap(\.relayed))
                return relayed
            }
            direct.tcpGbps = PathBench.median(rounds.compactMap(\.direct))
            return (direct, relayed)
        }
        print("TCP rounds (direct / relayed Gbit/s): " + rounds.map { String(format: "%.2f / %.2f", $0.direct ?? 0, $0.relayed ?? 0) }.joined(separator: ", ") + "; medians below")
        func v(_ x: Double?, _ fmt: String) -> String { x.map { String(format: fmt, $0) } ?? "-" }
        func ratio(_ a: Double?, _ b: Double?) -> String { (a != nil && b != nil && b! > 0) ? String(format: "%.2fx", a! / b!) : "-" }
        print(pad("metric", 30) + pad("relayed", 12) + pad("direct", 12) + "relayed/direct")
        print(pad("TCP Gbit/s", 30) + pad(v(relayed.tcpGbps, "%.2f"), 12) + pad(v(direct.tcpGbps, "%.2f"), 12) + ratio(relayed.tcpGbps, direct.tcpGbps) + " (goal >= 0.8)")
        print(pad("UDP Gbit/s (received)", 30) + pad(v(relayed.udpGbps, "%.2f"), 12) + pad(v(direct.udpGbps, "%.2f"), 12) + ratio(relayed.udpGbps, direct.udpGbps))
        print(pad("ping RTT ms (lower is better)", 30) + pad(v(relayed.rttMs, "%.3f"), 12) + pad(v(direct.rttMs, "%.3f"), 12) + ratio(relayed.rttMs, direct.rttMs) + " (goal < 2)")
        print(pad("ping RTT ms, median", 30) + pad(v(relayed.rttMedianMs, "%.3f"), 12) + pad(v(direct.rttMedianMs, "%.3f"), 12) + ratio(relayed.rttMedianMs, direct.rttMedianMs))
        print(pad("TCP request/response per s", 30) + pad(v(relayed.rrPerSec, "%.0f"), 12) + pad(v(direct.rrPerSec, "%.0f"), 12) + ratio(relayed.rrPerSec, direct.rrPerSec))

        print("")
        print("One relay, \(relayNodes) simulated nodes (relay-lab relay-load in a lab namespace; 20,000 datagrams/s of 200 bytes between random pairs for 10 s):")
        try Lab.with("bench-relay-scale") { lab in
            let relay = try lab.host("relay"), nodes = try lab.host("nodes")
            try lab.link(relay, "eth0", ["10.77.0.1/24"], nodes, "eth0", ["10.77.0.2/24"])
            let (d, pub, token) = try startRelay(lab, in: relay, name: "relay-scale", extra: "max_nodes = \(relayNodes + 100)\nregistrations_per_second = 10000\n")
            func rss(_ field: String) -> Int { Bench.memory(d.pid, field) }
            let before = rss("VmRSS")
            let r = try nodes.run([try Binaries.path("relay-lab"), "relay-load", "--relay", "10.77.0.1:51821", "--key", pub, "--token", token, "--bind", "10.77.0.2",
                                   "--nodes", String(relayNodes), "--rate", "20000", "--seconds", "10", "--registration-rate", "5000"], timeout: 180, check: false)
            let after = rss("VmHWM")  // the peak, with every node registered
            guard let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { print("relay-load failed: \(r.stderr.suffix(400))"); return }
            let reg = o["registered"] as? Int ?? 0, sent = o["sent"] as? Int ?? 0, got = o["received"] as? Int ?? 0
            print(pad("nodes registered", 40) + "\(reg) of \(relayNodes)")
            print(pad("registrations/s (client-paced at 5,000)", 40) + String(format: "%.0f", o["registrationsPerSecond"] as? Double ?? 0))
            print(pad("forwarded datagrams/s", 40) + String(format: "%.0f (%d of %d delivered)", o["forwardedPerSecond"] as? Double ?? 0, got, sent))
            print(pad("relayd RSS", 40) + String(format: "%.1f MiB at its peak, %.2f KiB per node (%.1f MiB before)", Double(after) / 1024, Double(after - before) / Double(max(reg, 1)), Double(before) / 1024))
            print("failover (kernel test RelayedSitesTests.failover): traffic resumes 5–7 s after kill -9 of the home relay (goal 10 s)")
        }
    }

    /// relayd's relay role (key, token, `[relay]` extra lines) as nobody in `host`; returns once it listens.
    func startRelay(_ lab: Lab, in host: LabHost, name: String, extra: String) throws -> (LabProcess, pub: String, token: String) {
        let k = try Command.run([try Binaries.path("relayctl"), "keygen", "--json"]).stdout
        guard let obj = try JSONSerialization.jsonObject(with: Data(k.utf8)) as? [String: String], let priv = obj["private_key"], let pub = obj["public_key"] else {
            throw HarnessError("relayctl keygen --json printed no key pair")
        }
        let dir = lab.logDirectory.appendingPathComponent(name).path
        try FileManager.default.createDirectory(atPath: dir + "/state", withIntermediateDirectories: true)
        try (priv + "\n").write(toFile: dir + "/state/private.key", atomically: true, encoding: .utf8)
        chmod(dir + "/state/private.key", 0o600); chmod(dir + "/state", 0o700)
        let token = "bench-token-0123456789"
        try "[node]\nname = \"relay\"\n[reflector]\nenabled = false\n[relay]\nenabled = true\ntokens = [\"\(token)\"]\n\(extra)"
            .write(toFile: dir + "/relayd.toml", atomically: true, encoding: .utf8)
        for p in [dir, dir + "/state", dir + "/state/private.key", dir + "/relayd.toml"] { chown(p, 65534, 65534) }
        let d = try host.spawn([try Binaries.path("relayd"), "--config", dir + "/relayd.toml", "--state-dir", dir + "/state", "--socket", dir + "/relayd.sock",
                                "--helper-socket", dir + "/none.sock", "--log-level", "warning"], label: "relayd-\(name)", as: 65534)
        try waitUntil("relay", timeout: 20) { try host.run(["ss", "-lnuH"]).stdout.contains(":51821") }
        return (d, pub, token)
    }

    /// The relay's forwarding against coturn's TURN relay: the same generator (relay-lab
    /// relay-blast: 2 pairs, 1200-byte payloads, sendmmsg/recvmmsg) in the same two-namespace
    /// topology, alternating rounds, the median of each.
    func forwarding() throws {
        print("")
        print("Relay forwarding against coturn's TURN relay (relay-lab relay-blast: 2 sender/receiver pairs, 1,200-byte payloads, 3 s; \(repeats) alternating rounds, median):")
        try Lab.with("bench-relay-fwd") { lab in
            let server = try lab.host("relay"), clients = try lab.host("clients")
            try lab.link(server, "eth0", ["10.78.0.1/24"], clients, "eth0", ["10.78.0.2/24"])
            let (d, pub, token) = try startRelay(lab, in: server, name: "relay-fwd", extra: "node_bytes_per_second = 10000000000\nnode_datagrams_per_second = 10000000\n")
            let dir = lab.logDirectory.appendingPathComponent("coturn").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let coturn = try server.spawn(["turnserver", "-n", "--no-auth", "--no-cli", "--no-tls", "--no-dtls", "-L", "10.78.0.1", "--relay-ip", "10.78.0.1",
                                           "-p", "3478", "--min-port", "49152", "--max-port", "49200", "--log-file", "stdout", "--no-stdout-log",
                                           "--userdb", dir + "/db", "--pidfile", dir + "/pid"], label: "coturn")
            try waitUntil("coturn", timeout: 20) { try server.run(["ss", "-lnuH"]).stdout.contains("10.78.0.1:3478") }
            _ = d; _ = coturn
            func blast(_ args: [String]) throws -> (gbps: Double, loss: Double)? {
                let r = try clients.run([try Binaries.path("relay-lab"), "relay-blast", "--bind", "10.78.0.2", "--pairs", "2", "--size", "1200", "--seconds", "3"] + args,
                                        timeout: 60, check: false)
                guard let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], let g = o["payloadGbps"] as? Double else {
                    print("relay-blast \(args.first ?? "") failed: \(r.stderr.suffix(400))"); return nil
                }
                return (g, o["lossPercent"] as? Double ?? 0)
            }
            var relayed: [(gbps: Double, loss: Double)] = [], turned: [(gbps: Double, loss: Double)] = []
            for _ in 0..<repeats {
                if let r = try blast(["--mode", "relay", "--server", "10.78.0.1:51821", "--key", pub, "--token", token]) { relayed.append(r) }
                if let t = try blast(["--mode", "turn", "--server", "10.78.0.1:3478"]) { turned.append(t) }
            }
            guard !relayed.isEmpty, !turned.isEmpty else { return }
            let r = relayed.sorted { $0.gbps < $1.gbps }[relayed.count / 2], t = turned.sorted { $0.gbps < $1.gbps }[turned.count / 2]
            print(pad("metric", 30) + pad("Relay", 12) + pad("coturn", 12) + "Relay/coturn")
            print(pad("payload Gbit/s delivered", 30) + pad(String(format: "%.2f", r.gbps), 12) + pad(String(format: "%.2f", t.gbps), 12)
                  + String(format: "%.2fx", r.gbps / max(t.gbps, 1e-9)) + " (goal > 1)")
            print(pad("lost at the relay, %", 30) + pad(String(format: "%.1f", r.loss), 12) + pad(String(format: "%.1f", t.loss), 12))
            print("(unpaced senders: both relays run over their capacity; Relay also checks a SipHash tag on every datagram and adds one, TURN checks nothing)")
        }
    }

    /// TCP inside the tunnel, relayed over the relay's TLS WebSocket (UDP blocked at both NATs),
    /// against a chain of stunnel processes that makes the same two TLS hops.
    func webSocket() throws {
        print("")
        print("Through a relay over TLS/WebSocket (both NAT routers drop UDP), host A to host B (iperf3 TCP 3 s, TCP 1-byte request/response 2 s), against a chain of stunnel processes with the same two TLS hops:")
        let ws = try Lab.with("bench-ws") { try PathBench.webSocketPath($0) }
        let chain = try Lab.with("bench-chain") { try PathBench.stunnelChain($0) }
        func v(_ x: Double?, _ fmt: String) -> String { x.map { String(format: fmt, $0) } ?? "-" }
        func ratio(_ a: Double?, _ b: Double?) -> String { (a != nil && b != nil && b! > 0) ? String(format: "%.2fx", a! / b!) : "-" }
        print(pad("metric", 30) + pad("Relay (wss)", 14) + pad("stunnel x3", 12) + "Relay/stunnel")
        print(pad("TCP Gbit/s", 30) + pad(v(ws.tcpGbps, "%.2f"), 14) + pad(v(chain?.tcpGbps, "%.2f"), 12) + ratio(ws.tcpGbps, chain?.tcpGbps) + " (goal >= 1)")
        print(pad("TCP request/response per s", 30) + pad(v(ws.rrPerSec, "%.0f"), 14) + pad(v(chain?.rrPerSec, "%.0f"), 12) + ratio(ws.rrPerSec, chain?.rrPerSec))
        print(pad("ping RTT ms (Relay only)", 30) + pad(v(ws.rttMs, "%.3f"), 14))
        print("(Relay also encrypts end to end inside: Noise between the gateways, TLS to the relay on each side; stunnel's relay sees the plaintext)")
        try webSocketScale()
    }

    /// WebSocket nodes at one relay: registrations per second and relayd's memory per connected
    /// node (Tests/Support/ws_load.py, Python websockets over TLS, 128 handshakes at a time).
    func webSocketScale() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Tests/Support/ws_load.py").standardized.path
        print("")
        print("One relay, \(relayNodes) WebSocket nodes over TLS (\(URL(fileURLWithPath: script).lastPathComponent): each registers, pings every 2 s, holds 5 s):")
        try Lab.with("bench-ws-scale") { lab in
            let relay = try lab.host("relay"), clients = try lab.host("clients")
            try lab.link(relay, "eth0", ["10.79.0.1/24"], clients, "eth0", ["10.79.0.2/24"])
            let tls = lab.logDirectory.appendingPathComponent("tls").path
            try FileManager.default.createDirectory(atPath: tls, withIntermediateDirectories: true)
            let out = try Command.run([try Binaries.path("relayctl"), "relay", "cert", "--self-signed", "10.79.0.1", "--out", tls, "--json"]).stdout
            guard let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: String], let cert = obj["certificate"], let key = obj["privateKey"] else { return }
            for p in [tls, cert, key] { chown(p, 65534, 65534) }
            let (d, pub, token) = try startRelay(lab, in: relay, name: "relay-ws-scale",
                extra: "max_nodes = \(relayNodes + 100)\nregistrations_per_second = 10000\n[front_door]\nenabled = true\nlisten = \"10.79.0.1:8443\"\ncertificate = \"\(cert)\"\nprivate_key = \"\(key)\"\nmax_connections_per_address = \(relayNodes + 100)\nidle_seconds = 300\n")
            try waitUntil("front door", timeout: 20) { try relay.run(["ss", "-lntH"]).stdout.contains("10.79.0.1:8443") }
            func rss(_ field: String) -> Int { Bench.memory(d.pid, field) }
            let before = rss("VmRSS")
            let load = try clients.spawn(["python3", script, "wss://10.79.0.1:8443/relay", cert, "10.79.0.1", pub, token, String(relayNodes), "5", "128"], label: "ws-load")
            var line = ""
            try waitUntil("WebSocket nodes registered", timeout: 400) {
                line = load.log().split(separator: "\n").first { $0.contains("\"registered\"") }.map(String.init) ?? ""
                if !load.isRunning && line.isEmpty { throw HarnessError("ws_load.py exited: \(load.log().suffix(600))") }
                return !line.isEmpty
            }
            let during = rss("VmRSS")
            _ = try? load.waitForExit(timeout: 120)
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { print("ws_load.py: \(line)"); return }
            let reg = o["registered"] as? Int ?? 0
            print(pad("nodes registered", 40) + "\(reg) of \(relayNodes)" + ((o["failed"] as? Int ?? 0) > 0 ? " (\(o["failed"]!) failed: \(o["error"] ?? ""))" : ""))
            print(pad("registrations/s", 40) + String(format: "%.0f (the Python client's TLS and Noise handshakes share the two cores)", o["registrationsPerSecond"] as? Double ?? 0))
            print(pad("relayd RSS", 40) + String(format: "%.1f MiB with them connected, %.1f KiB per WebSocket node (%.1f MiB before)",
                                                     Double(during) / 1024, Double(during - before) / Double(max(reg, 1)), Double(before) / 1024))
        }
    }

    func translation() throws {
        print("")
        print("IPv6 -> IPv4 (SIIT), A's IPv6-only host to B's IPv4 host (iperf3 TCP 3 s, ping x\(PathBench.pings), request/response 2 s):")
        let relay = try Lab.with("bench-siit") { try PathBench.relayTranslation($0) }
        let tayga = try Lab.with("bench-tayga") { try PathBench.taygaTranslation($0) }
        func v(_ x: Double?, _ fmt: String) -> String { x.map { String(format: fmt, $0) } ?? "-" }
        func ratio(_ a: Double?, _ b: Double?) -> String { (a != nil && b != nil && b! > 0) ? String(format: "%.2fx", a! / b!) : "-" }
        print(pad("metric", 30) + pad("Relay", 12) + pad("tayga", 12) + "Relay/tayga")
        print(pad("TCP Gbit/s", 30) + pad(v(relay.tcpGbps, "%.2f"), 12) + pad(v(tayga?.tcpGbps, "%.2f"), 12) + ratio(relay.tcpGbps, tayga?.tcpGbps))
        print(pad("ping RTT ms (lower is better)", 30) + pad(v(relay.rttMs, "%.3f"), 12) + pad(v(tayga?.rttMs, "%.3f"), 12) + ratio(relay.rttMs, tayga?.rttMs))
        print(pad("ping RTT ms, median", 30) + pad(v(relay.rttMedianMs, "%.3f"), 12) + pad(v(tayga?.rttMedianMs, "%.3f"), 12) + ratio(relay.rttMedianMs, tayga?.rttMedianMs))
        print(pad("TCP request/response per s", 30) + pad(v(relay.rrPerSec, "%.0f"), 12) + pad(v(tayga?.rrPerSec, "%.0f"), 12) + ratio(relay.rrPerSec, tayga?.rrPerSec))
        print("goal: TCP above tayga (Relay/tayga > 1) while also encrypting; tayga does not encrypt")
    }

    /// A field of /proc/PID/status in kB (VmRSS, VmHWM).
    static func memory(_ pid: pid_t, _ field: String) -> Int {
        let s = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        return Int(s.split(separator: "\n").first { $0.hasPrefix(field + ":") }?.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }

    func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }
    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
}

import CRelayShim
import Foundation
import RelayCore
import RelayIPC
import RelayTestHarness

/// The site-to-site path benchmark: host A to host B through Relay, against anchors measured in the
/// same run on the same kind of topology: (a) plain kernel routing with the same prefix NAT and no
/// tunnel, (b) a TLS tunnel made of two stunnel processes.
struct PathBench {
    struct Figures { var tcpGbps: Double?; var udpGbps: Double?; var rttMs: Double?; var rttMedianMs: Double?; var rrPerSec: Double? }

    static let rrScript = """
    import socket, sys, time
    if sys.argv[1] == 'paced':
        # RATE request/responses per second for SECONDS (bounded), one connection.
        c = socket.create_connection((sys.argv[2], int(sys.argv[3]))); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rate, seconds = min(float(sys.argv[4]), 10000), min(float(sys.argv[5]), 30)
        n, t0 = 0, time.time()
        while n < rate * seconds:
            c.sendall(b'x'); c.recv(64); n += 1
            wait = t0 + n / rate - time.time()
            if wait > 0: time.sleep(wait)
        print(n / (time.time() - t0))
        sys.exit(0)
    if sys.argv[1] == 'server':
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', int(sys.argv[2]))); s.listen(8)
        while True:
            c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                d = c.recv(64)
                if not d: break
                c.sendall(d)
    else:
        c = socket.create_connection((sys.argv[2], int(sys.argv[3]))); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n, t0 = 0, time.time()
        while time.time() - t0 < float(sys.argv[4]) and n < 200000:
            c.sendall(b'x'); c.recv(64); n += 1
        print(n / (time.time() - t0))
    """

    /// Round trips per ping figure, 10 ms apart (well inside busy_poll's 30 ms): with 100, one
    /// round trip that meets a 1-3 ms stall moves the mean by 10-30 µs instead of 33-100.
    static let pings = 100

    /// relayd's CPU (both gateways, per cent of one core each, from /proc/PID/stat) for 10 s with no
    /// traffic, then during 1,000 request/responses per second for 5 s (one TCP connection).
    static func cpuCost(_ s: SiteToSite, port: Int = 5501) throws -> (idle: [Double], atThousand: [Double], rate: Double?) {
        func ticks(_ pid: pid_t) -> Double {
            let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
            // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
            guard let close = stat.lastIndex(of: ")") else { return 0 }
            let f = stat[stat.index(after: close)...].split(separator: " ")
            return f.count > 12 ? (Double(f[11]) ?? 0) + (Double(f[12]) ?? 0) : 0
        }
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        let pids = [s.relaydA.pid, s.relaydB.pid]
        func measure(during: () throws -> Void) rethrows -> [Double] {
            let before = pids.map(ticks), t0 = Date()
            try during()
            let elapsed = Date().timeIntervalSince(t0)
            return zip(pids.map(ticks), before).map { ($0 - $1) / hz / elapsed * 100 }
        }
        try server(s.hostB, port: port)
        let idle = measure { Thread.sleep(forTimeInterval: 10) }
        var rate: Double?
        let busy = try measure {
            rate = Double(try s.hostA.run(["python3", "-c", rrScript, "paced", "240.2.2.20", String(port), "1000", "5"], timeout: 30, check: false).stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        return (idle, busy, rate)
    }

    /// A request/response server on `port` of `host` (the lab ends it).
    static func server(_ host: LabHost, port: Int) throws {
        try host.spawn(["python3", "-c", rrScript, "server", String(port)], label: "rr-\(port)")
        try waitUntil("rr server") { try host.run(["ss", "-lntH"]).stdout.contains(":\(port) ") }
    }

    /// One iperf3 TCP run (Gbit/s received), its own server on `port`.
    static func tcp(client: LabHost, server: LabHost, address: String, port: Int = 5401, seconds: Int = 3) throws -> Double? {
        let srv = try server.spawn(["iperf3", "-s", "-p", String(port)], label: "iperf3-\(port)")
        defer { srv.stop() }
        try waitUntil("iperf3 server") { try server.run(["ss", "-lntH"]).stdout.contains(":\(port) ") }
        let r = try client.run(["iperf3", "-c", address, "-p", String(port), "-t", String(seconds), "-J"], timeout: Double(seconds + 20), check: false)
        guard let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], let end = o["end"] as? [String: Any],
              let sum = end["sum_received"] as? [String: Any], let bps = sum["bits_per_second"] as? Double else { return nil }
        return bps / 1e9
    }

    static func median(_ xs: [Double]) -> Double? {
        guard !xs.isEmpty else { return nil }
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// iperf3 TCP and UDP, ping RTT, TCP request/response from `client` to `server` reached as `address`.
    static func measure(client: LabHost, server: LabHost, address: String, port: Int = 5201, udp: Bool = true, seconds: Int = 3) throws -> Figures {
        var f = Figures()
        let srv = try server.spawn(["iperf3", "-s", "-p", String(port)], label: "iperf3-\(port)")
        try server.spawn(["python3", "-c", rrScript, "server", String(port + 100)], label: "rr-\(port)")
        try waitUntil("iperf3 server") { try server.run(["ss", "-lntH"]).stdout.contains(":\(port) ") }
        defer { srv.stop() }
        func bps(_ json: String, _ key: String) -> Double? {
            guard let o = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
                  let end = o["end"] as? [String: Any], let s = end[key] as? [String: Any] else { return nil }
            return s["bits_per_second"] as? Double
        }
        let tcp = try client.run(["iperf3", "-c", address, "-p", String(port), "-t", String(seconds), "-J"], timeout: Double(seconds + 20), check: false)
        f.tcpGbps = bps(tcp.stdout, "sum_received").map { $0 / 1e9 }
        if udp {
            let u = try client.run(["iperf3", "-u", "-b", "0", "-l", "1300", "-c", address, "-p", String(port), "-t", String(seconds), "-J"], timeout: Double(seconds + 20), check: false)
            // iperf3's UDP "sum" is the offered rate with the loss the server reported: received = rate x (1 - loss).
            if let o = try? JSONSerialization.jsonObject(with: Data(u.stdout.utf8)) as? [String: Any],
               let sum = (o["end"] as? [String: Any])?["sum"] as? [String: Any], let rate = sum["bits_per_second"] as? Double {
                let lost = (sum["lost_percent"] as? Double) ?? 0
                f.udpGbps = rate * (1 - lost / 100) / 1e9
            }
        }
        let ping = try client.run(["ping", "-c", String(pings), "-i", "0.01", address], check: false).stdout
        if let line = ping.split(separator: "\n").first(where: { $0.contains("rtt") }),
           let avg = line.split(separator: "=").last?.split(separator: "/").dropFirst().first { f.rttMs = Double(avg) }
        // The median too: a mean moves with one or two slow round trips (on these VMs a kernel
        // thread, kdamond, takes a CPU for about 1 ms every 512 ms).
        let times = ping.split(separator: "\n").compactMap { l in l.range(of: "time=").flatMap { Double(l[$0.upperBound...].prefix { $0 != " " }) } }.sorted()
        if !times.isEmpty { f.rttMedianMs = times.count % 2 == 1 ? times[times.count / 2] : (times[times.count / 2 - 1] + times[times.count / 2]) / 2 }
        try waitUntil("rr server") { try server.run(["ss", "-lntH"]).stdout.contains(":\(port + 100) ") }
        let rr = try client.run(["python3", "-c", rrScript, "client", address, String(port + 100), "2"], timeout: 20, check: false).stdout
        f.rrPerSec = Double(rr.trimmingCharacters(in: .whitespacesAndNewlines))
        return f
    }

    /// The kernel anchor: the same sites and prefix NAT, routed over the underlay without a tunnel.
    static func kernelPath(_ lab: Lab) throws -> Figures {
        let s = try SiteToSite(lab, extraHostNumbers: [])
        // No Relay device here: the underlay interfaces (wan0) stand in for it, so the helper's
        // inbound translation (which matches only its devices' names) matches them.
        let policy = HelperFixture.policy(devicePrefix: "wan")
        let ha = try HelperFixture.start(in: s.gwA, policy: policy, name: "kh"), hb = try HelperFixture.start(in: s.gwB, policy: policy, name: "kh")
        func P(_ x: String) -> IPPrefix { IPPrefix(x)! }
        try HelperClient(path: ha.socketPath).apply(NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))],
                                                            snat: [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24"))], remote: [P("240.2.2.0/24")]))
        try HelperClient(path: hb.socketPath).apply(NATState(dnat: [PrefixMapping(P("240.2.2.0/24"), P("192.168.1.0/24"))],
                                                            snat: [PrefixMapping(P("192.168.1.0/24"), P("240.2.2.0/24"))], remote: [P("240.1.1.0/24")]))
        try s.gwA.route("240.2.2.0/24", via: "10.10.10.1"); try s.gwB.route("240.1.1.0/24", via: "10.20.20.1")
        try s.underlay.route("240.1.1.0/24", via: "10.10.10.10"); try s.underlay.route("240.2.2.0/24", via: "10.20.20.20")
        return try measure(client: s.hostA, server: s.hostB, address: "240.2.2.20")
    }

    /// The stunnel anchor: host A connects to a stunnel client on gateway A, which speaks TLS 1.3 to a
    /// stunnel server on gateway B, which connects to host B (TCP only).
    static func stunnelPath(_ lab: Lab) throws -> Figures? {
        guard (try? Command.run(["which", "stunnel4"]))?.succeeded == true else { return nil }
        let s = try SiteToSite(lab, extraHostNumbers: [])
        let dir = lab.logDirectory.path
        try Command.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                         "-subj", "/CN=relay-bench", "-keyout", dir + "/st.key", "-out", dir + "/st.crt"])
        for port in [5201, 5301] {
            try """
            foreground = yes
            pid =
            [b]
            accept = 10.20.20.20:\(port + 1000)
            connect = 192.168.1.20:\(port)
            cert = \(dir)/st.crt
            key = \(dir)/st.key
            sslVersionMin = TLSv1.3
            """.write(toFile: dir + "/st-server-\(port).conf", atomically: true, encoding: .utf8)
            try """
            foreground = yes
            pid =
            [a]
            client = yes
            accept = 192.168.1.1:\(port)
            connect = 10.20.20.20:\(port + 1000)
            sslVersionMin = TLSv1.3
            """.write(toFile: dir + "/st-client-\(port).conf", atomically: true, encoding: .utf8)
            try s.gwB.spawn(["stunnel4", dir + "/st-server-\(port).conf"], label: "stunnel-b-\(port)")
            try s.gwA.spawn(["stunnel4", dir + "/st-client-\(port).conf"], label: "stunnel-a-\(port)")
        }
        try waitUntil("stunnel") { try s.gwA.run(["ss", "-lntH"]).stdout.contains("192.168.1.1:5201") && s.gwA.run(["ss", "-lntH"]).stdout.contains("192.168.1.1:5301") }
        // iperf3 on 5201 and the request/response service on 5301 (= 5201 + 100), both through stunnel.
        var f = try measure(client: s.hostA, server: s.hostB, address: "192.168.1.1", udp: false)
        f.rttMs = nil; f.rttMedianMs = nil  // ping does not go through a TCP tunnel
        return f
    }

    /// The anchor for the relay's WebSocket path: the same two NATed sites and relay host, and a
    /// chain of stunnel processes making the same two TLS hops (gateway A's stunnel client to a
    /// stunnel on the relay, which terminates that TLS and opens another to gateway B's stunnel
    /// server, port-forwarded by B's NAT router as a server would be), to host B. TCP only.
    static func stunnelChain(_ lab: Lab) throws -> Figures? {
        guard (try? Command.run(["which", "stunnel4"]))?.succeeded == true else { return nil }
        let s = try SiteToSite(lab, extraHostNumbers: [], relays: 1)
        let relay = s.relayHosts[0], dir = lab.logDirectory.path
        try Command.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                         "-subj", "/CN=relay-bench", "-keyout", dir + "/st.key", "-out", dir + "/st.crt"])
        try s.natB.loadNftables("table ip benchfwd {\n chain pre {\n  type nat hook prerouting priority -100;\n  tcp dport { 7201, 7301 } dnat to 10.20.20.20\n }\n}\n")
        for port in [5201, 5301] {
            let conf: [(LabHost, String, String)] = [
                (s.gwB, "b", "[b]\naccept = 10.20.20.20:\(port + 2000)\nconnect = 192.168.1.20:\(port)\ncert = \(dir)/st.crt\nkey = \(dir)/st.key\nsslVersionMin = TLSv1.3\n"),
                (relay, "r", "[in]\naccept = 100.64.9.9:\(port + 1000)\nconnect = 127.0.0.1:\(port + 3000)\ncert = \(dir)/st.crt\nkey = \(dir)/st.key\nsslVersionMin = TLSv1.3\n"
                    + "[out]\nclient = yes\naccept = 127.0.0.1:\(port + 3000)\nconnect = 100.64.2.2:\(port + 2000)\nsslVersionMin = TLSv1.3\n"),
                (s.gwA, "a", "[a]\nclient = yes\naccept = 192.168.1.1:\(port)\nconnect = 100.64.9.9:\(port + 1000)\nsslVersionMin = TLSv1.3\n"),
            ]
            for (host, name, body) in conf {
                try ("foreground = yes\npid =\n" + body).write(toFile: dir + "/chain-\(name)-\(port).conf", atomically: true, encoding: .utf8)
                try host.spawn(["stunnel4", dir + "/chain-\(name)-\(port).conf"], label: "stunnel-\(name)-\(port)")
            }
        }
        try waitUntil("stunnel chain") { try s.gwA.run(["ss", "-lntH"]).stdout.contains("192.168.1.1:5301") && relay.run(["ss", "-lntH"]).stdout.contains("127.0.0.1:8301") }
        var f = try measure(client: s.hostA, server: s.hostB, address: "192.168.1.1", udp: false)
        f.rttMs = nil; f.rttMedianMs = nil
        return f
    }

    /// Relay through its WebSocket: the two NATed sites with all UDP dropped by their NAT routers,
    /// the gateways on the relay's TLS front door.
    static func webSocketPath(_ lab: Lab) throws -> Figures {
        let s = try SiteToSite(lab, extraHostNumbers: [], relays: 1)
        for nat in [s.natA!, s.natB!] {
            try nat.loadNftables("table inet block {\n chain blockudp {\n  type filter hook forward priority -10; policy accept;\n  meta l4proto udp drop\n }\n}\n")
        }
        try s.start(extraConfig: "[sessions]\nmax = 200000\n", relayExtra: "node_bytes_per_second = 10000000000\nnode_datagrams_per_second = 10000000", frontDoor: true)
        try waitUntil("the gateways reach each other over the relay's WebSocket", timeout: 60) {
            try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
        }
        try profileWholeMachine(s, "websocket")
        return try measure(client: s.hostA, server: s.hostB, address: "240.2.2.20", udp: false)
    }

    /// With RELAY_BENCH_PERF=/path (development): a whole-machine profile (perf record -a -g, 4 s;
    /// every relayd, iperf3, the kernel) during a TCP run from host A to host B, written to
    /// /path-`label`.data, and the connection's MSS and path MTU.
    static func profileWholeMachine(_ s: SiteToSite, _ label: String) throws {
        guard let out = ProcessInfo.processInfo.environment["RELAY_BENCH_PERF"] else { return }
        let p = Process(); p.executableURL = URL(fileURLWithPath: "/usr/bin/perf")
        p.arguments = ["record", "-a", "-g", "-o", out + "-\(label).data", "--", "sleep", "4"]
        let srv = try s.hostB.spawn(["iperf3", "-s", "-p", "5999"], label: "iperf3-perf")
        defer { srv.stop() }
        try waitUntil("iperf3 server") { try s.hostB.run(["ss", "-lntH"]).stdout.contains(":5999 ") }
        try p.run()
        let client = try s.hostA.spawn(["iperf3", "-c", "240.2.2.20", "-p", "5999", "-t", "5"], label: "iperf3-perf-client")
        Thread.sleep(forTimeInterval: 2)
        print(try s.hostA.run(["ss", "-tin", "dst", "240.2.2.20"], check: false).stdout)
        print(try s.hostA.run(["ip", "route", "get", "240.2.2.20"], check: false).stdout)
        Thread.sleep(forTimeInterval: 4)
        client.stop()
        p.waitUntilExit()
        print(client.log().split(separator: "\n").filter { $0.contains("sender") || $0.contains("receiver") }.joined(separator: "\n"))
        print("\(label): relayd pids: relays \(s.relayProcesses.map { String($0.pid) }), A \(s.relaydA.pid), B \(s.relaydB.pid)")
    }

    /// Relay: the real scenario.
    /// `busyPoll`: node.busy_poll (microseconds) on both relayds.
    static func relayPath(_ lab: Lab, busyPoll: Int = 0) throws -> (Figures, SiteToSite) {
        let s = try SiteToSite(lab, extraHostNumbers: [])
        try s.start(extraConfig: "[sessions]\nmax = 200000\nudp_timeout = 600\n", nodeExtra: busyPoll > 0 ? "busy_poll = \(busyPoll)" : (ProcessInfo.processInfo.environment["RELAY_BENCH_NODE"] ?? ""))
        _ = try s.hostA.run(["ping", "-c2", "-W2", "240.2.2.20"], check: false)
        try profileWholeMachine(s, "direct")
        if let out = ProcessInfo.processInfo.environment["RELAY_BENCH_PERF"] {
            // Profile both relayds during a TCP run (perf record -g), for development.
            let pa = Process(); pa.executableURL = URL(fileURLWithPath: "/usr/bin/perf")
            pa.arguments = ["record", "-g", "-o", out + "-A.data", "-p", String(s.relaydA.pid), "--", "sleep", "4"]
            let pb = Process(); pb.executableURL = URL(fileURLWithPath: "/usr/bin/perf")
            pb.arguments = ["record", "-g", "-o", out + "-B.data", "-p", String(s.relaydB.pid), "--", "sleep", "4"]
            let srv = try s.hostB.spawn(["iperf3", "-s", "-p", "5999"], label: "iperf3-perf")
            try waitUntil("iperf3 server") { try s.hostB.run(["ss", "-lntH"]).stdout.contains(":5999 ") }
            try pa.run(); try pb.run()
            print(try s.hostA.run(["iperf3", "-c", "240.2.2.20", "-p", "5999", "-t", "3"], timeout: 20, check: false).stdout)
            srv.stop()
            pa.waitUntilExit(); pb.waitUntilExit()
        }
        return (try measure(client: s.hostA, server: s.hostB, address: "240.2.2.20"), s)
    }

    /// Heap allocations on the packet path: calls to malloc in relayd A (a perf uprobe on libc's
    /// malloc) while it seals an iperf3 TCP stream, against the datagrams it sealed meanwhile.
    /// nil when perf or uprobes are not available.
    static func allocations(_ s: SiteToSite) throws -> (mallocs: Int, datagrams: Int)? {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/perf") else { return nil }
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6"].first { FileManager.default.fileExists(atPath: $0) }
        guard let libc, (try? Command.run(["perf", "probe", "-q", "-x", libc, "relay_malloc=malloc"]))?.succeeded == true else { return nil }
        defer { _ = try? Command.run(["perf", "probe", "-q", "-d", "probe_libc:relay_malloc"]) }
        func sent() throws -> Int {
            let j = try JSONSerialization.jsonObject(with: Data(try s.relayctl(s.gwA, s.socketA, ["peers", "--json"]).stdout.utf8)) as? [String: Any]
            let p = (j?["peers"] as? [[String: Any]])?.first?["runtime"] as? [String: Any]
            return p?["txPackets"] as? Int ?? 0
        }
        let srv = try s.hostB.spawn(["iperf3", "-s", "-p", "5998"], label: "iperf3-alloc")
        defer { srv.stop() }
        try waitUntil("iperf3 server") { try s.hostB.run(["ss", "-lntH"]).stdout.contains(":5998 ") }
        let client = try s.hostA.spawn(["iperf3", "-c", "240.2.2.20", "-p", "5998", "-t", "4"], label: "iperf3-alloc-client")
        defer { client.stop() }
        usleep(700_000)
        let before = try sent()
        let st = try Command.run(["perf", "stat", "-x", ",", "-e", "probe_libc:relay_malloc", "-p", String(s.relaydA.pid), "--", "sleep", "2"], check: false)
        let after = try sent()
        // perf stat -x, prints "count,unit,event,..." on stderr.
        guard let line = st.stderr.split(separator: "\n").first(where: { $0.contains("relay_malloc") }),
              let n = Int(line.split(separator: ",").first ?? "") else { return nil }
        return (n, after - before)
    }

    /// relayd's peak resident memory (VmHWM) after the tunnel has carried `flows` distinct UDP flows.
    static func memory(_ s: SiteToSite, flows: [Int]) throws -> [(Int, Int, Double)] {
        var out: [(Int, Int, Double)] = []
        var sent = 0
        for target in flows {
            let script = """
            import socket, time
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(\(target / 50000 + 1))]
            for i in range(\(sent), \(target)):
                socks[i // 50000].sendto(b'x', ('240.2.2.20', 1024 + i % 50000))
                if i % 500 == 0: time.sleep(0.002)
            """
            _ = try s.hostA.run(["python3", "-c", script], timeout: 900, check: false)
            sent = target
            usleep(500_000)
            let st = try s.relayctl(s.gwA, s.socketA, ["status", "--json"]).stdout
            let active = (try? JSONSerialization.jsonObject(with: Data(st.utf8)) as? [String: Any]).flatMap { ($0["sessions"] as? [String: Any])?["active"] as? Int } ?? -1
            let status = try String(contentsOfFile: "/proc/\(s.relaydA.pid)/status", encoding: .utf8)
            let hwm = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }?.split(separator: " ").dropFirst().first.flatMap { Double($0) } ?? 0
            out.append((target, active, hwm / 1024))
        }
        return out
    }

    /// IPv6 -> IPv4 through Relay: A's IPv6-only host to B's IPv4 host by its RFC 6052 name,
    /// translated by relayd at A and sealed (TCP, ping, request/response; no iperf3 UDP).
    static func relayTranslation(_ lab: Lab) throws -> Figures {
        let s = try SiteToSite(lab, extraHostNumbers: [], ipv6: true)
        try s.start()
        let dst = "64:ff9b:2222::192.168.1.20"
        _ = try s.host6A!.run(["ping", "-6", "-c2", "-W2", dst], check: false)
        if ProcessInfo.processInfo.environment["RELAY_BENCH_VERBOSE"] == "1" {
            for (h, a) in [(s.hostA, "240.2.2.20"), (s.host6A!, dst), (s.hostA, "240.2.2.20"), (s.host6A!, dst)] {
                print(a, String(try h.run(["ping", "-c", String(pings), "-i", "0.01", "-q", a], check: false).stdout.split(separator: "\n").last ?? ""))
            }
        }
        return try measure(client: s.host6A!, server: s.hostB, address: dst, udp: false)
    }

    /// The tayga anchor, same topology: tayga on gateway A translates A's IPv6-only host to IPv4,
    /// plain routing over the underlay, the helper's prefix NAT at B. No encryption. (tayga refuses
    /// class E addresses, so here A's host is 198.51.100.30 and B's virtual prefix 203.0.113.0/24:
    /// and it refuses 64:ff9b::/32 prefixes too: B's host is 2001:db8:2222::203.0.113.20.)
    static func taygaTranslation(_ lab: Lab) throws -> Figures? {
        guard (try? Command.run(["which", "tayga"]))?.succeeded == true else { return nil }
        let s = try SiteToSite(lab, extraHostNumbers: [], ipv6: true)
        func P(_ x: String) -> IPPrefix { IPPrefix(x)! }
        let hb = try HelperFixture.start(in: s.gwB, policy: HelperFixture.policy(allowed: ["192.168.0.0/16", "203.0.113.0/24", "198.51.100.0/24"], devicePrefix: "wan"), name: "kh")
        try HelperClient(path: hb.socketPath).apply(NATState(dnat: [PrefixMapping(P("203.0.113.0/24"), P("192.168.1.0/24"))],
                                                            snat: [PrefixMapping(P("192.168.1.0/24"), P("203.0.113.0/24"))], remote: [P("198.51.100.0/24")]))
        let dir = lab.logDirectory.appendingPathComponent("tayga").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try """
        tun-device nat64
        ipv4-addr 198.51.100.1
        prefix 2001:db8:2222::/96
        map 198.51.100.30 fd00:cafe::30
        data-dir \(dir)
        """.write(toFile: dir + "/tayga.conf", atomically: true, encoding: .utf8)
        try s.gwA.run(["tayga", "--mktun", "-c", dir + "/tayga.conf"])
        try s.gwA.ip("link", "set", "nat64", "up")
        try s.gwA.spawn(["tayga", "-d", "-c", dir + "/tayga.conf"], label: "tayga")
        try s.gwA.route("2001:db8:2222::/96", dev: "nat64")
        try s.gwA.route("198.51.100.30/32", dev: "nat64")
        try s.gwA.route("203.0.113.0/24", via: "10.10.10.1"); try s.gwB.route("198.51.100.0/24", via: "10.20.20.1")
        try s.underlay.route("198.51.100.0/24", via: "10.10.10.10"); try s.underlay.route("203.0.113.0/24", via: "10.20.20.20")
        let dst = "2001:db8:2222::203.0.113.20"
        try waitUntil("tayga translates", timeout: 10) { try s.host6A!.run(["ping", "-6", "-c1", "-W1", dst], check: false).succeeded }
        return try measure(client: s.host6A!, server: s.hostB, address: dst, udp: false)
    }
}

import Foundation
import Testing
import RelayTestHarness
#if canImport(Glibc)
import Glibc
#endif

/// The lab itself, proven on the kernel: it must carry traffic and leave nothing behind.
@Suite("kernel: network-namespace harness", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct HarnessTests {
    /// a (10.0.1.2) — r — b (10.0.2.2), r forwarding.
    static func twoHostsAndRouter(_ lab: Lab) throws -> (LabHost, LabHost, LabHost) {
        let a = try lab.host("a"), r = try lab.host("r"), b = try lab.host("b")
        try lab.link(a, "eth0", ["10.0.1.2/24", "fd00:1::2/64"], r, "eth0", ["10.0.1.1/24", "fd00:1::1/64"])
        try lab.link(b, "eth0", ["10.0.2.2/24", "fd00:2::2/64"], r, "eth1", ["10.0.2.1/24", "fd00:2::1/64"])
        try r.enableForwarding()
        try a.route("default", via: "10.0.1.1")
        try b.route("default", via: "10.0.2.1")
        try a.route("default", via: "fd00:1::1")
        try b.route("default", via: "fd00:2::1")
        return (a, r, b)
    }

    @Test("two hosts behind a router exchange TCP and UDP, v4 and v6")
    func tcpAndUDPAcrossRouter() throws {
        try KernelGate.check()
        try Lab.with("traffic") { lab in
            let (a, _, b) = try Self.twoHostsAndRouter(lab)
            let tcp = try b.spawn(["socat", "TCP-LISTEN:7000,fork,reuseaddr", "EXEC:cat"], label: "tcp-echo")
            let udp = try b.spawnUDPResponder(port: 7001, echo: true, label: "udp-echo")
            let tcp6 = try b.spawn(["socat", "TCP6-LISTEN:7002,fork,reuseaddr", "EXEC:cat"], label: "tcp6-echo")
            try waitUntil("echo servers listening") {
                let out = try b.run(["ss", "-lntuH"]).stdout
                return out.contains(":7000") && out.contains(":7001") && out.contains(":7002")
            }
            let marker = "hello-\(UUID().uuidString)"
            let t = try a.run(["socat", "-T", "3", "-", "TCP:10.0.2.2:7000"], stdin: marker + "\n")
            #expect(t.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == marker)
            let u = try a.run(["socat", "-T", "2", "-", "UDP:10.0.2.2:7001"], stdin: marker + "\n")
            #expect(u.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == marker)
            let t6 = try a.run(["socat", "-T", "3", "-", "TCP6:[fd00:2::2]:7002"], stdin: marker + "\n")
            #expect(t6.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == marker)
            #expect(tcp.isRunning && udp.isRunning && tcp6.isRunning)
        }
    }

    @Test("a NAT router masquerades: the server sees the router's address")
    func natRouterMasquerades() throws {
        try KernelGate.check()
        try Lab.with("nat") { lab in
            let (a, r, b) = try Self.twoHostsAndRouter(lab)
            try r.natRouter(outInterface: "eth1", randomFully: true)
            try b.spawn(["socat", "-u", "UDP-RECVFROM:7003,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"], label: "peer")
            try b.spawnUDPResponder(port: 7004, label: "whoami")
            try waitUntil("whoami listening") { try b.run(["ss", "-lnuH"]).stdout.contains(":7004") }
            let seen = try a.run(["socat", "-T", "2", "-", "UDP:10.0.2.2:7004"], stdin: "x\n").stdout
            #expect(seen.trimmingCharacters(in: .whitespacesAndNewlines) == "10.0.2.1")
            // And the conntrack table on the router shows the translation.
            let ct = try r.run(["conntrack", "-L", "-p", "udp"], check: false).stdout
            #expect(ct.contains("src=10.0.1.2") && ct.contains("dst=10.0.2.1"))
        }
    }

    @Test("a failing test leaves no namespace and no process behind")
    func teardownAfterFailure() throws {
        try KernelGate.check()
        struct Deliberate: Error {}
        var namespaces: [String] = []
        var pids: [Int32] = []
        #expect(throws: Deliberate.self) {
            try Lab.with("fail") { lab in
                let (a, _, b) = try Self.twoHostsAndRouter(lab)
                let p1 = try a.spawn(["sleep", "300"], label: "sleeper")
                let p2 = try b.spawn(["sh", "-c", "sleep 300 & sleep 300; wait"], label: "forker")
                pids = [p1.pid, p2.pid]
                namespaces = lab.hosts.values.map(\.namespace)
                try waitUntil("child sleeps") { try b.run(["ip", "netns", "pids", b.namespace], check: false).stdout.isEmpty == false }
                throw Deliberate()
            }
        }
        #expect(namespaces.count == 3)
        let left = Set(Lab.listNamespaces())
        for ns in namespaces { #expect(!left.contains(ns), "namespace \(ns) was left behind") }
        for pid in pids { #expect(kill(pid, 0) != 0 && errno == ESRCH, "pid \(pid) still exists") }
        // No veth leaked into the root namespace (links are created inside the namespaces).
        let rootLinks = try Command.run(["ip", "-o", "link", "show", "type", "veth"]).stdout
        for ns in namespaces { #expect(!rootLinks.contains(ns)) }
    }

    @Test("a crashed run's namespaces and processes are removed by the next run, others are kept")
    func staleRunRemoved() throws {
        try KernelGate.check()
        // A real crash: relay-lab hold makes a lab with a process in it, then dies of SIGKILL.
        let tool = try Binaries.path("relay-lab")
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("hold-\(UUID().uuidString)").path
        defer { unlink(out) }
        let holder = try Spawn.start([tool, "hold"], stdoutPath: out, stderrPath: out)
        var prefix = ""
        try waitUntil("relay-lab hold to print its prefix") {
            prefix = ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            return prefix.hasSuffix("-")
        }
        #expect(prefix.hasPrefix(Lab.namespaceMarker))
        let staleNamespaces = Lab.listNamespaces().filter { $0.hasPrefix(prefix) }
        #expect(staleNamespaces.count == 1)
        let innerPids = try Command.run(["ip", "netns", "pids", staleNamespaces[0]]).stdout
            .split(whereSeparator: \.isNewline).compactMap { Int32($0) }
        #expect(!innerPids.isEmpty)
        kill(holder, SIGKILL)
        _ = Spawn.reap(holder, block: true)

        // A namespace the harness does not own must survive.
        let foreign = "relay-foreign-\(getpid())"
        try Command.run(["ip", "netns", "add", foreign])
        defer { _ = try? Command.run(["ip", "netns", "del", foreign], check: false) }

        try Lab.with("next") { _ in }  // a new run cleans up
        let after = Set(Lab.listNamespaces())
        #expect(!after.contains(staleNamespaces[0]))
        #expect(after.contains(foreign))
        try waitUntil("stale processes gone") { innerPids.allSatisfy { kill($0, 0) != 0 } }
    }

    @Test("commands run as a given uid inside a host")
    func runAsUid() throws {
        try KernelGate.check()
        try Lab.with("uid") { lab in
            let h = try lab.host("h")
            #expect(try h.run(["id", "-u"], as: 65534).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "65534")
            #expect(try h.run(["id", "-u"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        }
    }
}

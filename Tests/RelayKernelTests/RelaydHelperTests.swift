import Foundation
import Testing
import RelayControlAPI
import RelayCore
import RelayTestHarness

/// relayd (unprivileged, uid 65534) driving the real relay-helper inside a namespace.
@Suite("kernel: relayd drives relay-helper", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct RelaydHelperTests {
    static let relaydUID: UInt32 = 65534
    static let keyB = "lGkyXqDvFAp8pZWVpYgLybW0x38CWs1wLZEY0c4kZwQ="
    static let keyC = "7tYQsqPB7sXwkHuOjyqXgiLDTXSbmlBLQ5naBkraWzY="

    static func config(withC: Bool) -> String {
        var s = """
        [node]
        name = "gw-a"
        [site]
        name = "A"
        lan4 = "192.168.1.0/24"
        virtual4 = "240.1.1.0/24"
        [[peer]]
        name = "gw-b"
        public_key = "\(keyB)"
        [[peer.site]]
        name = "B"
        lan4 = "192.168.1.0/24"
        virtual4 = "240.2.2.0/24"
        virtual6 = "64:ff9b:2222::/96"

        """
        if withC { s += "[[peer]]\nname = \"gw-c\"\npublic_key = \"\(keyC)\"\n[[peer.site]]\nname = \"C\"\nvirtual4 = \"240.3.3.0/24\"\n" }
        return s
    }

    @Test("relayd applies its config through the helper (nft -j, ip -j), re-applies after the helper restarts, reloads as a diff, and shows the kernel's truth")
    func reconcile() throws {
        try KernelGate.check()
        try Lab.with("relayd") { lab in
            let gw = try lab.host("gw")
            let helper = try HelperFixture.start(in: gw, policy: HelperFixture.policy(clients: [0, RelaydHelperTests.relaydUID]))
            chmod(helper.socketPath, 0o666)
            let dir = lab.logDirectory.appendingPathComponent("relayd").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            chown(dir, RelaydHelperTests.relaydUID, RelaydHelperTests.relaydUID)
            let cfg = dir + "/relayd.toml", sock = dir + "/relayd.sock"
            try RelaydHelperTests.config(withC: false).write(toFile: cfg, atomically: true, encoding: .utf8)
            let relayd = try gw.spawn([try Binaries.path("relayd"), "--config", cfg, "--state-dir", dir + "/state", "--socket", sock,
                                       "--helper-socket", helper.socketPath, "--log-level", "debug"], label: "relayd", as: RelaydHelperTests.relaydUID)
            func ctl(_ args: [String]) throws -> CommandResult { try gw.run([try Binaries.path("relayctl")] + args + ["--socket", sock], check: false) }
            func status() throws -> StatusResponse { try ControlJSON.decoder().decode(StatusResponse.self, from: Data(try ctl(["status", "--json"]).stdout.utf8)) }
            try waitUntil("relayd applied", timeout: 15) {
                if !relayd.isRunning { throw HarnessError("relayd exited: \(relayd.log())") }
                return FileManager.default.fileExists(atPath: sock) && (try? status().helper.lastAppliedAt) != nil
            }
            // The kernel holds what the config implies, checked with nft and ip.
            let table = try gw.run(["nft", "list", "table", "inet", "relay"]).stdout
            #expect(table.contains("240.1.1.0/24 : 192.168.1.0/24") && table.contains("192.168.1.0/24 : 240.1.1.0/24"))
            #expect(table.contains("elements = { 240.2.2.0/24 }"))
            #expect(try gw.ipJSON("route", "show", "proto", "196").map { $0["dst"] as? String } == ["240.2.2.0/24"])
            #expect(try gw.ipJSON("-6", "route", "show", "proto", "196").map { $0["dst"] as? String } == ["64:ff9b:2222::/96"])
            #expect(try gw.ipJSON("-d", "link", "show", "relay0").first?["mtu"] as? Int == 1408)
            // relayctl nat/routes show the helper's report.
            let nat = try ctl(["nat", "--json"])
            #expect(nat.status == 0 && nat.stdout.contains("\"snat4\""), "\(nat.stderr)")
            let routes = try ctl(["routes"])
            #expect(routes.stdout.contains("240.2.2.0/24") && routes.stdout.contains("relay0"))
            let handles = try gw.run(["nft", "-a", "list", "chain", "inet", "relay", "postrouting"]).stdout

            // Reload with a new peer: its prefix is added, nothing else is rewritten.
            try RelaydHelperTests.config(withC: true).write(toFile: cfg, atomically: true, encoding: .utf8)
            let reload = try ctl(["reload", "--json"])
            #expect(reload.status == 0 && reload.stdout.contains("peer gw-c added"), "\(reload.stdout) \(reload.stderr)")
            #expect(try gw.run(["nft", "list", "set", "inet", "relay", "remote4"]).stdout.contains("240.3.3.0/24"))
            #expect(try gw.ipJSON("route", "show", "proto", "196").compactMap { $0["dst"] as? String }.sorted() == ["240.2.2.0/24", "240.3.3.0/24"])
            #expect(try gw.run(["nft", "-a", "list", "chain", "inet", "relay", "postrouting"]).stdout == handles, "the NAT rule kept its handle")

            // The helper dies and the table is removed behind everyone's back; a new helper comes up
            // and relayd re-applies on its own.
            helper.process.signal(SIGKILL)
            _ = try helper.process.waitForExit()
            try waitUntil("relayd notices", timeout: 10) { try status().helper.connected == false }
            try gw.run(["nft", "delete", "table", "inet", "relay"])
            // Same socket path: relayd is configured with it.
            let h2 = try HelperFixture.start(in: gw, policy: HelperFixture.policy(clients: [0, RelaydHelperTests.relaydUID]), name: "helper")
            chmod(h2.socketPath, 0o666)
            try waitUntil("relayd re-applied", timeout: 20) {
                (try? gw.run(["nft", "list", "set", "inet", "relay", "remote4"]).stdout.contains("240.3.3.0/24")) == true
            }
            let s = try status()
            #expect(s.helper.connected && s.helper.connects >= 2)
            #expect(relayd.isRunning)
            // relayd never ran with privileges.
            let uid = try gw.run(["ps", "-o", "uid=", "-p", String(relayd.pid)]).stdout.trimmingCharacters(in: .whitespaces)
            #expect(uid.trimmingCharacters(in: .whitespacesAndNewlines) == String(RelaydHelperTests.relaydUID))
            let caps = try String(contentsOfFile: "/proc/\(relayd.pid)/status", encoding: .utf8).split(separator: "\n").first { $0.hasPrefix("CapEff:") }
            #expect(caps?.hasSuffix("0000000000000000") == true, "\(caps ?? "")")
        }
    }
}

import Foundation
import Testing
import RelayControlAPI
import RelayTestHarness

/// NAT traversal through real NAT routers in namespaces: two gateways behind routers of every
/// RFC 4787 kind (`LabNAT`, the rulesets the reflection tests classify with turnutils_natdiscovery),
/// a relay on the underlay, and a direct path between the routers that the NATs may or may not let
/// through. "Direct" is proven outside the nodes: the relay forwards nothing for the pair while
/// traffic flows, and the NAT router's conntrack holds the flow to the other side.
@Suite("kernel: hole punching through NAT routers", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct HolePunchingTests {
    /// One matrix cell, asserted: connectivity, then the outcome theory predicts, proven outside the
    /// nodes (the relay's counter while pings flow; the NAT routers' conntrack).
    static func cell(_ p: PunchLab, _ a: LabNAT, _ b: LabNAT) throws -> String {
        let c = try p.cell(a, b)
        let s = p.s
        let (ok, relayed) = try p.relayedDuringPings()
        #expect(ok, "\(a)/\(b): packets lost")
        let pa = try p.path(a: true), pb = try p.path(a: false)
        #expect(c.direct == c.expectDirect, "\(a)/\(b): \(c.direct ? "direct" : "relayed"), theory says \(c.expectDirect ? "direct" : "relayed") (A: \(pa), B: \(pb))")
        if c.expectDirect {
            #expect(relayed <= 2, "\(a)/\(b): the relay forwarded \(relayed) datagrams while the path should be direct (A: \(pa), B: \(pb))")
            #expect(pa.hasPrefix("direct") && pb.hasPrefix("direct"), "\(a)/\(b): A \(pa), B \(pb)")
            // conntrack on a NAT router holds the flow with the other side's public address.
            let bPublic = b == .none ? "10.20.20.20" : "100.64.2.2", aPublic = a == .none ? "10.10.10.10" : "100.64.1.2"
            if a != .none { #expect(!(try p.conntrack(s.natA, from: "10.10.10.10", to: bPublic)).isEmpty, "\(a)/\(b): no flow A -> \(bPublic) in natA's conntrack") }
            if b != .none { #expect(!(try p.conntrack(s.natB, from: "10.20.20.20", to: aPublic)).isEmpty, "\(a)/\(b): no flow B -> \(aPublic) in natB's conntrack") }
        } else {
            #expect(relayed >= 20, "\(a)/\(b): the relay forwarded only \(relayed) datagrams for 20 pings")
            #expect(pa.hasPrefix("relay") && pb.hasPrefix("relay"), "\(a)/\(b): A \(pa), B \(pb)")
        }
        return "\(a.rawValue) x \(b.rawValue): \(c.direct ? "direct" : "relayed") (expected \(c.expectDirect ? "direct" : "relayed")), first packet \(String(format: "%.1f", c.firstPacket)) s, settled after \(String(format: "%.1f", c.settled)) s"
    }

    static func pathsView(_ s: SiteToSite, a: Bool) throws -> PathsView? {
        let out = try s.relayctl(a ? s.gwA : s.gwB, a ? s.socketA : s.socketB, ["paths", a ? "gw-b" : "gw-a", "--json"]).stdout
        return try? ControlJSON.decoder().decode(PathsView.self, from: Data(out.utf8))
    }

    @Test("the NAT matrix: every unordered pair of router kinds (15) connects, directly exactly where RFC 4787 theory allows (relay counters and conntrack as proof)")
    func matrix() throws {
        try KernelGate.check()
        try Lab.with("punch") { lab in
            let p = try PunchLab(lab)
            let kinds = LabNAT.allCases
            var table: [String] = []
            for (i, a) in kinds.enumerated() {
                for b in kinds[i...] { table.append(try Self.cell(p, a, b)) }
            }
            print("hole punching matrix:\n" + table.joined(separator: "\n"))
        }
    }

    @Test("a direct path that breaks mid-transfer: traffic falls back to the relay within trust_seconds and the transfer completes; when the path works again, the gateways upgrade again")
    func fallBackAndUpgrade() throws {
        try KernelGate.check()
        try Lab.with("punchfb") { lab in
            let p = try PunchLab(lab), s = p.s
            try p.setNATs(.masquerade, .masquerade)
            try waitUntil("A reaches B", timeout: 25) { try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded }
            try waitUntil("direct", timeout: 12) { try p.path(a: true).hasPrefix("direct") && p.path(a: false).hasPrefix("direct") }
            try s.hostB.spawn(["iperf3", "-s", "-1"], label: "iperf3-server")
            try waitUntil("iperf3 server") { try s.hostB.run(["ss", "-lntH"]).stdout.contains(":5201") }
            let transfer = try s.hostA.spawn(["iperf3", "-c", "240.2.2.20", "-t", "12", "-b", "20M", "--json"], label: "iperf3-client")
            Thread.sleep(forTimeInterval: 2)
            // The direct path dies (the underlay drops everything between the two NAT routers).
            try s.underlay.loadNftables("""
            table inet relaylab_cut {
              chain forward {
                type filter hook forward priority 0; policy accept;
                iifname "a0" oifname "b0" drop
                iifname "b0" oifname "a0" drop
              }
            }
            """)
            let cut = Date()
            try waitUntil("both back on the relay", timeout: 8) { try p.path(a: true).hasPrefix("relay") && p.path(a: false).hasPrefix("relay") }
            let took = Date().timeIntervalSince(cut)
            print("hole punching: back on the relay \(String(format: "%.1f", took)) s after the direct path was cut")
            let v = try #require(try Self.pathsView(s, a: true))
            #expect(v.lastChange?.contains("unanswered") == true, "\(String(describing: v))")
            #expect(try transfer.waitForExit(timeout: 30) == 0, "the transfer did not complete: \(transfer.log().suffix(600))")
            let report = (try? JSONSerialization.jsonObject(with: Data(transfer.log().utf8)) as? [String: Any]).flatMap { $0["end"] as? [String: Any] }
            let received = ((report?["sum_received"] as? [String: Any])?["bytes"] as? Double) ?? 0
            #expect(received > 10_000_000, "the transfer moved only \(received) bytes")
            // The path works again: the next attempt finds it.
            try s.underlay.run(["nft", "delete", "table", "inet", "relaylab_cut"])
            try waitUntil("direct again", timeout: 15) { try p.path(a: true).hasPrefix("direct") && p.path(a: false).hasPrefix("direct") }
            let (ok, relayed) = try p.relayedDuringPings()
            #expect(ok && relayed <= 2, "after the upgrade: ok \(ok), relayed \(relayed)")
            // relayctl paths, as people read it.
            let text = try s.relayctl(s.gwA, s.socketA, ["paths", "gw-b"]).stdout
            #expect(text.contains("peer gw-b: direct 100.64.2.2:51820") && text.contains("CANDIDATE"), "\(text)")
            let peers = try s.relayctl(s.gwA, s.socketA, ["peers"]).stdout
            #expect(peers.contains("proven"), "\(peers)")
        }
    }

    @Test("restart a gateway that was direct: its path cache is read back and its first handshake goes straight to the cached path (the relay forwards nothing)")
    func restartUsesCache() throws {
        try KernelGate.check()
        try Lab.with("punchcache") { lab in
            let p = try PunchLab(lab), s = p.s
            try p.setNATs(.masquerade, .masquerade)
            try waitUntil("A reaches B", timeout: 25) { try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded }
            try waitUntil("direct", timeout: 12) { try p.path(a: true).hasPrefix("direct") && p.path(a: false).hasPrefix("direct") }
            try waitUntil("the path cache written", timeout: 5) {
                ((try? String(contentsOfFile: s.dir("A") + "/state/paths.json", encoding: .utf8)) ?? "").contains("100.64.2.2")
            }
            s.relaydA.signal(SIGTERM)
            _ = try s.relaydA.waitForExit(timeout: 10)
            let before = try p.forwarded()
            try? FileManager.default.removeItem(atPath: s.socketA)
            try s.restartRelaydA()
            let restarted = Date()
            try waitUntil("relayd A back", timeout: 20) {
                guard FileManager.default.fileExists(atPath: s.socketA) else { return false }
                return try s.relayctl(s.gwA, s.socketA, ["status"]).succeeded
            }
            try waitUntil("A reaches B again", timeout: 10) { try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded }
            try waitUntil("A direct again", timeout: 5) { try p.path(a: true).hasPrefix("direct") }
            print("hole punching: direct again \(String(format: "%.1f", Date().timeIntervalSince(restarted))) s after the restart (path cache)")
            let v = try #require(try Self.pathsView(s, a: true))
            #expect(v.cached?.first == "100.64.2.2:51820", "\(String(describing: v.cached))")
            let (ok, relayed) = try p.relayedDuringPings()
            #expect(ok, "packets lost after the restart")
            let across = try p.forwarded() - before
            #expect(across <= 2, "the relay forwarded \(across) datagrams across the restart (relayed during the pings: \(relayed))")
        }
    }

    @Test("same LAN and IPv6: behind endpoint-dependent NATs (no way through them), two gateways that share a LAN go direct over it by their local candidates; the LAN removed, they fall back to the relay; routed IPv6 added, they go direct over IPv6")
    func sameLANThenIPv6() throws {
        try KernelGate.check()
        try Lab.with("punchlan") { lab in
            let p = try PunchLab(lab), s = p.s
            try p.setNATs(.fullyRandom, .fullyRandom)
            try waitUntil("A reaches B", timeout: 25) { try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded }
            try waitUntil("the first attempts end", timeout: 12) { try p.pathsFigure(a: true, "failures") >= 1 && p.pathsFigure(a: false, "failures") >= 1 }
            #expect(try p.path(a: true).hasPrefix("relay"))
            // A LAN between the two gateways (not a site prefix): host candidates.
            try lab.link(s.gwA, "lan9", ["10.99.0.1/24"], s.gwB, "lan9", ["10.99.0.2/24"])
            try waitUntil("direct over the shared LAN", timeout: 12) {
                try p.path(a: true) == "direct 10.99.0.2:51820" && p.path(a: false) == "direct 10.99.0.1:51820"
            }
            var (ok, relayed) = try p.relayedDuringPings()
            #expect(ok && relayed <= 2, "LAN: ok \(ok), relayed \(relayed)")
            // The LAN goes: back to the relay.
            try s.gwA.ip("link", "del", "lan9")
            try waitUntil("back on the relay", timeout: 10) { try p.path(a: true).hasPrefix("relay") && p.path(a: false).hasPrefix("relay") }
            // Routed IPv6 between the sites' gateways (no NAT66): IPv4 stays blocked by the NATs.
            for (gw, nat, side, up) in [(s.gwA, s.natA!, "1", "a0"), (s.gwB, s.natB!, "2", "b0")] {
                let letter = side == "1" ? "a" : "b"
                try gw.addAddress("2001:db8:\(side)::20/64", dev: "wan0")
                try nat.addAddress("2001:db8:\(side)::1/64", dev: "lan0")
                try nat.addAddress("2001:db8:\(letter)::2/64", dev: "wan0")
                try s.underlay.addAddress("2001:db8:\(letter)::1/64", dev: up)
                try gw.route("default", via: "2001:db8:\(side)::1")
                try nat.route("default", via: "2001:db8:\(letter)::1")
                try s.underlay.route("2001:db8:\(side)::/64", via: "2001:db8:\(letter)::2")
            }
            #expect(try s.gwA.run(["ping", "-6", "-c1", "-W2", "2001:db8:2::20"], check: false).succeeded, "IPv6 between the gateways")
            try waitUntil("direct over IPv6", timeout: 15) {
                try p.path(a: true) == "direct [2001:db8:2::20]:51820" && p.path(a: false) == "direct [2001:db8:1::20]:51820"
            }
            (ok, relayed) = try p.relayedDuringPings()
            #expect(ok && relayed <= 2, "IPv6: ok \(ok), relayed \(relayed)")
        }
    }

    @Test("migration: gateway A's address changes mid-transfer (its NAT maps it anew); B follows it on the direct path and the transfer completes")
    func migration() throws {
        try KernelGate.check()
        try Lab.with("punchmig") { lab in
            let p = try PunchLab(lab), s = p.s
            try p.setNATs(.masquerade, .fullCone)
            try waitUntil("A reaches B", timeout: 25) { try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded }
            try waitUntil("direct", timeout: 12) { try p.path(a: true).hasPrefix("direct") && p.path(a: false).hasPrefix("direct") }
            let before = try p.path(a: false)
            try s.hostB.spawn(["iperf3", "-s", "-1"], label: "iperf3-server")
            try waitUntil("iperf3 server") { try s.hostB.run(["ss", "-lntH"]).stdout.contains(":5201") }
            let transfer = try s.hostA.spawn(["iperf3", "-c", "240.2.2.20", "-t", "8", "-b", "20M", "--json"], label: "iperf3-client")
            Thread.sleep(forTimeInterval: 2)
            try s.gwA.sysctl("net.ipv4.conf.wan0.promote_secondaries", "1")
            try s.gwA.addAddress("10.10.10.11/24", dev: "wan0")
            try s.gwA.ip("addr", "del", "10.10.10.10/24", "dev", "wan0")
            try s.gwA.ip("route", "replace", "default", "via", "10.10.10.1")
            let moved = Date()
            var after = ""
            try waitUntil("B follows A to its new mapping", timeout: 10) {
                after = try p.path(a: false)
                return after.hasPrefix("direct") && after != before
            }
            print("hole punching: B on A's new mapping \(String(format: "%.1f", Date().timeIntervalSince(moved))) s after A's address changed (\(before) -> \(after))")
            #expect(try transfer.waitForExit(timeout: 30) == 0, "the transfer did not complete: \(transfer.log().suffix(600))")
            #expect(try p.path(a: true).hasPrefix("direct"))
            let (ok, relayed) = try p.relayedDuringPings()
            #expect(ok && relayed <= 2, "after the move: ok \(ok), relayed \(relayed)")
        }
    }

    static let replayer = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Support/replay_udp.py").standardized.path

    @Test("a third party that captured the probes and their answers between two direct gateways replays them from its own address: all refused by the session's replay window (counted), the route does not move, nothing is answered or learned")
    func replayedProbes() throws {
        try KernelGate.check()
        try Lab.with("punchreplay") { lab in
            let p = try PunchLab(lab), s = p.s
            let mallory = try lab.host("mallory")
            try lab.link(mallory, "eth0", ["100.64.7.7/24"], s.underlay, "m0", ["100.64.7.1/24"])
            try mallory.route("default", via: "100.64.7.1")
            // A behind a full cone: anything sent to its public port reaches it.
            try p.setNATs(.fullCone, .masquerade)
            try waitUntil("A reaches B", timeout: 25) { try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded }
            try waitUntil("direct", timeout: 12) { try p.path(a: true).hasPrefix("direct") && p.path(a: false).hasPrefix("direct") }
            // Probes (41-byte messages) and answers (60) from B to A, as the underlay sees them.
            let pcap = lab.logDirectory.appendingPathComponent("probes.pcap").path
            let dump = try s.underlay.spawn(["tcpdump", "-i", "a0", "-U", "-n", "-w", pcap, "udp and dst host 100.64.1.2 and (udp[4:2] == 49 or udp[4:2] == 68)"], label: "tcpdump")
            Thread.sleep(forTimeInterval: 3.5)
            dump.signal(SIGINT)
            _ = try? dump.waitForExit(timeout: 5)
            func counters() throws -> TunnelCounters {
                let out = try s.relayctl(s.gwA, s.socketA, ["status", "--json"]).stdout
                return try #require(try ControlJSON.decoder().decode(StatusResponse.self, from: Data(out.utf8)).tunnel)
            }
            let before = try counters(), pathBefore = try p.path(a: true)
            let viewBefore = try #require(try Self.pathsView(s, a: true))
            let sent = Int(try mallory.run(["/usr/bin/python3", Self.replayer, pcap, "100.64.1.2", "51820"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            #expect(sent >= 3, "captured \(sent) probes and answers")
            try waitUntil("every replay counted", timeout: 5) { try counters().authFailed - before.authFailed >= sent }
            let after = try counters()
            #expect(after.authFailed - before.authFailed == sent, "authFailed +\(after.authFailed - before.authFailed) for \(sent) replays")
            #expect(try p.path(a: true) == pathBefore)
            let view = try #require(try Self.pathsView(s, a: true))
            #expect(!view.peerReflexive.contains { $0.hasPrefix("100.64.7.7") } && view.unmatchedAcks == viewBefore.unmatchedAcks,
                    "\(view.peerReflexive), unmatched answers \(viewBefore.unmatchedAcks) -> \(view.unmatchedAcks)")
            #expect(!(try p.conntrack(s.natA, from: "10.10.10.10", to: "100.64.7.7")).contains("ASSURED"), "A answered the third party")
        }
    }
}

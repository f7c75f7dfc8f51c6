import Foundation
import Testing
import RelayControlAPI
import RelayTestHarness

/// Two sites whose gateways sit behind masquerading NAT routers with no path between them at all:
/// only a relay on the underlay connects them.
@Suite("kernel: sites joined through a relay", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct RelayedSitesTests {
    @Test("both gateways behind NATs, no endpoints, direct UDP dropped: ping, TCP and UDP both ways through the relay with the usual addresses; the relay forwards and never sees the plaintext marker; a stopping gateway leaves at once")
    func throughRelay() throws {
        try KernelGate.check()
        try Lab.with("relay") { lab in
            let s = try SiteToSite(lab, relays: 1)
            try s.start()
            let relay = s.relayHosts[0]
            try SiteToSite.startWhoami(s.hostB)
            try SiteToSite.startWhoami(s.hostA)
            let pcap = lab.logDirectory.appendingPathComponent("relay.pcap").path
            let dump = try relay.spawn(["tcpdump", "-i", "eth0", "-U", "-n", "-w", pcap], label: "tcpdump")
            try waitUntil("the gateways reach each other through the relay", timeout: 30) {
                try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
            }
            let ping = try s.hostA.run(["ping", "-c3", "-i0.2", "-W2", "240.2.2.20"], check: false)
            #expect(ping.succeeded, "ping A -> 240.2.2.20: \(ping.stdout)")
            for (src, dst) in [(20, 20), (21, 77)] {
                let tcp = try s.hostA.run(["socat", "-T", "3", "-", "TCP:240.2.2.\(dst):9001,bind=192.168.1.\(src)"], stdin: "").stdout
                #expect(tcp.trimmingCharacters(in: .whitespacesAndNewlines) == "240.1.1.\(src) 192.168.1.\(dst)", "TCP .\(src) -> 240.2.2.\(dst)")
            }
            let udp = try s.hostA.run(["socat", "-T", "2", "-", "UDP:240.2.2.20:9000"], stdin: "x\n").stdout
            #expect(udp.trimmingCharacters(in: .whitespacesAndNewlines) == "240.1.1.20")
            #expect(try s.hostB.run(["ping", "-c2", "-i0.2", "-W2", "240.1.1.20"], check: false).succeeded)
            let back = try s.hostB.run(["socat", "-T", "3", "-", "TCP:240.1.1.20:9001"], stdin: "").stdout
            #expect(back.trimmingCharacters(in: .whitespacesAndNewlines) == "240.2.2.20 192.168.1.20")

            // A marker crosses inside the tunnel and through the relay: never in clear on its link.
            let (marker, raw) = try s.sendMarker(stopping: dump, pcap: pcap)
            #expect(raw.count > 1000, "the capture saw the relayed traffic")
            #expect(raw.range(of: Data(marker.utf8)) == nil, "the marker appeared in clear on the relay's link")
            // Only the relay's port carries anything (besides link noise).
            let other = try relay.run(["tcpdump", "-n", "-r", pcap, "ip and not (udp and port 51821)"], check: false)
            #expect(other.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "non-relay packets at the relay:\n\(other.stdout.prefix(800))")

            // The relay's view: both nodes registered, datagrams forwarded; each gateway's view: the path.
            let st = try ControlJSON.decoder().decode(RelayStatusResponse.self, from: Data(s.relayctl(relay, s.relaySocket(0), ["relay", "status", "--json"]).stdout.utf8))
            #expect(st.relay.nodes == 2 && Set(st.nodes.map(\.publicKey)) == [s.publicKeyA, s.publicKeyB], "\(st)")
            #expect(st.relay.counters.forwarded > 30, "\(st.relay.counters)")
            let peers = try ControlJSON.decoder().decode(PeersResponse.self, from: Data(s.relayctl(s.gwA, s.socketA, ["peers", "--json"]).stdout.utf8))
            #expect(peers.peers.first?.runtime?.path == "relay \(SiteToSite.relayAddresses[0]):51821", "\(peers)")
            let links = try ControlJSON.decoder().decode(StatusResponse.self, from: Data(s.relayctl(s.gwA, s.socketA, ["status", "--json"]).stdout.utf8)).relays
            #expect(links?.first?.state == "registered" && links?.first?.home == true, "\(String(describing: links))")
            // The relay sees A at its NAT router's address.
            #expect(links?.first?.observed?.hasPrefix("100.64.1.2:") == true, "\(String(describing: links))")
            // A stopping gateway leaves: the relay drops it at once (not after four missed heartbeats).
            s.relaydA.signal(SIGTERM)
            _ = try s.relaydA.waitForExit()
            try waitUntil("the relay dropped A", timeout: 3) {
                let out = try s.relayctl(relay, s.relaySocket(0), ["relay", "status", "--json"]).stdout
                let r = try ControlJSON.decoder().decode(RelayStatusResponse.self, from: Data(out.utf8))
                return r.relay.nodes == 1 && r.relay.counters.left == 1
            }
        }
    }

    @Test("UDP blocked by both NAT routers: the gateways reach the relay over its TLS WebSocket (pinned key), ping, TCP and UDP both ways with the usual addresses; UDP allowed again: both return to UDP and keep talking")
    func overWebSocket() throws {
        try KernelGate.check()
        try Lab.with("relayws") { lab in
            let s = try SiteToSite(lab, relays: 1)
            // The NAT routers forward no UDP at all (hotel or corporate networks).
            for nat in [s.natA!, s.natB!] {
                try nat.loadNftables("table inet block {\n chain blockudp {\n  type filter hook forward priority -10; policy accept;\n  meta l4proto udp counter drop\n }\n}\n")
            }
            try s.start(frontDoor: true)
            let relay = s.relayHosts[0]
            try SiteToSite.startWhoami(s.hostB)
            try SiteToSite.startWhoami(s.hostA)
            let t0 = Date()
            try waitUntil("the gateways reach each other over the relay's WebSocket", timeout: 60) {
                try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
            }
            print("relay over WebSocket: first ping through after \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
            func transports() throws -> [String] {
                try [(s.gwA, s.socketA), (s.gwB, s.socketB)].map { gw, sock in
                    let links = try ControlJSON.decoder().decode([RelayLinkView].self, from: Data(s.relayctl(gw, sock, ["relay", "links", "--json"]).stdout.utf8))
                    return links.first?.transport ?? "?"
                }
            }
            #expect(try transports() == ["websocket", "websocket"])
            #expect(try s.hostA.run(["ping", "-c3", "-i0.2", "-W2", "240.2.2.20"], check: false).succeeded)
            let tcp = try s.hostA.run(["socat", "-T", "3", "-", "TCP:240.2.2.20:9001,bind=192.168.1.21"], stdin: "").stdout
            #expect(tcp.trimmingCharacters(in: .whitespacesAndNewlines) == "240.1.1.21 192.168.1.20")
            let udp = try s.hostA.run(["socat", "-T", "2", "-", "UDP:240.2.2.20:9000"], stdin: "x\n").stdout
            #expect(udp.trimmingCharacters(in: .whitespacesAndNewlines) == "240.1.1.20")
            #expect(try s.hostB.run(["ping", "-c2", "-i0.2", "-W2", "240.1.1.20"], check: false).succeeded)
            let back = try s.hostB.run(["socat", "-T", "3", "-", "TCP:240.1.1.20:9001"], stdin: "").stdout
            #expect(back.trimmingCharacters(in: .whitespacesAndNewlines) == "240.2.2.20 192.168.1.20")
            let st = try ControlJSON.decoder().decode(RelayStatusResponse.self, from: Data(s.relayctl(relay, s.relaySocket(0), ["relay", "status", "--json"]).stdout.utf8))
            #expect(st.nodes.count == 2 && st.nodes.allSatisfy { $0.address.hasPrefix("websocket from 100.64.") }, "\(st.nodes)")
            #expect((st.frontDoor?.counters.webSocketsOpened ?? 0) >= 2 && st.relay.counters.forwarded > 10, "\(st)")
            // The NAT routers dropped the gateways' UDP (the relay's UDP port saw none of it).
            let dropped = try s.natA.run(["nft", "list", "chain", "inet", "block", "blockudp"]).stdout
            #expect(!dropped.contains("packets 0 "), "natA dropped no UDP: \(dropped)")

            // UDP allowed again: each gateway's probe (every 30 s) finds it; both go back to UDP.
            for nat in [s.natA!, s.natB!] { try nat.run(["nft", "delete", "table", "inet", "block"]) }
            try waitUntil("both gateways back on UDP", timeout: 50) { try transports() == ["udp", "udp"] }
            try waitUntil("the gateways reach each other over UDP again", timeout: 20) {
                try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
            }
            #expect(try s.hostB.run(["ping", "-c2", "-i0.2", "-W2", "240.1.1.20"], check: false).succeeded)
            let st2 = try ControlJSON.decoder().decode(RelayStatusResponse.self, from: Data(s.relayctl(relay, s.relaySocket(0), ["relay", "status", "--json"]).stdout.utf8))
            #expect(st2.nodes.count == 2 && st2.nodes.allSatisfy { $0.address.hasPrefix("100.64.") }, "\(st2.nodes)")
        }
    }

    @Test("failover: kill -9 of the home relay during a transfer; the session resumes through the second relay within 10 s and the transfer completes")
    func failover() throws {
        try KernelGate.check()
        try Lab.with("relayfo") { lab in
            let s = try SiteToSite(lab, relays: 2)
            try s.start()
            func nodes(_ i: Int) throws -> Int {
                let out = try s.relayctl(s.relayHosts[i], s.relaySocket(i), ["relay", "status", "--json"]).stdout
                return (try? ControlJSON.decoder().decode(RelayStatusResponse.self, from: Data(out.utf8)))?.relay.nodes ?? -1
            }
            try waitUntil("the gateways reach each other", timeout: 30) {
                try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
            }
            // Each gateway stays at its home relay (the first that answered) and uses another only
            // to reach a peer: the relay not needed is left (not four registrations, one per
            // gateway and relay, as if every node registered everywhere).
            try waitUntil("a relay not needed is left", timeout: 25) { try nodes(0) + nodes(1) < 4 && nodes(0) >= 0 && nodes(1) >= 0 }
            let links = try ControlJSON.decoder().decode([RelayLinkView].self, from: Data(s.relayctl(s.gwA, s.socketA, ["relay", "links", "--json"]).stdout.utf8))
            #expect(links.filter(\.home).count == 1, "\(links)")
            // When the relay left was the one A reached B through (B leaves a relay 10 s after its
            // last data there), A has no path for up to a second, until its lookup finds B at B's
            // home relay: wait for it rather than read that moment.
            var before = ""
            try waitUntil("gateway A has a path to B", timeout: 5) {
                let peers = try ControlJSON.decoder().decode(PeersResponse.self, from: Data(s.relayctl(s.gwA, s.socketA, ["peers", "--json"]).stdout.utf8))
                before = peers.peers.first?.runtime?.path ?? ""
                return !before.isEmpty
            }
            let home = try #require(SiteToSite.relayAddresses.firstIndex { before == "relay \($0):51821" }, "path \(before)")
            try s.hostB.spawn(["iperf3", "-s", "-1"], label: "iperf3-server")
            try waitUntil("iperf3 server") { try s.hostB.run(["ss", "-lntH"]).stdout.contains(":5201") }
            let transfer = try s.hostA.spawn(["iperf3", "-c", "240.2.2.20", "-t", "16", "-b", "20M", "--json"], label: "iperf3-client")
            Thread.sleep(forTimeInterval: 3)
            s.relayProcesses[home].signal(SIGKILL)
            let killed = Date()
            try waitUntil("traffic through the other relay", timeout: 10) {
                try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
            }
            let took = Date().timeIntervalSince(killed)
            print("relay failover: traffic resumed \(String(format: "%.1f", took)) s after kill -9 of the home relay")
            #expect(took < 10)
            let after = try ControlJSON.decoder().decode(PeersResponse.self, from: Data(s.relayctl(s.gwA, s.socketA, ["peers", "--json"]).stdout.utf8))
            #expect(after.peers.first?.runtime?.path == "relay \(SiteToSite.relayAddresses[1 - home]):51821", "\(after)")
            #expect(try transfer.waitForExit(timeout: 40) == 0, "the transfer did not complete: \(transfer.log().suffix(600))")
            // The peer cache (state directory) says where B is reached now: after a restart A
            // makes that relay its home.
            try waitUntil("the peer cache follows", timeout: 5) {
                ((try? String(contentsOfFile: s.dir("A") + "/state/relay-peers", encoding: .utf8)) ?? "").contains(" \(SiteToSite.relayAddresses[1 - home]):51821")
            }
        }
    }

    static let attacker = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Support/relay_attack.py").standardized.path

    @Test("attacks on the relay from the underlay: a captured frame replayed, forged, or sent from another address; a register claiming a registered key without its private key; garbage and oversized datagrams; wrong tokens in a loop; a node over its limits: dropped and counted, the gateways keep talking and a restarted gateway registers again")
    func attacks() throws {
        try KernelGate.check()
        try Lab.with("relayatk") { lab in
            let s = try SiteToSite(lab, relays: 1)
            try s.start(relayExtra: "tokens = [\"load-token-0123456789\"]\nnode_datagrams_per_second = 2000\nregistrations_per_second = 5")
            let relay = s.relayHosts[0]
            try waitUntil("the gateways reach each other through the relay", timeout: 30) {
                try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
            }
            func counters() throws -> RelayServerCounters {
                try ControlJSON.decoder().decode(RelayStatusResponse.self, from: Data(s.relayctl(relay, s.relaySocket(0), ["relay", "status", "--json"]).stdout.utf8)).relay.counters
            }
            // A frame gateway A (behind natA, 100.64.1.2) sends, captured on the relay's link.
            let frame = lab.logDirectory.appendingPathComponent("frame.bin").path
            let cap = try relay.spawn(["/usr/bin/python3", Self.attacker, "capture", "eth0", "100.64.1.2", frame, "15"], label: "capture")
            try waitUntil("capture listening", timeout: 15) { cap.log().contains("listening") }
            _ = try s.hostA.run(["ping", "-c3", "-i0.2", "240.2.2.20"], check: false)
            #expect(try cap.waitForExit(timeout: 20) == 0, "\(cap.log())")
            let before = try counters()
            let spoof = try s.underlay.run(["/usr/bin/python3", Self.attacker, "spoof", frame, "100.64.9.9", "51821", "100.64.1.2", "51820", "100.64.66.6"], timeout: 30, check: false)
            #expect(spoof.succeeded, "\(spoof.stderr)")
            try waitUntil("the relay counted them", timeout: 5) { try counters().oversized > before.oversized }
            let after = try counters()
            #expect(after.replayed > before.replayed, "replayed: \(after)")
            #expect(after.badFrames > before.badFrames, "forged: \(after)")
            #expect(after.wrongSource > before.wrongSource, "from another address: \(after)")
            #expect((after.malformed - before.malformed) + (after.unknownSession - before.unknownSession) + (after.badMAC - before.badMAC) >= 10, "garbage: \(after)")

            // A register that claims gateway A's key without holding its private key (the message
            // carries A's public key; the DH behind it uses another): no answer, counted as failed
            // authentication; A's registration stays, the gateways keep talking.
            let claimed = try #require(try ControlJSON.decoder().decode(RelayStatusResponse.self, from: Data(s.relayctl(relay, s.relaySocket(0), ["relay", "status", "--json"]).stdout.utf8))
                .nodes.first { $0.address.hasPrefix("100.64.1.2:") }?.publicKey, "A is registered")
            let imp = try s.underlay.run(["python3", Self.attacker, "impostor", "100.64.9.9", "51821", s.relayKeys[0], claimed, "load-token-0123456789"], timeout: 30, check: false)
            #expect(imp.stdout.contains("\"answers\": 0"), "\(imp.stdout) \(imp.stderr)")
            let afterImpostor = try counters()
            #expect(afterImpostor.authFailed - after.authFailed == 3 && afterImpostor.registrations == after.registrations, "\(afterImpostor)")
            #expect(try s.hostA.run(["ping", "-c2", "-W1", "240.2.2.20"], check: false).succeeded)

            // Wrong tokens in a loop from one address: a few are refused as not admitted, then the rate limit.
            let wrong = try s.underlay.run([try Binaries.path("relay-lab"), "relay-load", "--relay", "100.64.9.9:51821", "--key", s.relayKeys[0], "--token", "wrong-token-0123456789",
                                            "--bind", "100.64.9.1", "--nodes", "40", "--seconds", "0", "--registration-rate", "200"], timeout: 60, check: false)
            let c2 = try counters()
            #expect(wrong.stdout.contains("\"registered\":0"), "\(wrong.stdout)")
            #expect(c2.notAdmitted - after.notAdmitted <= 12 && c2.rateLimited - after.rateLimited >= 25, "\(c2)")

            // Two nodes (with the token) over their limit: throttled and counted, while A and B keep talking.
            let heavy = try s.underlay.spawn([try Binaries.path("relay-lab"), "relay-load", "--relay", "100.64.9.9:51821", "--key", s.relayKeys[0], "--token", "load-token-0123456789",
                                              "--bind", "100.64.9.1", "--nodes", "2", "--rate", "10000", "--seconds", "4", "--registration-rate", "2"], label: "heavy")
            Thread.sleep(forTimeInterval: 1.5)
            let ping = try s.hostA.run(["ping", "-c20", "-i0.05", "-W1", "240.2.2.20"], check: false)
            _ = try heavy.waitForExit(timeout: 30)
            let c3 = try counters()
            #expect(ping.stdout.contains(" 0% packet loss"), "A and B were affected: \(ping.stdout)")
            #expect(c3.throttled - c2.throttled > 1000, "\(c3)")

            // The rightful node, restarted, registers again (its address was never rate limited).
            s.relaydA.signal(SIGKILL)
            _ = try s.relaydA.waitForExit()
            try s.restartRelaydA()
            try waitUntil("A back through the relay", timeout: 30) {
                try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
            }
            #expect(try counters().registrations > c3.registrations)
        }
    }
}

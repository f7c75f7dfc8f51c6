import Foundation
import Testing
import RelayControlAPI
import RelayTestHarness

/// Two sites whose gateways sit behind masquerading NAT routers with no path between them at all:
/// only a relay on the underlay connects them.
@Suite("kernel: sites joined through a relay", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct RelayedSitesTests {
    @Test("both gateways behind NATs, no endpoints, direct UDP dropped: ping, TCP and UDP both ways through the relay with the usual addresses; the relay forwards and never sees the plaintext marker")
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
            let marker = "RELAY-MARKER-\(UInt32.random(in: 0...UInt32.max))"
            try s.hostB.spawn(["socat", "-u", "TCP-LISTEN:9100,reuseaddr", "OPEN:/dev/null"], label: "sink")
            try waitUntil("sink") { try s.hostB.run(["ss", "-lntH"]).stdout.contains(":9100") }
            _ = try s.hostA.run(["socat", "-u", "-", "TCP:240.2.2.20:9100"], stdin: String(repeating: marker + "\n", count: 50))
            usleep(300_000)
            dump.signal(SIGINT)
            _ = try? dump.waitForExit(timeout: 5)
            let raw = try Data(contentsOf: URL(fileURLWithPath: pcap))
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
        }
    }

    @Test("failover: kill -9 of the home relay during a transfer; the session resumes through the second relay within 10 s and the transfer completes")
    func failover() throws {
        try KernelGate.check()
        try Lab.with("relayfo") { lab in
            let s = try SiteToSite(lab, relays: 2)
            try s.start()
            // Both gateways registered at both relays, and the peers found through both.
            try waitUntil("both relays hold both nodes", timeout: 30) {
                try (0..<2).allSatisfy { i in
                    let out = try s.relayctl(s.relayHosts[i], s.relaySocket(i), ["relay", "status", "--json"]).stdout
                    return (try? ControlJSON.decoder().decode(RelayStatusResponse.self, from: Data(out.utf8)))?.relay.nodes == 2
                }
            }
            try waitUntil("the gateways reach each other", timeout: 30) {
                try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
            }
            let peers = try ControlJSON.decoder().decode(PeersResponse.self, from: Data(s.relayctl(s.gwA, s.socketA, ["peers", "--json"]).stdout.utf8))
            let before = try #require(peers.peers.first?.runtime?.path)
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
        }
    }
}

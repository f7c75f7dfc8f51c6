import Foundation
import RelayCore
import RelayTestHarness

/// `make demo`: two sites that both use 192.168.1.0/24. Each gateway runs the real relay-helper
/// (CAP_NET_ADMIN only) and relayd (as an unprivileged uid); the relayds join the sites with an
/// encrypted Noise IK tunnel over the underlay, and the helpers' prefix NAT makes A's 192.168.1.20
/// reach B's 192.168.1.20 as 240.2.2.20, seen there as 240.1.1.20.
struct DemoScenario {
    static let keptPrefix = "rdemo-"
    var keep: Bool

    func say(_ s: String) { print(s); fflush(stdout) }

    func run() throws {
        if keep { for ns in Lab.listNamespaces() where ns.hasPrefix(DemoScenario.keptPrefix) { Lab.removeNamespace(ns) } }
        let lab = try Lab("demo", prefix: keep ? DemoScenario.keptPrefix : nil)
        defer { if !keep { lab.teardown() } }
        do { try scenario(lab) } catch {
            FileHandle.standardError.write(Data(lab.failureReport(error).utf8))
            throw error
        }
        if !keep {
            lab.teardown()
            let relayed = try Lab("demo-relay")
            defer { relayed.teardown() }
            do { try relayedScenario(relayed) } catch {
                FileHandle.standardError.write(Data(relayed.failureReport(error).utf8))
                throw error
            }
        }
    }

    /// The same two sites with no path between them: each gateway behind its own NAT router, the
    /// underlay dropping everything between the two; a relay on the underlay joins them.
    func relayedScenario(_ lab: Lab) throws {
        say("")
        say("== Through a relay: the same two sites, each gateway behind a masquerading NAT (100.64.1.2, 100.64.2.2),")
        say("   nothing at all between the NATs, no endpoints configured; a relayd with the relay role at 100.64.9.9:51821")
        let s = try SiteToSite(lab, relays: 1)
        try s.start()
        try waitUntil("the gateways reach each other through the relay", timeout: 30) {
            try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded
        }
        try SiteToSite.startWhoami(s.hostB)
        say("== A's 192.168.1.20 pings B's as 240.2.2.20, through the relay")
        say(indent(try s.hostA.run(["ping", "-c3", "-i0.2", "240.2.2.20"]).stdout.split(separator: "\n").filter { $0.contains("bytes from") || $0.contains("packet loss") }.joined(separator: "\n")))
        let out = try s.hostA.run(["socat", "-T", "3", "-", "TCP:240.2.2.20:9001"], stdin: "").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        say("== TCP from A: B sees \(out.replacingOccurrences(of: " ", with: ", reached ")) (the same addresses as on a direct path)")
        say("== relayctl peers on gateway A (the path):")
        say(indent(try s.relayctl(s.gwA, s.socketA, ["peers"]).stdout.trimmingCharacters(in: .newlines)))
        say("== relayctl relay links on gateway A (its address as the relay sees it: its NAT's):")
        say(indent(try s.relayctl(s.gwA, s.socketA, ["relay", "links"]).stdout.trimmingCharacters(in: .newlines)))
        say("== relayctl relay status on the relay (it forwards sealed datagrams; it holds no tunnel keys):")
        say(indent(try s.relayctl(s.relayHosts[0], s.relaySocket(0), ["relay", "status"]).stdout.trimmingCharacters(in: .newlines)))
        say("== done; removing the namespaces")
    }

    /// socat prints IPv6 addresses in full and in brackets: print them the RFC 5952 way.
    func tidy(_ s: String) -> String {
        s.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ").map { t in
            IPAddress(String(t.trimmingCharacters(in: CharacterSet(charactersIn: "[]")))).map { "\($0)" } ?? String(t)
        }.joined(separator: " ")
    }
    func indent(_ s: String) -> String { s.split(separator: "\n", omittingEmptySubsequences: false).map { "   " + $0 }.joined(separator: "\n") }

    func scenario(_ lab: Lab) throws {
        say("== Relay demo: two sites that both use 192.168.1.0/24, joined by Relay")
        let s = try SiteToSite(lab, ipv6: true)
        say("   site A: host 192.168.1.20 (+ .21, .77), gateway 192.168.1.1 / 10.10.10.10, virtual 240.1.1.0/24")
        say("   site B: host 192.168.1.20 (+ .21, .77), gateway 192.168.1.1 / 10.20.20.20, virtual 240.2.2.0/24")
        say("   each site also has an IPv6-only host fd00:cafe::30 (the same ULA prefix at both sites), whose IPv4 name is 192.168.1.30 (site.map)")
        say("   the hosts are not reconfigured: their only route is the default via 192.168.1.1")
        say("== starting relay-helper (CAP_NET_ADMIN only) and relayd (uid \(s.relaydUID), no privileges) on both gateways")
        try s.start()
        say(indent(try s.relayctl(s.gwA, s.socketA, ["status"]).stdout.trimmingCharacters(in: .newlines)))
        say("== gateway A's nftables table, as relayd asked the helper to program it:")
        say(indent(try s.gwA.run(["nft", "list", "table", "inet", "relay"]).stdout.trimmingCharacters(in: .newlines)))
        say("== and its routes into the tunnel device:")
        say(indent(try s.relayctl(s.gwA, s.socketA, ["routes"]).stdout.trimmingCharacters(in: .newlines)))

        try SiteToSite.startWhoami(s.hostB)
        try SiteToSite.startWhoami(s.hostA)
        say("== A's 192.168.1.20 pings B's 192.168.1.20 as 240.2.2.20")
        say(indent(try s.hostA.run(["ping", "-c3", "-i0.2", "240.2.2.20"]).stdout.split(separator: "\n").filter { $0.contains("bytes from") || $0.contains("packet loss") }.joined(separator: "\n")))
        say("== TCP from A: B's whoami service prints who it sees and which address was reached")
        for (src, dst) in [(20, 20), (21, 77)] {
            let out = try s.hostA.run(["socat", "-T", "3", "-", "TCP:240.2.2.\(dst):9001,bind=192.168.1.\(src)"], stdin: "").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            say("   A 192.168.1.\(src) -> 240.2.2.\(dst): B sees \(out.replacingOccurrences(of: " ", with: ", reached "))")
        }
        say("== UDP from A to 240.2.2.20: B sees " + (try s.hostA.run(["socat", "-T", "2", "-", "UDP:240.2.2.20:9000"], stdin: "x\n").stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        say("== and the other way: B's 192.168.1.20 -> 240.1.1.20 over TCP: A sees " +
            (try s.hostB.run(["socat", "-T", "3", "-", "TCP:240.1.1.20:9001"], stdin: "").stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        try SiteToSite.startWhoami(s.host6B!, ipv6: true)
        say("== IPv6 -> IPv4: A's IPv6-only host reaches B's IPv4 host as 64:ff9b:2222::192.168.1.20 (relayd translates, RFC 7915)")
        say(indent(try s.host6A!.run(["ping", "-6", "-c2", "-i0.2", "64:ff9b:2222::192.168.1.20"]).stdout.split(separator: "\n").filter { $0.contains("bytes from") || $0.contains("packet loss") }.joined(separator: "\n")))
        say("   TCP: B's 192.168.1.20 sees " + tidy(try s.host6A!.run(["socat", "-T", "3", "-", "TCP6:[64:ff9b:2222::192.168.1.20]:9001"], stdin: "").stdout).replacingOccurrences(of: " ", with: ", reached "))
        say("== IPv4 -> IPv6: A's IPv4 host reaches B's IPv6-only host by its IPv4 name 240.2.2.30: B's host sees " +
            tidy(try s.hostA.run(["socat", "-T", "3", "-", "TCP:240.2.2.30:9001"], stdin: "").stdout).replacingOccurrences(of: " ", with: ", reached "))
        say("== IPv6 -> IPv6 across the shared ULA prefix: A's fd00:cafe::30 -> fd22:2222::30: B's host sees " +
            tidy(try s.host6A!.run(["socat", "-T", "3", "-", "TCP6:[fd22:2222::30]:9001"], stdin: "").stdout).replacingOccurrences(of: " ", with: ", reached "))
        say("== relayctl map 192.168.1.20 --site B (on gateway A): a host's names in both families")
        say(indent(try s.relayctl(s.gwA, s.socketA, ["map", "192.168.1.20", "--site", "B"]).stdout.trimmingCharacters(in: .newlines)))
        say("== relayctl peers on gateway A:")
        say(indent(try s.relayctl(s.gwA, s.socketA, ["peers"]).stdout.trimmingCharacters(in: .newlines)))
        say("== relayctl sessions on gateway A:")
        say(indent(try s.relayctl(s.gwA, s.socketA, ["sessions"]).stdout.trimmingCharacters(in: .newlines)))
        say("== relayctl sessions on gateway B:")
        say(indent(try s.relayctl(s.gwB, s.socketB, ["sessions"]).stdout.trimmingCharacters(in: .newlines)))
        if keep {
            let ctl = try Binaries.path("relayctl")
            say("""

            Left running. Try:
              ip netns exec \(s.hostA.namespace) ping 240.2.2.20
              ip netns exec \(s.host6A!.namespace) ping 64:ff9b:2222::192.168.1.20
              ip netns exec \(s.gwA.namespace) \(ctl) peers --socket \(s.socketA)
              ip netns exec \(s.gwB.namespace) \(ctl) sessions --socket \(s.socketB)
              ip netns exec \(s.gwB.namespace) nft list table inet relay
              ip netns exec \(s.underlay.namespace) tcpdump -ni a0      # only UDP 51820 between the gateways
            Remove it with: make demo-clean
            """)
        } else {
            say("== done with the direct sites; removing their namespaces (KEEP=1 leaves them running and skips the relayed part)")
        }
    }
}

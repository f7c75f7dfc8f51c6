import Foundation
import RelayCore
import RelayIPC
import RelayTestHarness

/// `make demo`: two sites that both use 192.168.1.0/24, each behind a gateway running the real
/// relay-helper, joined by an underlay. The helper programs prefix NAT so that A's 192.168.1.20
/// reaches B's 192.168.1.20 as 240.2.2.20 and is seen there as 240.1.1.20.
/// (The encrypted tunnel between relayds replaces the plain underlay route in a later version.)
struct DemoScenario {
    static let keptPrefix = "rdemo-"
    var keep: Bool

    func P(_ s: String) -> IPPrefix { try! IPPrefix(parsing: s) }

    func say(_ s: String) { print(s); fflush(stdout) }

    func run() throws {
        if keep { for ns in Lab.listNamespaces() where ns.hasPrefix(DemoScenario.keptPrefix) { Lab.removeNamespace(ns) } }
        let lab = try Lab("demo", prefix: keep ? DemoScenario.keptPrefix : nil)
        defer { if !keep { lab.teardown() } }
        do { try scenario(lab) } catch {
            FileHandle.standardError.write(Data(lab.failureReport(error).utf8))
            throw error
        }
    }

    func scenario(_ lab: Lab) throws {
        say("== Relay demo: two sites that both use 192.168.1.0/24")
        let a = try lab.host("siteA_host"), ga = try lab.host("siteA_gw"), u = try lab.host("underlay")
        let gb = try lab.host("siteB_gw"), b = try lab.host("siteB_host")
        try lab.link(a, "eth0", ["192.168.1.20/24"], ga, "lan0", ["192.168.1.1/24"])
        try lab.link(b, "eth0", ["192.168.1.20/24", "192.168.1.77/24"], gb, "lan0", ["192.168.1.1/24"])
        try lab.link(ga, "wan0", ["10.10.10.10/24"], u, "a0", ["10.10.10.1/24"])
        try lab.link(gb, "wan0", ["10.20.20.20/24"], u, "b0", ["10.20.20.1/24"])
        for g in [ga, gb, u] { try g.enableForwarding() }
        try a.route("default", via: "192.168.1.1")
        try b.route("default", via: "192.168.1.1")
        try ga.route("default", via: "10.10.10.1")
        try gb.route("default", via: "10.20.20.1")
        try ga.route("240.2.2.0/24", via: "10.10.10.1")
        try gb.route("240.1.1.0/24", via: "10.20.20.1")
        try u.route("240.1.1.0/24", via: "10.10.10.10")
        try u.route("240.2.2.0/24", via: "10.20.20.20")
        say("   site A: host 192.168.1.20, gateway 192.168.1.1 / 10.10.10.10, virtual 240.1.1.0/24")
        say("   site B: host 192.168.1.20 (+ .77), gateway 192.168.1.1 / 10.20.20.20, virtual 240.2.2.0/24")

        say("== starting relay-helper on both gateways (CAP_NET_ADMIN only, policy-checked)")
        let ha = try HelperFixture.start(in: ga), hb = try HelperFixture.start(in: gb)
        let stateA = NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))],
                              snat: [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24"))], remote: [P("240.2.2.0/24")])
        let stateB = NATState(dnat: [PrefixMapping(P("240.2.2.0/24"), P("192.168.1.0/24"))],
                              snat: [PrefixMapping(P("192.168.1.0/24"), P("240.2.2.0/24"))], remote: [P("240.1.1.0/24")])
        let ra = try HelperClient(path: ha.socketPath).apply(stateA)
        let rb = try HelperClient(path: hb.socketPath).apply(stateB)
        say("   applied: A \(ra.messages) netlink messages in one batch, B \(rb.messages)")
        say("== gateway A's table, as the kernel holds it (nft list table inet relay):")
        say(try ga.run(["nft", "list", "table", "inet", "relay"]).stdout)

        try b.spawn(["socat", "TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:echo hello from B - you are $SOCAT_PEERADDR and reached $SOCAT_SOCKADDR"], label: "web")
        try b.spawn(["socat", "UDP-RECVFROM:5353,fork,reuseaddr", "SYSTEM:echo udp from B sees $SOCAT_PEERADDR"], label: "udp")
        try waitUntil("B's services") { let o = try b.run(["ss", "-lntuH"]).stdout; return o.contains(":8080") && o.contains(":5353") }

        say("== A's 192.168.1.20 pings B's 192.168.1.20 as 240.2.2.20")
        say(try a.run(["ping", "-c2", "-i0.2", "240.2.2.20"]).stdout.split(separator: "\n").filter { $0.contains("bytes from") || $0.contains("packet loss") }.joined(separator: "\n"))
        say("== TCP from A to 240.2.2.20 and 240.2.2.77 (host bits kept)")
        for n in [20, 77] {
            say("   " + (try a.run(["socat", "-T", "3", "-", "TCP:240.2.2.\(n):8080"], stdin: "").stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        }
        say("== UDP from A to 240.2.2.20")
        say("   " + (try a.run(["socat", "-T", "2", "-", "UDP:240.2.2.20:5353"], stdin: "x\n").stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        say("== conntrack on gateway B (the kernel keeps replies symmetric):")
        say(try gb.run(["conntrack", "-L", "-p", "tcp"], check: false).stdout.split(separator: "\n").prefix(2).joined(separator: "\n"))
        let obs = try HelperClient(path: hb.socketPath).observe()
        say("== relay-helper on B reports: " + obs.table.chains.map { c in "\(c.name): " + c.rules.map { "\($0.packets) pkts" }.joined(separator: ", ") }.joined(separator: "; "))
        if keep {
            say("""

            Left running. Try:
              ip netns exec \(a.namespace) ping 240.2.2.20
              ip netns exec \(gb.namespace) nft list table inet relay
            Remove it with: make demo-clean
            """)
        } else {
            say("== done; removing the namespaces (KEEP=1 leaves them running)")
        }
    }
}

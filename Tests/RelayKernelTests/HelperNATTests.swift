import Foundation
import Testing
import RelayCore
import RelayHelperAPI
import RelayIPC
import RelayNftables
import RelayTestHarness
import RelayWire

func P(_ s: String) -> IPPrefix { try! IPPrefix(parsing: s) }

/// Site A's gateway state in the two-site example: LAN 192.168.1.0/24 is 240.1.1.0/24 (and
/// fd00:1::/64 is fd00:a::/64); peer B's virtual prefixes are remote.
let siteAState = NATState(
    dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24")), PrefixMapping(P("fd00:a::/64"), P("fd00:1::/64"))],
    snat: [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24")), PrefixMapping(P("fd00:1::/64"), P("fd00:a::/64"))],
    dnatExact: [AddressMapping(IPAddress("240.1.2.7")!, IPAddress("192.168.1.7")!)],
    remote: [P("240.2.2.0/24"), P("fd00:b::/64")])

/// `nft -j list table inet NAME` with handles and counters removed, for comparisons.
func normalizedTable(_ host: LabHost, _ name: String = "relay") throws -> String {
    let out = try host.run(["nft", "-j", "list", "table", "inet", name]).stdout
    return normalizeNftJSON(out)
}

func normalizeNftJSON(_ text: String) -> String {
    guard let obj = try? JSONSerialization.jsonObject(with: Data(text.utf8)) else { return text }
    func strip(_ v: Any) -> Any {
        if let d = v as? [String: Any] {
            var o: [String: Any] = [:]
            for (k, x) in d where k != "handle" && k != "metainfo" { o[k] = strip(x) }
            if let c = o["counter"] as? [String: Any], c["packets"] != nil { o["counter"] = ["packets": 0, "bytes": 0] }
            return o
        }
        if let a = v as? [Any] { return a.map(strip).filter { !(($0 as? [String: Any])?.isEmpty ?? false) } }
        return v
    }
    let data = try! JSONSerialization.data(withJSONObject: strip(obj), options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}

@Suite("kernel: relay-helper nftables prefix NAT", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct HelperNATTests {
    @Test("apply holds exactly the plan (nft -j), re-apply changes nothing, and nft -f of the rendered text gives the same ruleset")
    func applyIdempotentAndDifferential() throws {
        try KernelGate.check()
        try Lab.with("nat-apply") { lab in
            let gw = try lab.host("gw"), ref = try lab.host("ref")
            let helper = try HelperFixture.start(in: gw)
            let client = try HelperClient(path: helper.socketPath)
            #expect(try client.hello().table == "inet relay")
            let first = try client.apply(siteAState)
            #expect(first.changed)
            let viaLibrary = try normalizedTable(gw)
            let listed = try gw.run(["nft", "list", "table", "inet", "relay"]).stdout
            #expect(listed.contains("192.168.1.0/24 : 240.1.1.0/24"))
            #expect(listed.contains("snat ip prefix to ip saddr map @snat4"))
            #expect(listed.contains("dnat ip6 prefix to ip6 daddr map @dnat6"))
            let handlesBefore = try gw.run(["nft", "-a", "list", "table", "inet", "relay"]).stdout

            let second = try client.apply(siteAState)
            #expect(!second.changed, "re-applying the same state sent \(second.messages) messages")
            #expect(try gw.run(["nft", "-a", "list", "table", "inet", "relay"]).stdout == handlesBefore)

            // Differential: the renderer's text through nft -f in a second namespace.
            let text = TablePlan(siteAState, spec: TableSpec()).render()
            try ref.loadNftables(text)
            #expect(try normalizedTable(ref) == viaLibrary)

            // The observed state reports entries and rules.
            let obs = try client.observe().table
            #expect(obs.exists)
            #expect(obs.sets.first { $0.name == "snat4" }?.entries == 1)
            #expect(obs.chains.flatMap(\.rules).count == 5)
        }
    }

    @Test("a changed state is applied as a diff; removed maps disappear; a bad state changes nothing")
    func changesAndFailures() throws {
        try KernelGate.check()
        try Lab.with("nat-change") { lab in
            let gw = try lab.host("gw")
            let helper = try HelperFixture.start(in: gw)
            let client = try HelperClient(path: helper.socketPath)
            try client.apply(siteAState)
            var smaller = siteAState
            smaller.dnatExact = []
            smaller.remote.append(P("240.3.3.0/24"))
            let r = try client.apply(smaller)
            #expect(r.removedSets == ["dnatx4"])
            #expect(r.replacedSets == ["remote4"])
            let listed = try gw.run(["nft", "list", "table", "inet", "relay"]).stdout
            #expect(!listed.contains("dnatx4"))
            #expect(listed.contains("240.3.3.0/24"))
            let before = try normalizedTable(gw)

            // Outside the policy: refused with a typed error, nothing applied.
            var outside = smaller
            outside.remote.append(P("8.8.8.0/24"))
            #expect(throws: WireError.self) { try client.apply(outside) }
            do { try client.apply(outside) } catch let e as WireError {
                #expect(e.code == "policy.refused")
                #expect(e.message.contains("8.8.8.0/24"))
            }
            // Structurally wrong (different sizes): refused.
            var sizes = smaller
            sizes.snat.append(PrefixMapping(P("192.168.2.0/24"), P("240.1.2.0/23")))
            #expect(throws: WireError.self) { try client.apply(sizes) }
            #expect(try normalizedTable(gw) == before)
        }
    }

    @Test("adjacent prefixes (one /32 after another) are accepted and listed back exactly")
    func adjacentPrefixes() throws {
        try KernelGate.check()
        try Lab.with("nat-adjacent") { lab in
            let gw = try lab.host("gw")
            let helper = try HelperFixture.start(in: gw)
            let maps = (0..<3).map { PrefixMapping(P("10.0.0.\($0)/32"), P("240.0.0.\($0)/32")) } + [PrefixMapping(P("10.0.1.0/24"), P("240.0.1.0/24"))]
            try HelperClient(path: helper.socketPath).apply(NATState(dnat: maps))
            let listed = try gw.run(["nft", "list", "map", "inet", "relay", "dnat4"]).stdout
            for m in ["10.0.0.0 : 240.0.0.0", "10.0.0.1 : 240.0.0.1", "10.0.0.2 : 240.0.0.2", "10.0.1.0/24 : 240.0.1.0/24"] {
                #expect(listed.contains(m), "\(m) in \(listed)")
            }
        }
    }

    @Test("a foreign table and a foreign masquerade rule are byte-identical after apply, re-apply and cleanup")
    func foreignRulesUntouched() throws {
        try KernelGate.check()
        try Lab.with("nat-foreign") { lab in
            let gw = try lab.host("gw")
            try gw.loadNftables("""
            table ip operator {
              chain post { type nat hook postrouting priority 100; policy accept; oifname "eth9" masquerade; }
              chain forward_filter { type filter hook forward priority 0; policy drop; ct state established accept; }
            }
            table inet relay2 { set keep { type ipv4_addr; elements = { 1.2.3.4 }; }; }
            """)
            let foreign = { try gw.run(["nft", "-j", "list", "table", "ip", "operator"]).stdout + (try gw.run(["nft", "-j", "list", "table", "inet", "relay2"]).stdout) }
            let before = try foreign()
            let helper = try HelperFixture.start(in: gw)
            let client = try HelperClient(path: helper.socketPath)
            try client.apply(siteAState)
            #expect(try foreign() == before)
            try client.apply(NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))]))
            #expect(try foreign() == before)
            try client.cleanup()
            #expect(try foreign() == before)
            #expect(try gw.run(["nft", "list", "table", "inet", "relay"], check: false).status != 0)
            // --cleanup from the command line is idempotent and also leaves the rest alone.
            let r = try gw.run([try Binaries.path("relay-helper"), "--cleanup", "--policy", helper.policyPath])
            #expect(r.stdout.contains("nothing to remove"))
            #expect(try foreign() == before)
        }
    }

    @Test("real traffic crosses the prefix NAT with host bits kept: 192.168.1.x is reached as 240.2.2.x and sees 240.1.1.x")
    func trafficThroughPrefixNAT() throws {
        try KernelGate.check()
        try Lab.with("nat-traffic") { lab in
            // Two sites with the same LAN, gateways on an underlay, no tunnel: the kernel alone. The
            // underlay stands in for the tunnel, so its interfaces carry the helper's device prefix
            // (inbound translation applies only to packets that come out of Relay's devices).
            let a = try lab.host("a"), ga = try lab.host("ga"), gb = try lab.host("gb"), b = try lab.host("b")
            let hostNumbers = [20, 1 + 2, 77, 200, 254].filter { $0 != 1 }
            try lab.link(a, "eth0", hostNumbers.map { "192.168.1.\($0)/24" }, ga, "lan0", ["192.168.1.1/24"])
            try lab.link(b, "eth0", hostNumbers.map { "192.168.1.\($0)/24" }, gb, "lan0", ["192.168.1.1/24"])
            try lab.link(ga, "relaywan", ["10.10.10.10/24"], gb, "relaywan", ["10.10.10.20/24"])
            for g in [ga, gb] { try g.enableForwarding() }
            try a.route("default", via: "192.168.1.1")
            try b.route("default", via: "192.168.1.1")
            try ga.route("240.2.2.0/24", via: "10.10.10.20")
            try gb.route("240.1.1.0/24", via: "10.10.10.10")
            let ha = try HelperFixture.start(in: ga), hb = try HelperFixture.start(in: gb)
            try HelperClient(path: ha.socketPath).apply(NATState(
                dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))],
                snat: [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24"))], remote: [P("240.2.2.0/24")]))
            try HelperClient(path: hb.socketPath).apply(NATState(
                dnat: [PrefixMapping(P("240.2.2.0/24"), P("192.168.1.0/24"))],
                snat: [PrefixMapping(P("192.168.1.0/24"), P("240.2.2.0/24"))], remote: [P("240.1.1.0/24")]))
            // "Who am I talking to" services on B: they answer with the peer address they see and
            // the local address that was reached.
            try b.spawn(["socat", "TCP-LISTEN:9001,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR $SOCAT_SOCKADDR"], label: "whoami-tcp")
            try b.spawnUDPResponder(port: 9000, label: "whoami-udp")
            try waitUntil("services on b") { let o = try b.run(["ss", "-lntuH"]).stdout; return o.contains(":9000") && o.contains(":9001") }
            for n in hostNumbers {
                let src = hostNumbers[(hostNumbers.firstIndex(of: n)! + 1) % hostNumbers.count]
                let tcp = try a.run(["socat", "-T", "3", "-", "TCP:240.2.2.\(n):9001,bind=192.168.1.\(src)"], stdin: "").stdout
                #expect(tcp.trimmingCharacters(in: .whitespacesAndNewlines) == "240.1.1.\(src) 192.168.1.\(n)", "TCP from .\(src) to .\(n)")
                let ping = try a.run(["ping", "-c1", "-W2", "-I", "192.168.1.\(src)", "240.2.2.\(n)"], check: false)
                #expect(ping.succeeded, "ping from .\(src) to .\(n): \(ping.stdout)")
            }
            let udp = try a.run(["socat", "-T", "2", "-", "UDP:240.2.2.20:9000"], stdin: "x\n").stdout
            #expect(udp.trimmingCharacters(in: .whitespacesAndNewlines) == "240.1.1.20")
            // Counters moved, as the helper reports them.
            let obs = try HelperClient(path: hb.socketPath).observe().table
            let dnatRule = obs.chains.first { $0.name == "prerouting" }?.rules.first
            #expect((dnatRule?.packets ?? 0) > 0)
        }
    }

    @Test("clients outside the policy are refused; readers cannot write; garbage and oversized frames are refused and the helper keeps serving")
    func refusals() throws {
        try KernelGate.check()
        try Lab.with("nat-refuse") { lab in
            let gw = try lab.host("gw")
            let helper = try HelperFixture.start(in: gw, policy: HelperFixture.policy(clients: [0], readers: [65533]))
            chmod(helper.socketPath, 0o666)
            func frame(_ json: String) -> String {
                let n = json.utf8.count
                return [n >> 24, n >> 16 & 255, n >> 8 & 255, n & 255].map { String(format: "\\%03o", $0) }.joined() + json
            }
            func rawExchange(_ bytes: String, as uid: UInt32?) throws -> String {
                // printf's escapes build the frame; socat carries it over the Unix socket.
                try gw.run(["bash", "-c", "printf '\(bytes)' | socat -t 2 - UNIX-CONNECT:\(helper.socketPath)"], as: uid, check: false).stdout
            }
            let hello = #"{"version":1,"id":1,"op":"hello"}"#
            let frameHello = frame(hello)
            // A stranger is answered at accept, before it sends anything, and the connection is
            // closed at once: it only reads (a socat that writes after the close would exit on
            // EPIPE before reading; HelperClient reads the early answer in that case).
            let stranger = try gw.run(["socat", "-u", "-t", "2", "UNIX-CONNECT:\(helper.socketPath)", "STDOUT"], as: 65534, check: false).stdout
            #expect(stranger.contains("auth.not_a_client"), "stranger got: \(stranger)")
            #expect(try rawExchange(frameHello, as: 65533).contains("\"permission\":\"read\""))
            let cleanup = #"{"version":1,"id":2,"op":"cleanup"}"#
            #expect(try rawExchange(frame(cleanup), as: 65533).contains("auth.permission_denied"))
            #expect(try rawExchange("\\000\\000\\000\\005hello", as: nil).contains("wire.malformed"))
            #expect(try rawExchange("\\177\\377\\377\\377", as: nil).contains("wire.too_large"))
            let v9 = #"{"version":9,"id":1,"op":"hello"}"#
            #expect(try rawExchange(frame(v9), as: nil).contains("wire.unsupported_version"))
            _ = try rawExchange("\\000\\000\\001\\000truncated", as: nil)
            // Still serving, and nothing was applied.
            let client = try HelperClient(path: helper.socketPath)
            #expect(try client.hello().permission == "write")
            #expect(try client.observe().table.exists == false)
            #expect(helper.process.isRunning)
        }
    }

    @Test("after kill -9 and restart the helper reports what is in the kernel")
    func restartReportsKernelState() throws {
        try KernelGate.check()
        try Lab.with("nat-restart") { lab in
            let gw = try lab.host("gw")
            let h1 = try HelperFixture.start(in: gw)
            try HelperClient(path: h1.socketPath).apply(siteAState)
            h1.process.signal(SIGKILL)
            _ = try h1.process.waitForExit()
            let h2 = try HelperFixture.start(in: gw, name: "helper2")
            let client = try HelperClient(path: h2.socketPath)
            let obs = try client.observe().table
            #expect(obs.exists)
            #expect(Set(obs.sets.map(\.name)) == ["dnat4", "dnat6", "dnatx4", "snat4", "snat6", "remote4", "remote6"])
            #expect(try client.apply(siteAState).changed == false)
        }
    }
}

import Foundation
import Testing
import RelayCore
import RelayHelperAPI
import RelayIPC
import RelayNftables
import RelayTestHarness
import RelayWire

func A(_ s: String) -> InterfaceAddress { try! InterfaceAddress(parsing: s) }

/// Routes (`ip -j route`), TUN devices (`ip -j -d link`), fd handoff to another uid, opt-in
/// firewall integration, incremental NAT updates — each checked with tools the helper did not write.
@Suite("kernel: relay-helper routes, TUN devices, integration, incremental NAT", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct HelperKernelStateTests {
    static let probeUID: UInt32 = 65534

    func probe(_ host: LabHost, socket: String, src: String, dst: String, expectNone: Bool = false) throws -> CommandResult {
        var args = [try Binaries.path("relay-lab"), "tun-probe", "--socket", socket, "--device", "relay0", "--mtu", "1400",
                    "--address", "240.1.1.1/24", "--src", src, "--dst", dst, "--timeout", expectNone ? "1.5" : "3"]
        if expectNone { args.append("--expect-none") }
        return try host.run(args, as: HelperKernelStateTests.probeUID, check: false)
    }

    @Test("TUN device: created with MTU/addresses/up, fd handed to another uid carries packets both ways; routes tagged, listed and removed only when ours; restart and cleanup")
    func devicesRoutesAndHandoff() throws {
        try KernelGate.check()
        try Lab.with("tun") { lab in
            let gw = try lab.host("gw")
            let helper = try HelperFixture.start(in: gw, policy: HelperFixture.policy(clients: [0, HelperKernelStateTests.probeUID]))
            chmod(helper.socketPath, 0o666)
            let client = try HelperClient(path: helper.socketPath)

            // Open: the device as iproute2 sees it.
            let (dev, fd) = try client.openDevice(DeviceSpec(name: "relay0", mtu: 1400, addresses: [A("240.1.1.1/24"), A("fd00:a::1/64")]))
            #expect(fd >= 0)
            #expect(dev.mtu == 1400 && dev.up)
            let link = try gw.ipJSON("-d", "link", "show", "relay0").first ?? [:]
            #expect(link["mtu"] as? Int == 1400)
            #expect((link["flags"] as? [String] ?? []).contains("UP"))
            #expect((link["linkinfo"] as? [String: Any])?["info_kind"] as? String == "tun")
            let addrs = (try gw.ipJSON("addr", "show", "relay0").first?["addr_info"] as? [[String: Any]] ?? []).map { "\($0["local"]!)/\($0["prefixlen"]!)" }
            #expect(Set(addrs).isSuperset(of: ["240.1.1.1/24", "fd00:a::1/64"]), "addresses: \(addrs)")
            // While this process holds the fd, nobody else can attach.
            #expect(throws: WireError.self) { _ = try client.openDevice(DeviceSpec(name: "relay0", mtu: 1400)) }
            close(fd)

            // Routes, tagged with the policy's protocol (196), in the main table.
            let r = try client.applyRoutes([RouteSpec(P("240.2.2.0/24"), device: "relay0"), RouteSpec(P("fd00:b::/64"), device: "relay0")])
            #expect(r.routesChanged == 2)
            let v4 = try gw.ipJSON("route", "show", "proto", "196")
            #expect(v4.map { $0["dst"] as? String } == ["240.2.2.0/24"])
            #expect(v4.first?["dev"] as? String == "relay0")
            #expect(v4.first?["scope"] as? String == "link")
            let v6 = try gw.ipJSON("-6", "route", "show", "proto", "196")
            #expect(v6.map { $0["dst"] as? String } == ["fd00:b::/64"])
            // Differential: iproute2 makes the same route the same way (compare everything but dst).
            try gw.ip("route", "replace", "240.9.9.0/24", "dev", "relay0", "proto", "196")
            let both = try gw.ipJSON("-d", "route", "show", "proto", "196")
            let ours = both.first { $0["dst"] as? String == "240.2.2.0/24" }, theirs = both.first { $0["dst"] as? String == "240.9.9.0/24" }
            func sansDst(_ d: [String: Any]?) -> String {
                var x = d ?? [:]; x["dst"] = nil
                return String(decoding: try! JSONSerialization.data(withJSONObject: x, options: [.sortedKeys]), as: UTF8.self)
            }
            #expect(sansDst(ours) == sansDst(theirs))
            try gw.ip("route", "del", "240.9.9.0/24", "dev", "relay0", "proto", "196")
            // Idempotent.
            #expect(try client.applyRoutes([RouteSpec(P("240.2.2.0/24"), device: "relay0"), RouteSpec(P("fd00:b::/64"), device: "relay0")]).routesChanged == 0)

            // The fd, handed to uid 65534, carries an echo request into the kernel and the reply
            // (routed back via the helper's route) out again.
            let ok = try probe(gw, socket: helper.socketPath, src: "240.2.2.20", dst: "240.1.1.1")
            #expect(ok.succeeded, "probe: \(ok.stdout) \(ok.stderr)")
            #expect(ok.stdout.contains("uid 65534 got fd"))
            #expect(ok.stdout.contains("3/3 echo replies"))

            // An operator's route is never listed, replaced or removed.
            try gw.ip("route", "add", "240.3.3.0/24", "dev", "relay0", "proto", "static")
            do {
                _ = try client.replaceRoutes([RouteSpec(P("240.3.3.0/24"), device: "relay0")])
                Issue.record("replacing a foreign route was accepted")
            } catch let e as WireError { #expect(e.code == "route.not_owned", "\(e)") }
            #expect(try client.observe().routes.map(\.destination.description).sorted() == ["240.2.2.0/24", "fd00:b::/64"])
            #expect(try client.deleteRoutes([RouteSpec(P("240.3.3.0/24"), device: "relay0")]).routesChanged == 0)
            #expect(try client.applyRoutes([RouteSpec(P("fd00:b::/64"), device: "relay0")]).routesChanged == 1)
            #expect(try gw.ipJSON("route", "show", "proto", "196").isEmpty)
            #expect(try gw.ipJSON("route", "show", "240.3.3.0/24").count == 1)
            _ = try client.applyRoutes([RouteSpec(P("240.2.2.0/24"), device: "relay0"), RouteSpec(P("fd00:b::/64"), device: "relay0")])

            // Out of policy: refused, nothing changed.
            for bad in [RouteSpec(P("198.51.100.0/24"), device: "relay0"), RouteSpec(P("240.4.4.0/24"), device: "lo")] {
                do { _ = try client.replaceRoutes([bad]); Issue.record("\(bad) accepted") } catch let e as WireError { #expect(e.code == "policy.refused") }
            }
            for bad in [DeviceSpec(name: "eth0", mtu: 1400), DeviceSpec(name: "relay1", mtu: 100), DeviceSpec(name: "relay1", addresses: [A("198.51.100.1/24")])] {
                do { _ = try client.openDevice(bad); Issue.record("\(bad) accepted") } catch let e as WireError { #expect(e.code == "policy.refused") }
            }
            try gw.ip("link", "add", "relaydummy", "type", "veth", "peer", "name", "relaypeer")
            do { _ = try client.deleteDevice("relaydummy"); Issue.record("deleted a dummy device") } catch let e as WireError { #expect(e.code == "device.not_owned") }

            // kill -9, restart: the new helper reports what the kernel holds.
            helper.process.signal(SIGKILL)
            _ = try helper.process.waitForExit()
            let h2 = try HelperFixture.start(in: gw, policy: HelperFixture.policy(clients: [0]), name: "helper2")
            let c2 = try HelperClient(path: h2.socketPath)
            let st = try c2.observe()
            #expect(st.devices.map(\.name) == ["relay0"])
            #expect(st.devices.first?.addresses.contains(A("240.1.1.1/24")) == true)
            #expect((st.devices.first?.rxPackets ?? 0) >= 3, "the probe's requests were counted")
            #expect(st.routes.count == 2 && st.routes.allSatisfy { $0.protocolNumber == 196 && $0.device == "relay0" })

            // Cleanup: devices and routes go; the operator's dummy device survives.
            try c2.cleanup()
            #expect(try gw.run(["ip", "link", "show", "relay0"], check: false).status != 0)
            #expect(try gw.ipJSON("route", "show", "proto", "196").isEmpty)
            #expect(try gw.run(["ip", "link", "show", "relaydummy"], check: false).succeeded)
            #expect(try c2.observe().devices.isEmpty)
        }
    }

    @Test("opt-in integration: a drop-policy forward chain lets relay traffic through via one counted jump; cleanup removes exactly it")
    func integrationJump() throws {
        try KernelGate.check()
        try Lab.with("integr") { lab in
            let gw = try lab.host("gw"), lan = try lab.host("lan")
            try lab.link(gw, "lan0", ["192.168.1.1/24"], lan, "eth0", ["192.168.1.20/24"])
            try lan.route("default", via: "192.168.1.1")
            try gw.enableForwarding()
            // The operator's firewall: forward policy drop, one own rule.
            try gw.loadNftables("""
            table inet filter {
                chain forward {
                    type filter hook forward priority 0; policy drop;
                    ct state established,related accept comment "operator"
                }
            }
            """)
            let before = try gw.run(["nft", "-j", "list", "table", "inet", "filter"]).stdout
            let policy = HelperFixture.policy(clients: [0, HelperKernelStateTests.probeUID], extra: """
            [integration]
            chains = ["inet filter forward"]
            """)
            let helper = try HelperFixture.start(in: gw, policy: policy)
            chmod(helper.socketPath, 0o666)
            let client = try HelperClient(path: helper.socketPath)
            // Prefix NAT so the LAN host answers a virtual source: 240.2.2.20 stays as is (remote),
            // 240.1.1.20 -> 192.168.1.20.
            let nat = NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))],
                               snat: [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24"))], remote: [P("240.2.2.0/24")])
            let (_, fd) = try client.openDevice(DeviceSpec(name: "relay0", mtu: 1400, addresses: [A("240.1.1.1/24")]))
            close(fd)
            try client.applyRoutes([RouteSpec(P("240.2.2.0/24"), device: "relay0")])

            let report = try client.apply(nat)
            #expect(report.rewrittenChains.contains { $0.contains("inet filter forward") })
            let listed = try gw.run(["nft", "-a", "list", "chain", "inet", "filter", "forward"]).stdout
            let firstRule = listed.split(separator: "\n").first { $0.contains("comment") }.map(String.init) ?? ""
            #expect(firstRule.contains("jump relay-accept") && firstRule.contains("relay:integration"), "first rule: \(firstRule)")
            #expect(try gw.run(["nft", "list", "chain", "inet", "filter", "relay-accept"]).stdout.contains("iifname \"relay*\" ct status dnat counter"))
            // Idempotent: a second apply adds no second jump.
            _ = try client.apply(nat)
            #expect(try gw.run(["nft", "list", "chain", "inet", "filter", "forward"]).stdout.components(separatedBy: "jump relay-accept").count == 2)

            let passes = try probe(gw, socket: helper.socketPath, src: "240.2.2.20", dst: "240.1.1.20")
            #expect(passes.succeeded, "probe through the jump: \(passes.stdout) \(passes.stderr)")
            // The helper's chain accepts from its devices only what its prefix maps translated: a
            // network the gateway routes elsewhere stays behind the operator's drop policy.
            let other = try lab.host("other")
            try lab.link(gw, "oth0", ["172.30.0.1/24"], other, "eth0", ["172.30.0.2/24"])
            try other.route("default", via: "172.30.0.1")
            let elsewhere = try probe(gw, socket: helper.socketPath, src: "240.2.2.20", dst: "172.30.0.2", expectNone: true)
            #expect(elsewhere.succeeded, "a packet from relay0 to a routed network passed the helper's chain: \(elsewhere.stdout)")
            let jump = try client.observe().integration.first
            #expect(jump?.from == "inet filter forward")
            #expect((jump?.packets ?? 0) >= 3, "jump counter: \(String(describing: jump))")

            // The jump is what lets it through: without it (removed by hand) the drop policy wins;
            // the next apply puts it back.
            let handle = listed.split(separator: "\n").first { $0.contains("relay:integration") }?.components(separatedBy: "# handle ").last ?? ""
            try gw.run(["nft", "delete", "rule", "inet", "filter", "forward", "handle", handle.trimmingCharacters(in: .whitespaces)])
            let blocked = try probe(gw, socket: helper.socketPath, src: "240.2.2.20", dst: "240.1.1.20", expectNone: true)
            #expect(blocked.succeeded, "traffic passed the drop policy without the jump: \(blocked.stdout)")
            #expect(try client.apply(nat).changed)
            #expect(try probe(gw, socket: helper.socketPath, src: "240.2.2.20", dst: "240.1.1.20").succeeded)

            // Cleanup removes exactly the jump and the chain: the operator's table is as it was.
            try client.cleanup()
            #expect(normalizeNftJSON(try gw.run(["nft", "-j", "list", "table", "inet", "filter"]).stdout) == normalizeNftJSON(before))
            // A missing operator chain is a clear error, and the NAT apply is refused before anything.
            try gw.run(["nft", "delete", "table", "inet", "filter"])
            do { _ = try client.apply(nat); Issue.record("apply with a missing integration chain succeeded") } catch let e as WireError {
                #expect(e.message.contains("inet filter forward does not exist"), "\(e)")
            }
        }
    }

    @Test("incremental update: adds and removes entries of a large map with a small batch; out-of-policy or missing entries are refused and change nothing")
    func incrementalUpdate() throws {
        try KernelGate.check()
        try Lab.with("incr") { lab in
            let gw = try lab.host("gw")
            let helper = try HelperFixture.start(in: gw)
            let client = try HelperClient(path: helper.socketPath)
            func m(_ i: Int) -> PrefixMapping { PrefixMapping(P("10.1.\(i / 256).\(i % 256)/32"), P("240.9.\(i / 256).\(i % 256)/32")) }
            let base = NATState(snat: (0..<2000).map(m), remote: [P("240.2.2.0/24")])
            let full = try client.apply(base)
            #expect(full.changed)
            let upd = try client.update(add: NATState(snat: (2000..<2010).map(m)), remove: NATState(snat: (0..<10).map(m)))
            #expect(upd.changedElements == 40, "10 intervals out and 10 in are 40 kernel elements, got \(upd.changedElements)")
            #expect(upd.messages < 10 && upd.rewrittenChains.isEmpty)
            let listed = try gw.run(["nft", "list", "map", "inet", "relay", "snat4"]).stdout
            #expect(listed.contains("10.1.7.217 : 240.9.7.217"))   // entry 2009 = 7 * 256 + 217
            #expect(!listed.contains("10.1.0.5 :"))
            #expect(listed.contains("10.1.0.10 : 240.9.0.10"))
            #expect(try client.observe().table.sets.first { $0.name == "snat4" }?.entries == 2000)
            // Same content as applying the resulting state in full: nothing left to do.
            let expected = NATState(snat: (10..<2010).map(m), remote: [P("240.2.2.0/24")])
            #expect(try client.apply(expected).changed == false)

            let snapshot = try gw.run(["nft", "-a", "list", "table", "inet", "relay"]).stdout
            do { _ = try client.update(add: NATState(), remove: NATState(snat: [m(5)])); Issue.record("removing a missing entry succeeded") } catch let e as WireError {
                #expect(e.code == "nat.not_found")
            }
            do { _ = try client.update(add: NATState(snat: [PrefixMapping(P("10.1.0.0/24"), P("240.8.0.0/24"))]), remove: NATState()); Issue.record("overlap accepted") } catch let e as WireError {
                #expect(e.code == "policy.refused" && e.message.contains("overlap"), "\(e)")
            }
            do { _ = try client.update(add: NATState(snat: [PrefixMapping(P("203.0.113.0/24"), P("240.8.0.0/24"))]), remove: NATState()); Issue.record("out of policy accepted") } catch let e as WireError {
                #expect(e.code == "policy.refused")
            }
            #expect(try gw.run(["nft", "-a", "list", "table", "inet", "relay"]).stdout == snapshot)
        }
    }
}

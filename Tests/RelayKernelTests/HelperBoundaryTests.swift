import Foundation
import Testing
import RelayCore
import RelayHelperAPI
import RelayIPC
import RelayTestHarness
import RelayWire

/// The privilege boundary, checked with what the kernel holds afterwards (`ip -j route show table
/// all`, `nft list`, /proc/PID/status) and with a client the helper did not write
/// (Tests/Support/helper_client.py).
@Suite("kernel: relay-helper's boundary (derived routes, policy per kind, DNAT from its devices, local DoS, capabilities, leftover devices)",
       .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct HelperBoundaryTests {
    static let client = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Support/helper_client.py").standardized.path
    static let virtual = ["240.0.0.0/4", "64:ff9b::/32"]

    /// Every route through `dev` in every table, both families, as iproute2 lists them.
    func routes(_ host: LabHost, through dev: String) throws -> [(type: String, dst: IPPrefix, table: String)] {
        var out: [(String, IPPrefix, String)] = []
        for fam in ["-4", "-6"] {
            let text = try host.run(["ip", "-j", fam, "route", "show", "table", "all"]).stdout
            let list = (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]]) ?? []
            for e in list where e["dev"] as? String == dev {
                let d = e["dst"] as? String ?? "?"
                let p: IPPrefix
                if d == "default" { p = P(fam == "-4" ? "0.0.0.0/0" : "::/0") }
                else if d.contains("/") { p = try InterfaceAddress(parsing: d).prefix }
                else if let a = IPAddress(d) { p = IPPrefix(network: a, length: a.family == .ipv4 ? 32 : 128) }
                else { throw HarnessError("unreadable route destination \(d)") }
                out.append((e["type"] as? String ?? "unicast", p, "\(e["table"] ?? "main")"))
            }
        }
        return out
    }

    static func inside(_ p: IPPrefix, _ list: [String]) -> Bool {
        list.map(P).contains { $0.family == p.family && $0.length <= p.length && $0.contains(p.address) }
    }

    @Test("no device address shape leaves a route outside the policy: the prefix length is checked, the kernel adds no prefix route, a leftover address is removed")
    func derivedRoutes() throws {
        try KernelGate.check()
        try Lab.with("drv") { lab in
            let gw = try lab.host("gw")
            // A device a crash left behind, carrying an address whose derived routes leave the policy.
            try gw.ip("tuntap", "add", "relay0", "mode", "tun")
            try gw.ip("link", "set", "relay0", "up")
            try gw.ip("addr", "add", "240.9.9.9/2", "dev", "relay0")
            let helper = try HelperFixture.start(in: gw, policy: HelperFixture.policy(allowed: Self.virtual))
            let client = try HelperClient(path: helper.socketPath)
            for shape in ["240.1.1.1/1", "240.1.1.1/3", "240.1.1.1/0", "240.1.1.1/2", "64:ff9b::1/1", "64:ff9b::1/31", "64:ff9b::1/16", "64:ff9b::1/0"] {
                do {
                    let (_, fd) = try client.openDevice(DeviceSpec(name: "relay0", mtu: 1400, addresses: [A(shape)]))
                    close(fd)
                    Issue.record("\(shape) was accepted")
                } catch let e as WireError {
                    #expect(e.code == "policy.refused" && e.message.contains("devices.addresses"), "\(shape): \(e)")
                }
            }
            // Accepted shapes, the fd held open (a live device) while the kernel is inspected.
            let (dev, fd) = try client.openDevice(DeviceSpec(name: "relay0", mtu: 1400, addresses: [A("240.1.1.1/24"), A("64:ff9b:1::1/96"), A("240.7.7.7/32")]))
            defer { close(fd) }
            #expect(Set(dev.addresses) == [A("240.1.1.1/24"), A("64:ff9b:1::1/96"), A("240.7.7.7/32")], "the leftover 240.9.9.9/2 is gone: \(dev.addresses)")
            let seen = try routes(gw, through: "relay0")
            #expect(seen.contains { $0.type == "local" && $0.dst == P("240.1.1.1/32") }, "the kernel's local route is there: \(seen)")
            for r in seen {
                if r.type == "multicast" && r.dst == P("ff00::/8") { continue }  // every IPv6 device's multicast route (table local)
                #expect(Self.inside(r.dst, Self.virtual), "route outside the policy: \(r.type) \(r.dst) table \(r.table)")
            }
            // noprefixroute: no 240.1.1.0/24 or 64:ff9b:1::/96 route in the main table.
            #expect(!seen.contains { $0.type == "unicast" && ($0.dst == P("240.1.1.0/24") || $0.dst == P("64:ff9b:1::/96")) }, "\(seen)")
            let flags = try gw.ipJSON("addr", "show", "relay0").first?["addr_info"] as? [[String: Any]] ?? []
            #expect(flags.count == 3, "no link-local address either: \(flags)")
            for a in flags { #expect(a["noprefixroute"] as? Bool == true, "\(a)") }
        }
    }

    @Test("routes: each kind against its own list; one that would take traffic from another owner's route (a /25 of the connected LAN) is refused and nothing changes")
    func routeKinds() throws {
        try KernelGate.check()
        try Lab.with("rtk") { lab in
            let gw = try lab.host("gw"), lan = try lab.host("lan")
            try lab.link(gw, "lan0", ["192.168.1.1/24"], lan, "eth0", ["192.168.1.20/24"])
            // An operator who put the LAN range into routes.destinations by mistake.
            let helper = try HelperFixture.start(in: gw, policy: HelperFixture.policy(translate: ["192.168.0.0/16", "240.0.0.0/4"],
                                                                                      routes: ["192.168.0.0/16", "240.0.0.0/4"], addresses: ["240.0.0.0/4"]))
            let client = try HelperClient(path: helper.socketPath)
            let (_, fd) = try client.openDevice(DeviceSpec(name: "relay0", mtu: 1400))
            defer { close(fd) }
            for bad in ["192.168.1.0/25", "192.168.1.20/32", "192.168.1.0/24"] {
                do {
                    _ = try client.applyRoutes([RouteSpec(P("240.2.2.0/24"), device: "relay0"), RouteSpec(P(bad), device: "relay0")])
                    Issue.record("\(bad) accepted")
                } catch let e as WireError {
                    #expect(e.code == "route.shadows" || e.code == "route.not_owned", "\(bad): \(e)")
                    #expect(e.message.contains("192.168.1.0/24"), "\(e.message)")
                }
            }
            #expect(try gw.ipJSON("route", "show", "proto", "196").isEmpty, "a refused request changes nothing")
            #expect(try client.applyRoutes([RouteSpec(P("240.2.2.0/24"), device: "relay0")]).routesChanged == 1)
            // The narrow list: a LAN is translatable but not routable; a default route needs [exit].
            let narrow = try HelperFixture.start(in: gw, policy: HelperFixture.policy(translate: ["192.168.0.0/16", "240.0.0.0/4"], routes: ["240.0.0.0/4"],
                                                                                      addresses: ["240.0.0.0/4"]), name: "narrow")
            let c2 = try HelperClient(path: narrow.socketPath)
            for (bad, why) in [("10.5.0.0/16", "routes.destinations"), ("0.0.0.0/0", "[exit] default_route")] {
                do { _ = try c2.applyRoutes([RouteSpec(P(bad), device: "relay0")]); Issue.record("\(bad) accepted") } catch let e as WireError {
                    #expect(e.code == "policy.refused" && e.message.contains(why), "\(e)")
                }
            }
            do {
                _ = try c2.apply(NATState(snat: [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24"))], remote: [P("192.168.2.0/24")]))
                Issue.record("a LAN as remote set accepted")
            } catch let e as WireError { #expect(e.message.contains("routes.destinations"), "\(e)") }
        }
    }

    @Test("inbound translation applies only to packets from the helper's devices: a LAN host's packet to the virtual prefix is not DNAT'ed, the device's is")
    func dnatOnlyFromDevices() throws {
        try KernelGate.check()
        try Lab.with("dnif") { lab in
            let gw = try lab.host("gw"), lan = try lab.host("lan")
            try lab.link(gw, "lan0", ["192.168.1.1/24"], lan, "eth0", ["192.168.1.20/24"])
            try lan.route("default", via: "192.168.1.1")
            try gw.enableForwarding()
            let helper = try HelperFixture.start(in: gw, policy: HelperFixture.policy(clients: [0, HelperKernelStateTests.probeUID]))
            chmod(helper.socketPath, 0o666)
            let client = try HelperClient(path: helper.socketPath)
            let (_, fd) = try client.openDevice(DeviceSpec(name: "relay0", mtu: 1400, addresses: [A("240.1.1.1/24")]))
            close(fd)  // the probe attaches later
            try client.apply(NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))],
                                      snat: [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24"))], remote: [P("240.2.2.0/24")]))
            let rule = try gw.run(["nft", "list", "chain", "inet", "relay", "prerouting"]).stdout
            #expect(rule.contains("iifname \"relay*\" ip daddr @dnat4"), "\(rule)")
            func dnatPackets() throws -> Int {
                let text = try gw.run(["nft", "list", "chain", "inet", "relay", "prerouting"]).stdout
                guard let r = text.range(of: #"dnat4 counter packets (\d+)"#, options: .regularExpression) else { return -1 }
                return Int(text[r].split(separator: " ")[3]) ?? -1
            }
            // From the LAN: a hairpin through the virtual prefix would reach 192.168.1.20; not any more.
            _ = try lan.run(["ping", "-c", "2", "-W", "1", "-i", "0.2", "240.1.1.20"], check: false)
            #expect(try dnatPackets() == 0, "a LAN packet matched the DNAT rule")
            // From the device: translated and answered.
            try client.applyRoutes([RouteSpec(P("240.2.2.0/24"), device: "relay0")])
            let probe = try gw.run([try Binaries.path("relay-lab"), "tun-probe", "--socket", helper.socketPath, "--device", "relay0", "--mtu", "1400",
                                    "--address", "240.1.1.1/24", "--src", "240.2.2.20", "--dst", "240.1.1.20"], as: HelperKernelStateTests.probeUID, check: false)
            #expect(probe.succeeded && probe.stdout.contains("3/3 echo replies"), "\(probe.stdout) \(probe.stderr)")
            #expect(try dnatPackets() >= 1)
        }
    }

    @Test("a stranger opening hundreds of connections gets no slot and no thread, while relayd's requests keep being served; per-uid and per-pool bounds; idle and half-open clients are closed")
    func localDenialOfService() throws {
        try KernelGate.check()
        try Lab.with("dos") { lab in
            let gw = try lab.host("gw")
            let other: UInt32 = 4343
            let helper = try HelperFixture.start(in: gw, policy: HelperFixture.policy(clients: [0, other], extra: """
            [limits]
            idle_seconds = 2
            frame_seconds = 1
            max_connections_per_uid = 3
            """))
            chmod(helper.socketPath, 0o666)
            let flood = try gw.spawn(["/usr/bin/python3", Self.client, "flood", helper.socketPath, "300", "6"], label: "stranger", as: 65534)
            Thread.sleep(forTimeInterval: 0.5)
            var served = 0, maxThreads = 0
            let t0 = Date()
            while Date().timeIntervalSince(t0) < 4 {
                let c = try HelperClient(path: helper.socketPath)
                #expect(try c.hello().permission == "write")
                served += 1
                let status = (try? String(contentsOfFile: "/proc/\(helper.process.pid)/status", encoding: .utf8)) ?? ""
                if let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Threads:") }), let n = Int(line.split(separator: "\t").last ?? "") {
                    maxThreads = max(maxThreads, n)
                }
                Thread.sleep(forTimeInterval: 0.05)
            }
            _ = try flood.waitForExit(timeout: 10)
            let counts = flood.log()
            #expect(served >= 20, "served \(served) requests during the flood")
            #expect(counts.contains("\"opened\""), "\(counts)")
            if let d = counts.split(separator: "\n").last.flatMap({ try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Int] }) {
                #expect((d["opened"] ?? 0) >= 300, "the stranger opened \(d)")
            }
            #expect(maxThreads < 12, "strangers got threads: \(maxThreads)")

            // Per uid: root holds its 3, the 4th is refused, and another client uid is still served.
            let hold = try gw.spawn(["/usr/bin/python3", Self.client, "hold", helper.socketPath, "3", "3"], label: "hold")
            try waitUntil("three connections held", timeout: 5) { hold.log().contains("holding 3") }
            Thread.sleep(forTimeInterval: 0.2)
            do { _ = try HelperClient(path: helper.socketPath).hello(); Issue.record("a 4th connection of uid 0 was served") } catch let e as WireError {
                #expect(e.code == "helper.busy" && e.message.contains("max_connections_per_uid"), "\(e)")
            }
            let otherHello = try gw.run(["/usr/bin/python3", Self.client, "hello", helper.socketPath], as: uid_t(other))
            #expect(otherHello.stdout.contains("\"permission\": \"write\""), "\(otherHello.stdout)")
            _ = try hold.waitForExit(timeout: 10)

            // Half a frame: closed with a timeout answer after frame_seconds (1 s), long before idle.
            let partial = try gw.run(["/usr/bin/python3", Self.client, "partial", helper.socketPath, "5"])
            #expect(partial.stdout.contains("\"closed\": true") && partial.stdout.contains("helper.timeout"), "\(partial.stdout)")
            if let d = try? JSONSerialization.jsonObject(with: Data(partial.stdout.utf8)) as? [String: Any], let after = d["after"] as? Double {
                #expect(after >= 0.8 && after < 2.5, "closed after \(after) s")
            }
            // Idle: a connection that sends nothing is closed after idle_seconds (2 s).
            let idle = try UnixConnection.connect(path: helper.socketPath)
            let t1 = Date()
            let answer = try idle.receive()
            #expect(answer.map { String(decoding: $0.payload, as: UTF8.self) }?.contains("timed out waiting for a request") == true)
            #expect(Date().timeIntervalSince(t1) > 1.5)
        }
    }

    @Test("started with an ambient CAP_NET_ADMIN as an unprivileged user, the helper keeps it effective but no inheritable or ambient capability, and its socket is born 0666")
    func capabilities() throws {
        try KernelGate.check()
        try Lab.with("caps") { lab in
            let gw = try lab.host("gw")
            let dir = lab.logDirectory.appendingPathComponent("caps-run")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            chmod(lab.logDirectory.path, 0o755)
            chown(dir.path, 65534, 65534)
            let policyPath = dir.appendingPathComponent("policy.toml").path
            try HelperFixture.policy(clients: [0]).replacingOccurrences(of: "read_uids = []", with: "read_uids = []\ngids = [4242]")
                .write(toFile: policyPath, atomically: true, encoding: .utf8)
            chmod(policyPath, 0o644)
            let sock = dir.appendingPathComponent("helper.sock").path
            let p = try gw.spawn(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+net_admin", "--ambient-caps=+net_admin", "--",
                                  try Binaries.path("relay-helper"), "--socket", sock, "--policy", policyPath], label: "helper-caps")
            try waitUntil("relay-helper socket", timeout: 10) {
                if !p.isRunning { throw HarnessError("relay-helper exited: \(p.log())") }
                return FileManager.default.fileExists(atPath: sock)
            }
            let status = try String(contentsOfFile: "/proc/\(p.pid)/status", encoding: .utf8)
            func caps(_ k: String) -> UInt64 {
                let line = status.split(separator: "\n").first { $0.hasPrefix(k + ":") } ?? ""
                return UInt64(line.split(separator: "\t").last ?? "", radix: 16) ?? .max
            }
            let netAdmin: UInt64 = 1 << 12
            #expect(caps("CapInh") == 0, "\(status)")
            #expect(caps("CapAmb") == 0, "\(status)")
            #expect(caps("CapEff") == netAdmin && caps("CapPrm") == netAdmin, "\(status)")
            #expect(status.contains("NoNewPrivs:\t1"), "\(status)")
            var st = stat()
            #expect(stat(sock, &st) == 0 && st.st_mode & 0o7777 == 0o666 && st.st_mode & S_IFMT == S_IFSOCK, "mode \(String(st.st_mode, radix: 8))")
            // It works: root is a client; a user whose only link to the policy is a supplementary
            // group (gids = [4242]) is one too, by the kernel's record of its groups.
            #expect(try HelperClient(path: sock).hello().permission == "write")
            let viaGroup = try gw.run(["setpriv", "--reuid=5555", "--regid=5555", "--groups=4242", "--", "/usr/bin/python3", Self.client, "hello", sock])
            #expect(viaGroup.stdout.contains("\"permission\": \"write\""), "\(viaGroup.stdout)")
            let stranger = try gw.run(["setpriv", "--reuid=5555", "--regid=5555", "--clear-groups", "--", "/usr/bin/python3", Self.client, "hello", sock])
            #expect(stranger.stdout.contains("not_authorized") || stranger.stdout.contains("is not a client"), "\(stranger.stdout)")
        }
    }

    @Test("leftover persistent devices: a TAP device under the helper's name is replaced; one that cannot be configured completely is removed, not left half-configured")
    func leftoverDevices() throws {
        try KernelGate.check()
        try Lab.with("left") { lab in
            let gw = try lab.host("gw")
            try gw.ip("tuntap", "add", "relay0", "mode", "tap")
            try gw.ip("tuntap", "add", "eth9", "mode", "tun")  // not the helper's: untouched
            let helper = try HelperFixture.start(in: gw)
            let client = try HelperClient(path: helper.socketPath)
            let (dev, fd) = try client.openDevice(DeviceSpec(name: "relay0", mtu: 1400, addresses: [A("240.1.1.1/24")]))
            close(fd)
            let info = (try gw.ipJSON("-d", "link", "show", "relay0").first?["linkinfo"] as? [String: Any])?["info_data"] as? [String: Any]
            #expect(info?["type"] as? String == "tun", "\(String(describing: info))")
            #expect(dev.addresses == [A("240.1.1.1/24")])
            // A device whose IPv6 is off cannot take the IPv6 address asked for: the open fails and
            // the device is gone (with whatever part of the request had been applied).
            try gw.ip("tuntap", "add", "relay1", "mode", "tun")
            try gw.sysctl("net.ipv6.conf.relay1.disable_ipv6", "1")
            do {
                let (_, fd1) = try client.openDevice(DeviceSpec(name: "relay1", mtu: 1400, addresses: [A("240.1.2.1/24"), A("64:ff9b:1::1/96")]))
                close(fd1)
                Issue.record("a device without IPv6 took an IPv6 address")
            } catch let e as WireError { #expect(e.code.hasPrefix("kernel."), "\(e)") }
            #expect(try gw.run(["ip", "link", "show", "relay1"], check: false).status != 0, "relay1 was left half-configured")
            #expect(try gw.ipJSON("link", "show").contains { $0["ifname"] as? String == "eth9" })
            // A restart keeps the (configured) device: relayd re-attaches to it.
            helper.process.signal(SIGKILL)
            _ = try helper.process.waitForExit()
            let again = try HelperFixture.start(in: gw, name: "helper2")
            #expect(try HelperClient(path: again.socketPath).observe().devices.map(\.name) == ["relay0"])
        }
    }
}

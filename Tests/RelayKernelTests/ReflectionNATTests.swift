import Foundation
import Testing
import RelayControlAPI
import RelayCore
import RelayTestHarness

/// A node behind an nftables NAT router asks three reflectors on the "internet" side (three relayds)
/// for its public address from one socket (its tunnel port): with plain masquerade they agree
/// (endpoint-independent mapping, quorum 3 of 3, the address conntrack shows); with fully-random
/// port mapping each sees another port (endpoint-dependent, no quorum on one endpoint).
@Suite("kernel: reflection behind NAT", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct ReflectionNATTests {
    static let uid: UInt32 = 65534

    func relayd(_ h: LabHost, _ lab: Lab, _ name: String, _ config: String) throws -> (LabProcess, String) {
        let d = lab.logDirectory.appendingPathComponent("relayd-\(name)").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        try config.write(toFile: d + "/relayd.toml", atomically: true, encoding: .utf8)
        chmod(lab.logDirectory.path, 0o755)
        for p in [d, d + "/relayd.toml"] { chown(p, Self.uid, Self.uid) }
        let p = try h.spawn([try Binaries.path("relayd"), "--config", d + "/relayd.toml", "--state-dir", d + "/state", "--socket", d + "/relayd.sock",
                             "--helper-socket", d + "/none.sock"], label: "relayd-\(name)", as: Self.uid)
        try waitUntil("relayd \(name)") { if !p.isRunning { throw HarnessError(p.log()) }; return FileManager.default.fileExists(atPath: d + "/relayd.sock") }
        return (p, d + "/relayd.sock")
    }

    func run(randomFully: Bool) throws {
        try Lab.with(randomFully ? "refl-edm" : "refl-eim") { lab in
            let node = try lab.host("node"), nat = try lab.host("nat")
            try lab.link(node, "eth0", ["10.0.0.2/24"], nat, "lan0", ["10.0.0.1/24"])
            try node.route("default", via: "10.0.0.1")
            try nat.enableForwarding()
            var keys: [String] = []
            for i in 1...3 {
                let r = try lab.host("refl\(i)")
                try lab.link(nat, "wan\(i)", ["198.51.\(i).1/24"], r, "eth0", ["198.51.\(i).2/24"])
                try r.route("default", via: "198.51.\(i).1")
                _ = try relayd(r, lab, "refl\(i)", "[node]\nname = \"refl\(i)\"\n")
                keys.append(try Command.run([try Binaries.path("relayctl"), "keygen", "--json"]).stdout
                    .components(separatedBy: "\"public_key\":\"").last!.components(separatedBy: "\"").first!)
            }
            // NAT: masquerade on every wan interface, plain or fully-random.
            try nat.loadNftables("""
            table ip labnat {
                chain post { type nat hook postrouting priority 100; policy accept;
                    oifname "wan*" masquerade\(randomFully ? " fully-random" : "")
                }
            }
            """)
            var cfg = "[node]\nname = \"node\"\n[reflector]\nenabled = true\n"
            for i in 1...3 { cfg += "[[peer]]\nname = \"refl\(i)\"\npublic_key = \"\(keys[i - 1])\"\nendpoint = \"198.51.\(i).2:51820\"\n" }
            let (_, sock) = try relayd(node, lab, "node", cfg)
            var r: ReflectResponse?
            try waitUntil("three observations", timeout: 15) {
                let out = try node.run([try Binaries.path("relayctl"), "reflect", "--json", "--socket", sock]).stdout
                r = try ControlJSON.decoder().decode(ReflectResponse.self, from: Data(out.utf8))
                return r?.observations.count == 3
            }
            // A local address change makes relayd ask again at once (not after its 60-second timer).
            let firstAt = r!.observations.map(\.at).max()!
            usleep(1_100_000)  // the API's timestamps have one-second resolution
            try node.ip("addr", "add", "10.0.0.3/24", "dev", "eth0")
            try waitUntil("re-asked after the address change", timeout: 5) {
                let out = try node.run([try Binaries.path("relayctl"), "reflect", "--json", "--socket", sock]).stdout
                return try ControlJSON.decoder().decode(ReflectResponse.self, from: Data(out.utf8)).observations.allSatisfy { $0.at > firstAt }
            }
            let v = r!.ipv4
            let seen = Set(r!.observations.map(\.mapped.description))
            #expect(r!.observations.allSatisfy { $0.mapped.address.description.hasPrefix("198.51.") }, "each reflector sees the router's address on its side: \(seen)")
            // The router's mapping for the node's tunnel port, as conntrack has it.
            let ct = try nat.run(["conntrack", "-L", "-p", "udp", "--orig-src", "10.0.0.2", "--orig-port-src", "51820"], check: false).stdout
            for o in r!.observations {
                #expect(ct.contains("dport=\(o.mapped.port)"), "conntrack has no mapping to port \(o.mapped.port): \(ct)")
            }
            let ports = Set(r!.observations.map(\.mapped.port))
            if randomFully {
                #expect(ports.count == 3, "fully-random: one port per destination: \(seen)")
                #expect(v.mapping == .endpointDependent, "\(v)")
                #expect(v.address == nil && v.explanation.contains("no quorum"))
            } else {
                #expect(ports.count == 1, "masquerade keeps the port for every destination: \(seen)")
                #expect(v.mapping == .endpointIndependent, "\(v)")
                // Each reflector sees its own side's router address, so the endpoints differ by address
                // here (a multi-homed NAT); the port is the same everywhere: endpoint-independent.
                #expect(v.observers == 3)
            }
        }
    }

    @Test("plain masquerade: the same mapped port from all three reflectors, matching conntrack; a local address change triggers a new check")
    func endpointIndependent() throws { try KernelGate.check(); try run(randomFully: false) }

    @Test("fully-random masquerade: a different port per reflector (endpoint-dependent), no quorum, matching conntrack")
    func endpointDependent() throws { try KernelGate.check(); try run(randomFully: true) }

    // MARK: RFC 5780 behaviour discovery through real NATs

    enum Router: String, CaseIterable, Sendable {
        case none, masquerade, fullyRandom = "fully-random", fullCone = "full-cone", restrictedCone = "restricted-cone"
        /// Masquerade keeps the node's port, so public port = node port.
        /// The router's nftables (shared with the hole-punching matrix: `LabNAT`): masquerade keeps
        /// ports; "cones" add inbound DNAT to the node (from anyone, or, per mapped port, from
        /// addresses the node has sent to from it); hairpinning only with the full cone.
        var ruleset: String? { LabNAT(rawValue: rawValue)!.ruleset(host: "10.0.0.2", hairpin: self == .fullCone) }
        var expected: (mapping: NATBehaviour.Kind, filtering: NATBehaviour.Kind, hairpin: Bool?, natdiscovery: [String]) {
            switch self {
            case .none: return (.noNAT, .endpointIndependent, nil, ["No NAT! (Endpoint Independent Mapping)", "NAT with Endpoint Independent Filtering!"])
            case .masquerade: return (.endpointIndependent, .addressAndPortDependent, false,
                                      ["NAT with Endpoint Independent Mapping!", "NAT with Address and Port Dependent Filtering!"])
            case .fullyRandom: return (.addressAndPortDependent, .addressAndPortDependent, false,
                                       ["NAT with Address and Port Dependent Mapping!", "NAT with Address and Port Dependent Filtering!"])
            case .fullCone: return (.endpointIndependent, .endpointIndependent, true,
                                    ["NAT with Endpoint Independent Mapping!", "NAT with Endpoint Independent Filtering!"])
            case .restrictedCone: return (.endpointIndependent, .addressDependent, false,
                                          ["NAT with Endpoint Independent Mapping!", "NAT with Address Dependent Filtering!"])
            }
        }
    }

    @Test("RFC 5780 through real NATs: relayd and turnutils_natdiscovery classify mapping and filtering alike, with three two-address relayd reflectors",
          arguments: Router.allCases)
    func behaviour(_ router: Router) throws {
        try KernelGate.check()
        try Lab.with("refl-\(router.rawValue)") { lab in
            let node = try lab.host("node"), nat = try lab.host("nat")
            try lab.link(node, "eth0", ["10.0.0.2/24"], nat, "lan0", ["10.0.0.1/24"])
            try node.route("default", via: "10.0.0.1")
            try nat.enableForwarding()
            var servers: [String] = []
            for i in 1...3 {
                let r = try lab.host("refl\(i)")
                try lab.link(nat, "wan\(i)", ["198.51.\(i).1/24"], r, "eth0", ["198.51.\(i).2/24", "198.51.\(i).3/24"])
                try r.route("default", via: "198.51.\(i).1")
                _ = try relayd(r, lab, "refl\(i)", "[node]\nname = \"refl\(i)\"\n[reflector]\naddress = \"198.51.\(i).2\"\nother_address = \"198.51.\(i).3\"\nrate = 1000\nburst = 1000\n")
                servers.append("\"198.51.\(i).2:3478\"")
            }
            if let rules = router.ruleset { try nat.loadNftables(rules) }
            let want = router.expected
            // coturn's client first, each discovery on its own socket (separate runs), bound to the
            // node's address so it can tell "no NAT".
            for (flag, line) in zip(["-m", "-f"], want.natdiscovery) {
                let out = try node.run(["turnutils_natdiscovery", flag, "-L", "10.0.0.2", "198.51.1.2"], timeout: 90, check: false)
                #expect(out.stdout.contains(line), "turnutils_natdiscovery \(flag) behind \(router.rawValue): \(out.stdout.suffix(600))")
            }
            let cfg = "[node]\nname = \"node\"\n[reflector]\nrto_ms = 100\nretransmissions = 3\nservers = [\(servers.joined(separator: ", "))]\n"
            let (_, sock) = try relayd(node, lab, "node", cfg)
            var r: ReflectResponse?
            try waitUntil("behaviour measured", timeout: 20) {
                let out = try node.run([try Binaries.path("relayctl"), "reflect", "--json", "--socket", sock]).stdout
                r = try ControlJSON.decoder().decode(ReflectResponse.self, from: Data(out.utf8))
                return r?.behaviour != nil && r?.observations.count == 3
            }
            let b = r!.behaviour!
            #expect(b.mapping == want.mapping, "\(router.rawValue): \(b.explanation)")
            #expect(b.filtering == want.filtering, "\(router.rawValue): \(b.explanation)")
            #expect(b.hairpinning == want.hairpin, "\(router.rawValue): \(b.explanation)")
            // Test I's mapped address, against what the router's conntrack holds (or the node's own).
            if router == .none {
                #expect(b.mapped.description == "10.0.0.2:51820")
            } else {
                let ct = try nat.run(["conntrack", "-L", "-p", "udp", "--orig-src", "10.0.0.2", "--orig-port-src", "51820", "--orig-dst", b.server.address.description], check: false).stdout
                #expect(ct.contains("dst=\(b.mapped.address) sport=\(b.server.port) dport=\(b.mapped.port)"), "conntrack: \(ct)")
            }
            let text = try node.run([try Binaries.path("relayctl"), "reflect", "--socket", sock]).stdout
            #expect(text.contains("mapping      \(want.mapping.rawValue)") && text.contains("filtering    \(want.filtering.rawValue)"), "\(text)")
        }
    }
}

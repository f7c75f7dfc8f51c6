import Foundation
import Testing
import RelayControlAPI
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
}

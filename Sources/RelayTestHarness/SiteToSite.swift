import Foundation

/// The headline scenario, in namespaces: site A and site B both use 192.168.1.0/24; gateways
/// 10.10.10.10 and 10.20.20.20 reach each other over an underlay router; each gateway runs the real
/// relay-helper and relayd (relayd as an unprivileged uid). Hosts only have a default route.
public final class SiteToSite {
    public let lab: Lab
    public let hostA: LabHost, gwA: LabHost, underlay: LabHost, gwB: LabHost, hostB: LabHost
    /// With `ipv6: true`: an IPv6-only segment at each site (`lan6` on the gateway, fd00:cafe::1/64;
    /// the same ULA prefix at both sites) with one host, fd00:cafe::30 (mapped to 192.168.1.30 by
    /// site.map) and fd00:cafe::31 (no IPv4 name).
    public private(set) var host6A: LabHost?, host6B: LabHost?
    public var relaydA: LabProcess!, relaydB: LabProcess!
    /// The gateways' node keys (base64), known after `start`.
    public private(set) var publicKeyA = "", publicKeyB = ""
    public var helperA: HelperFixture!, helperB: HelperFixture!
    public let relaydUID: UInt32 = 65534
    public var socketA: String { dir("A") + "/relayd.sock" }
    public var socketB: String { dir("B") + "/relayd.sock" }

    /// With `relays > 0`: each gateway sits behind its own masquerading NAT router (natA at
    /// 100.64.1.2, natB at 100.64.2.2 on the underlay), the underlay drops everything between the
    /// two NAT routers (no direct path at all), and relay hosts (relay1 at 100.64.9.9, relay2 at
    /// 100.64.8.8) sit on the underlay: the gateways reach each other only through a relay.
    public private(set) var relayHosts: [LabHost] = []
    /// The NAT routers in front of the gateways (with `relays > 0`).
    public private(set) var natA: LabHost!, natB: LabHost!
    public private(set) var relayKeys: [String] = []
    public var relayProcesses: [LabProcess] = []
    public static let relayAddresses = ["100.64.9.9", "100.64.8.8"]
    let behindNAT: Bool

    public init(_ lab: Lab, extraHostNumbers: [Int] = [21, 77], ipv6: Bool = false, relays: Int = 0) throws {
        self.lab = lab
        behindNAT = relays > 0
        hostA = try lab.host("hostA"); gwA = try lab.host("gwA"); underlay = try lab.host("underlay")
        gwB = try lab.host("gwB"); hostB = try lab.host("hostB")
        let extra = extraHostNumbers.map { "192.168.1.\($0)/24" }
        try lab.link(hostA, "eth0", ["192.168.1.20/24"] + extra, gwA, "lan0", ["192.168.1.1/24"])
        try lab.link(hostB, "eth0", ["192.168.1.20/24"] + extra, gwB, "lan0", ["192.168.1.1/24"])
        if behindNAT {
            let natA = try lab.host("natA"), natB = try lab.host("natB")
            self.natA = natA; self.natB = natB
            try lab.link(gwA, "wan0", ["10.10.10.10/24"], natA, "lan0", ["10.10.10.1/24"])
            try lab.link(gwB, "wan0", ["10.20.20.20/24"], natB, "lan0", ["10.20.20.1/24"])
            try lab.link(natA, "wan0", ["100.64.1.2/24"], underlay, "a0", ["100.64.1.1/24"])
            try lab.link(natB, "wan0", ["100.64.2.2/24"], underlay, "b0", ["100.64.2.1/24"])
            for (n, gw) in [(natA, "100.64.1.1"), (natB, "100.64.2.1")] { try n.natRouter(outInterface: "wan0"); try n.route("default", via: gw) }
            for i in 0..<relays {
                let h = try lab.host("relay\(i + 1)")
                let a = SiteToSite.relayAddresses[i], net = a.split(separator: ".").prefix(3).joined(separator: ".")
                try lab.link(h, "eth0", ["\(a)/24"], underlay, "r\(i)", ["\(net).1/24"])
                try h.route("default", via: "\(net).1")
                relayHosts.append(h)
            }
            try underlay.loadNftables("""
            table inet relaylab_nodirect {
              chain forward {
                type filter hook forward priority 0; policy accept;
                iifname "a0" oifname "b0" drop
                iifname "b0" oifname "a0" drop
              }
            }
            """)
        } else {
            try lab.link(gwA, "wan0", ["10.10.10.10/24"], underlay, "a0", ["10.10.10.1/24"])
            try lab.link(gwB, "wan0", ["10.20.20.20/24"], underlay, "b0", ["10.20.20.1/24"])
        }
        for g in [gwA, gwB, underlay] { try g.enableForwarding() }
        try hostA.route("default", via: "192.168.1.1")
        try hostB.route("default", via: "192.168.1.1")
        try gwA.route("default", via: "10.10.10.1")
        try gwB.route("default", via: "10.20.20.1")
        if ipv6 {
            let a = try lab.host("host6A"), b = try lab.host("host6B")
            for (h, gw) in [(a, gwA), (b, gwB)] {
                try lab.link(h, "eth0", ["fd00:cafe::30/64"], gw, "lan6", ["fd00:cafe::1/64"])
                // A second address the host never picks by itself (deprecated), for explicit tests.
                try h.ip("-6", "addr", "add", "fd00:cafe::31/64", "dev", "eth0", "preferred_lft", "0")
                try h.route("default", via: "fd00:cafe::1")
            }
            host6A = a; host6B = b
        }
    }

    public func dir(_ site: String) -> String { lab.logDirectory.appendingPathComponent("relayd-\(site)").path }

    /// A fresh X25519 key pair from `relayctl keygen`.
    static func keygen() throws -> (priv: String, pub: String) {
        let out = try Command.run([try Binaries.path("relayctl"), "keygen", "--json"]).stdout
        guard let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: String],
              let priv = obj["private_key"], let pub = obj["public_key"] else { throw HarnessError("relayctl keygen printed \(out)") }
        return (priv, pub)
    }

    public static func config(name: String, site: String, virtual4: String, virtual6: String, virtual6Lan: String, peerName: String, peerKey: String,
                              peerEndpoint: String, peerSite: String, peerVirtual4: String, peerVirtual6: String, peerVirtual6Lan: String, nodeExtra: String = "") -> String {
        """
        [node]
        name = "\(name)"
        listen_port = 51820
        \(nodeExtra)
        [site]
        name = "\(site)"
        lan4 = "192.168.1.0/24"
        virtual4 = "\(virtual4)"
        virtual6 = "\(virtual6)"
        lan6 = "fd00:cafe::/64"
        virtual6_lan = "\(virtual6Lan)"
        map = [{ ipv4 = "192.168.1.30", ipv6 = "fd00:cafe::30" }]
        [[peer]]
        name = "\(peerName)"
        public_key = "\(peerKey)"
        \(peerEndpoint.isEmpty ? "" : "endpoint = \"\(peerEndpoint)\"")
          [[peer.site]]
          name = "\(peerSite)"
          lan4 = "192.168.1.0/24"
          virtual4 = "\(peerVirtual4)"
          virtual6 = "\(peerVirtual6)"
          virtual6_lan = "\(peerVirtual6Lan)"
        """
    }

    /// Starts both helpers and both relayds; waits until each relayd has applied its state.
    /// `nodeExtra`: lines for both relayds' [node] table (e.g. "offload = false").
    /// `extraConfigA`: lines appended to A's configuration only (after its peer B).
    /// `relayExtra`: lines for the relays' [relay] table.
    /// `frontDoor`: each relay also serves its WebSocket transport (TLS on port 8443, a certificate
    /// from `relayctl relay cert`), and the gateways list it (`websocket`, `spki_sha256`).
    public func start(extraConfig: String = "", nodeExtra: String = "", extraConfigA: String = "", relayExtra: String = "", frontDoor: Bool = false) throws {
        let ka = try SiteToSite.keygen(), kb = try SiteToSite.keygen()
        publicKeyA = ka.pub; publicKeyB = kb.pub
        var relaysConfig = ""
        for (i, h) in relayHosts.enumerated() {
            let k = try SiteToSite.keygen()
            relayKeys.append(k.pub)
            var door = ""
            relaysConfig += "\n[[relays]]\naddress = \"\(SiteToSite.relayAddresses[i]):51821\"\npublic_key = \"\(k.pub)\"\n"
            if frontDoor {
                let d = dir("R\(i + 1)") + "/tls"
                try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
                let out = try Command.run([try Binaries.path("relayctl"), "relay", "cert", "--self-signed", SiteToSite.relayAddresses[i], "--out", d, "--json"]).stdout
                guard let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: String], let cert = obj["certificate"], let key = obj["privateKey"],
                      let pin = obj["spkiSHA256"] else { throw HarnessError("relayctl relay cert printed \(out)") }
                for p in [d, cert, key] { chown(p, relaydUID, relaydUID) }
                door = "[front_door]\nenabled = true\nlisten = \"0.0.0.0:8443\"\ncertificate = \"\(cert)\"\nprivate_key = \"\(key)\"\n"
                relaysConfig += "websocket = \"wss://\(SiteToSite.relayAddresses[i]):8443/relay\"\nspki_sha256 = \"\(pin)\"\n"
            }
            let cfg = """
            [node]
            name = "relay\(i + 1)"
            [reflector]
            enabled = false
            [relay]
            enabled = true
            allowed_keys = ["\(ka.pub)", "\(kb.pub)"]
            \(relayExtra)
            \(door)
            """
            relayProcesses.append(try startRelayd(h, site: "R\(i + 1)", key: k.priv, config: cfg, helper: nil))
        }
        for (i, h) in relayHosts.enumerated() {
            try waitUntil("relay \(h.name) listening", timeout: 20) {
                if !self.relayProcesses[i].isRunning { throw HarnessError("the relay on \(h.name) exited: \(self.relayProcesses[i].log())") }
                return try h.run(["ss", "-lnuH"]).stdout.contains(":51821")
            }
        }
        let policy = HelperFixture.policy(clients: [0, relaydUID])
        helperA = try HelperFixture.start(in: gwA, policy: policy)
        helperB = try HelperFixture.start(in: gwB, policy: policy)
        for h in [helperA!, helperB!] { chmod(h.socketPath, 0o666) }
        let cfgA = SiteToSite.config(name: "gw-a", site: "A", virtual4: "240.1.1.0/24", virtual6: "64:ff9b:1111::/96", virtual6Lan: "fd11:1111::/64", peerName: "gw-b", peerKey: kb.pub,
                                     peerEndpoint: behindNAT ? "" : "10.20.20.20:51820", peerSite: "B", peerVirtual4: "240.2.2.0/24", peerVirtual6: "64:ff9b:2222::/96", peerVirtual6Lan: "fd22:2222::/64", nodeExtra: nodeExtra)
        let cfgB = SiteToSite.config(name: "gw-b", site: "B", virtual4: "240.2.2.0/24", virtual6: "64:ff9b:2222::/96", virtual6Lan: "fd22:2222::/64", peerName: "gw-a", peerKey: ka.pub,
                                     peerEndpoint: behindNAT ? "" : "10.10.10.10:51820", peerSite: "A", peerVirtual4: "240.1.1.0/24", peerVirtual6: "64:ff9b:1111::/96", peerVirtual6Lan: "fd11:1111::/64", nodeExtra: nodeExtra)
        relaydA = try startRelayd(gwA, site: "A", key: ka.priv, config: cfgA + "\n" + extraConfigA + "\n" + extraConfig + relaysConfig, helper: helperA)
        relaydB = try startRelayd(gwB, site: "B", key: kb.priv, config: cfgB + "\n" + extraConfig + relaysConfig, helper: helperB)
        for (gw, sock, p) in [(gwA, socketA, relaydA!), (gwB, socketB, relaydB!)] {
            try waitUntil("relayd on \(gw.name) applied its state", timeout: 20) {
                if !p.isRunning { throw HarnessError("relayd on \(gw.name) exited: \(p.log())") }
                guard FileManager.default.fileExists(atPath: sock) else { return false }
                let out = try self.relayctl(gw, sock, ["status", "--json"]).stdout
                return out.contains("\"lastAppliedAt\"") && out.contains("\"connected\" : true")
            }
        }
    }

    /// Starts relayd A again with its existing state and config (after a crash).
    public func restartRelaydA() throws {
        let d = dir("A")
        relaydA = try gwA.spawn([try Binaries.path("relayd"), "--config", d + "/relayd.toml", "--state-dir", d + "/state", "--socket", d + "/relayd.sock",
                                 "--helper-socket", helperA.socketPath, "--log-level", "debug"], label: "relayd-A-2", as: relaydUID)
    }

    /// Starts relayd B again with its existing state and config (after a crash); waits for its
    /// control socket to answer.
    public func restartRelaydB() throws {
        let d = dir("B")
        try? FileManager.default.removeItem(atPath: socketB)
        relaydB = try gwB.spawn([try Binaries.path("relayd"), "--config", d + "/relayd.toml", "--state-dir", d + "/state", "--socket", d + "/relayd.sock",
                                 "--helper-socket", helperB.socketPath, "--log-level", "debug"], label: "relayd-B-2", as: relaydUID)
        try waitUntil("relayd B back", timeout: 20) {
            if !self.relaydB.isRunning { throw HarnessError("relayd B exited: \(self.relaydB.log())") }
            guard FileManager.default.fileExists(atPath: self.socketB) else { return false }
            return try self.relayctl(self.gwB, self.socketB, ["status"]).succeeded
        }
    }

    /// Stops both gateways' relayds (SIGTERM: they leave their relays), runs `between`, starts
    /// them again with their state and configuration, and waits until both answer.
    public func restartGateways(between: () throws -> Void = {}) throws {
        for p in [relaydA!, relaydB!] { p.signal(SIGTERM) }
        for p in [relaydA!, relaydB!] { _ = try p.waitForExit(timeout: 10) }
        try between()
        try? FileManager.default.removeItem(atPath: socketA)
        try restartRelaydA()
        try restartRelaydB()
        try waitUntil("relayd A back", timeout: 20) {
            if !self.relaydA.isRunning { throw HarnessError("relayd A exited: \(self.relaydA.log())") }
            guard FileManager.default.fileExists(atPath: self.socketA) else { return false }
            return try self.relayctl(self.gwA, self.socketA, ["status"]).succeeded
        }
    }

    /// B's state directory (the node key, persisted handshake timestamps).
    public var stateB: String { dir("B") + "/state" }

    /// A relay's control socket.
    public func relaySocket(_ i: Int) -> String { dir("R\(i + 1)") + "/relayd.sock" }

    func startRelayd(_ gw: LabHost, site: String, key: String, config: String, helper: HelperFixture?) throws -> LabProcess {
        let d = dir(site)
        try FileManager.default.createDirectory(atPath: d + "/state", withIntermediateDirectories: true)
        try (key + "\n").write(toFile: d + "/state/private.key", atomically: true, encoding: .utf8)
        chmod(d + "/state/private.key", 0o600)
        chmod(d + "/state", 0o700)
        try config.write(toFile: d + "/relayd.toml", atomically: true, encoding: .utf8)
        for p in [d, d + "/state", d + "/state/private.key", d + "/relayd.toml"] { chown(p, relaydUID, relaydUID) }
        return try gw.spawn([try Binaries.path("relayd"), "--config", d + "/relayd.toml", "--state-dir", d + "/state", "--socket", d + "/relayd.sock",
                             "--helper-socket", helper?.socketPath ?? d + "/no-helper.sock", "--log-level", "debug"], label: "relayd-\(site)", as: relaydUID)
    }

    @discardableResult
    public func relayctl(_ gw: LabHost, _ socket: String, _ args: [String]) throws -> CommandResult {
        try gw.run([try Binaries.path("relayctl")] + args + ["--socket", socket], check: false)
    }

    /// Sends a random marker from host A to host B inside the tunnel (TCP 9100, 50 lines), then
    /// stops the capture `dump` writing `pcap`; returns the marker and what the capture holds, for
    /// checking that the marker never crossed in clear.
    public func sendMarker(stopping dump: LabProcess, pcap: String) throws -> (marker: String, capture: Data) {
        let marker = "RELAY-MARKER-\(UInt32.random(in: 0...UInt32.max))"
        try hostB.spawn(["socat", "-u", "TCP-LISTEN:9100,reuseaddr", "OPEN:/dev/null"], label: "sink")
        try waitUntil("sink") { try self.hostB.run(["ss", "-lntH"]).stdout.contains(":9100") }
        _ = try hostA.run(["socat", "-u", "-", "TCP:240.2.2.20:9100"], stdin: String(repeating: marker + "\n", count: 50))
        usleep(300_000)
        dump.signal(SIGINT)
        _ = try? dump.waitForExit(timeout: 5)
        return (marker, try Data(contentsOf: URL(fileURLWithPath: pcap)))
    }

    /// "Who am I talking to" services on a host: TCP 9001 answers "PEER SOCKADDR", UDP 9000 answers PEER.
    public static func startWhoami(_ h: LabHost, ipv6: Bool = false) throws {
        try h.spawn(["socat", "TCP\(ipv6 ? "6" : "")-LISTEN:9001,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR $SOCAT_SOCKADDR"], label: "whoami-tcp")
        try h.spawnUDPResponder(port: 9000, ipv6: ipv6, label: "whoami-udp")
        try waitUntil("whoami services on \(h.name)") { let o = try h.run(["ss", "-lntuH"]).stdout; return o.contains(":9000") && o.contains(":9001") }
    }
}

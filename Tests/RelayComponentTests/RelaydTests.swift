import Foundation
import Testing
import RelayControlAPI
import RelayCore
import RelayTestHarness

let peerKeyB = "lGkyXqDvFAp8pZWVpYgLybW0x38CWs1wLZEY0c4kZwQ="
let peerKeyC = "7tYQsqPB7sXwkHuOjyqXgiLDTXSbmlBLQ5naBkraWzY="

func relaydConfig(peers: [(String, String, String)]) -> String {
    var s = "[node]\nname = \"gw-a\"\nlisten_port = 0\n[reflector]\nport = 0\n[site]\nname = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"240.1.1.0/24\"\n"
    for (name, key, v4) in peers {
        s += "[[peer]]\nname = \"\(name)\"\npublic_key = \"\(key)\"\n[[peer.site]]\nname = \"site-\(name)\"\nvirtual4 = \"\(v4)\"\n"
    }
    return s
}

/// A real relayd process with its own state dir, config and control socket (no helper: it keeps
/// retrying in the background), and relayctl run as a real process against it.
final class RelaydProcess {
    let dir: String
    let socket: String
    let configPath: String
    var pid: pid_t = 0
    let logPath: String

    let extraArgs: [String]

    init(config: String?, extraArgs: [String] = []) throws {
        self.extraArgs = extraArgs
        dir = NSTemporaryDirectory() + "relayd-test-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        socket = dir + "/relayd.sock"
        configPath = dir + "/relayd.toml"
        logPath = dir + "/relayd.log"
        if let config { try config.write(toFile: configPath, atomically: true, encoding: .utf8) }
        try start(config: config != nil)
    }

    func start(config: Bool = true) throws {
        var argv = [try Binaries.path("relayd"), "--state-dir", dir + "/state", "--socket", socket, "--helper-socket", dir + "/no-helper.sock", "--read-group", "nogroup"]
        if config { argv += ["--config", configPath] }
        argv += extraArgs
        pid = try Spawn.start(argv, stdoutPath: logPath, stderrPath: logPath)
        try waitUntil("relayd control socket", timeout: 10) {
            if let st = Spawn.reap(self.pid, block: false) { throw HarnessError("relayd exited with \(st): \(self.log)") }
            return FileManager.default.fileExists(atPath: self.socket)
        }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func stop(_ sig: Int32 = SIGTERM) -> Int32? {
        kill(pid, sig)
        var st: Int32?
        try? waitUntil("relayd exit", timeout: 10) { st = Spawn.reap(self.pid, block: false); return st != nil }
        return st
    }

    func ctl(_ args: String..., check: Bool = false) throws -> CommandResult {
        try Command.run([try Binaries.path("relayctl")] + args + (args.first == "config" || args.first == "keygen" ? [] : ["--socket", socket]), check: check)
    }

    func json<T: Decodable>(_ type: T.Type, _ args: String...) throws -> T {
        let r = try Command.run([try Binaries.path("relayctl")] + args + ["--socket", socket, "--json"])
        return try ControlJSON.decoder().decode(T.self, from: Data(r.stdout.utf8))
    }

    deinit {
        if pid > 0 { kill(pid, SIGKILL); _ = Spawn.reap(pid, block: true) }
        try? FileManager.default.removeItem(atPath: dir)
    }
}

@Suite("component: relayd and relayctl", .serialized)
struct RelaydTests {
    @Test("status, sites, peers over the control socket; --json everywhere; curl works too; identity is kept 0600 across restarts")
    func statusAndIdentity() throws {
        let d = try RelaydProcess(config: relaydConfig(peers: [("gw-b", peerKeyB, "240.2.2.0/24")]))
        let st = try d.json(StatusResponse.self, "status")
        #expect(st.nodeName == "gw-a" && st.peers == 1 && st.sites == 2)
        #expect(st.helper.connected == false && st.helper.lastError?.contains("not reachable") == true)
        #expect(st.config.path == d.configPath)
        #expect(st.publicKey.count == 44)
        let path = try #require(st.packetPath)
        #expect(path.threadsSetting == "auto" && path.threads == (path.cpus <= 2 ? 1 : 2) && path.offload && path.busyPollMicroseconds == 0)
        #expect(["avx512", "libcrypto"].contains(path.aead))
        let human = try d.ctl("status")
        #expect(human.status == 0 && human.stdout.contains("NOT connected") && human.stdout.contains(st.publicKey))
        #expect(human.stdout.contains("ChaCha20-Poly1305 \(path.aead)") && human.stdout.contains("(auto, \(path.cpus) CPUs)"), "\(human.stdout)")
        let sites = try d.json(SitesResponse.self, "sites")
        #expect(sites.sites.map { "\($0.owner):\($0.name):\($0.virtual4!)" } == ["self:A:240.1.1.0/24", "gw-b:site-gw-b:240.2.2.0/24"])
        #expect(try d.json(PeersResponse.self, "peers").peers.map(\.publicKey) == [peerKeyB])
        // Independent client: curl over the Unix socket.
        let curl = try Command.run(["curl", "-sS", "--unix-socket", d.socket, "http://relay/v1/status"])
        #expect(try ControlJSON.decoder().decode(StatusResponse.self, from: Data(curl.stdout.utf8)).publicKey == st.publicKey)
        let notFound = try Command.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", d.socket, "http://relay/v2/nothing"])
        #expect(notFound.stdout == "404")
        // relayctl identity: from relayd, and from the state directory; the same key after a restart.
        #expect(try d.ctl("identity").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == st.publicKey)
        var sb = stat()
        #expect(stat(d.dir + "/state/private.key", &sb) == 0 && sb.st_mode & 0o777 == 0o600)
        #expect(d.stop() == 0, "SIGTERM is a clean exit: \(d.log)")
        #expect(!FileManager.default.fileExists(atPath: d.socket), "the socket file is removed on shutdown")
        try d.start()
        #expect(try d.json(StatusResponse.self, "status").publicKey == st.publicKey)
        // Nat/routes need the helper: a clear error and exit code 6.
        let nat = try d.ctl("nat")
        #expect(nat.status == 6 && nat.stderr.contains("not connected to relay-helper"))
    }

    @Test("services start in order (control socket, tunnels, helper link) and stop in reverse on SIGTERM; one that cannot start ends relayd with its reason and exit 1, the started ones stopped")
    func lifecycle() throws {
        let d = try RelaydProcess(config: relaydConfig(peers: []))
        try waitUntil("relayd started", timeout: 10) { d.log.contains("node gw-a id") }
        #expect(d.stop() == 0, "SIGTERM is a clean exit: \(d.log)")
        let log = d.log
        let marks = ["control API on", "STUN reflector on", "peer tunnels on", "node gw-a id", "shutting down", "stopped"]
        let at = marks.map { log.range(of: $0)?.lowerBound }
        #expect(!at.contains(nil), "missing in the log: \(zip(marks, at).filter { $0.1 == nil }.map(\.0)): \(log)")
        let found = at.compactMap { $0 }
        #expect(found == found.sorted(), "out of order: \(log)")

        // The tunnel's port is taken: relayd says so, and the control socket it had opened is gone.
        let s = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0); defer { close(s) }
        var a = sockaddr_in6(); a.sin6_family = sa_family_t(AF_INET6)
        var len = socklen_t(MemoryLayout<sockaddr_in6>.size)
        try #require(withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, len) } } == 0)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
        let port = UInt16(bigEndian: a.sin6_port)
        try relaydConfig(peers: []).replacingOccurrences(of: "listen_port = 0", with: "listen_port = \(port)").write(toFile: d.configPath, atomically: true, encoding: .utf8)
        let r = try Command.run([try Binaries.path("relayd"), "--config", d.configPath, "--state-dir", d.dir + "/state", "--socket", d.socket,
                                 "--helper-socket", d.dir + "/no-helper.sock", "--read-group", "nogroup"], timeout: 20, check: false)
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("relayd: cannot bind UDP port \(port) for peer tunnels") && r.stderr.contains("node.listen_port"), "\(r.stderr)")
        #expect(!r.stderr.contains("node gw-a id"), "it never reported itself started: \(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: d.socket), "the control socket was removed")
    }

    @Test("reload: a valid config is applied as a diff (SIGHUP and relayctl reload); an invalid one is refused and the old one stays")
    func reload() throws {
        let d = try RelaydProcess(config: relaydConfig(peers: [("gw-b", peerKeyB, "240.2.2.0/24")]))
        try relaydConfig(peers: [("gw-b", peerKeyB, "240.2.2.0/24"), ("gw-c", peerKeyC, "240.3.3.0/24")]).write(toFile: d.configPath, atomically: true, encoding: .utf8)
        let r = try d.json(ReloadResponse.self, "reload")
        #expect(r.changes == ["peer gw-c added"])
        #expect(try d.json(PeersResponse.self, "peers").peers.map(\.name) == ["gw-b", "gw-c"])
        // Invalid: refused with the error, exit code 5, old config still in force.
        try (relaydConfig(peers: [("gw-b", peerKeyB, "240.2.2.0/24")]) + "[[peer]]\nname = \"gw-d\"\npublic_key = \"nope\"\n").write(toFile: d.configPath, atomically: true, encoding: .utf8)
        let bad = try d.ctl("reload")
        #expect(bad.status == 5 && bad.stderr.contains("peer[1].public_key") && bad.stderr.contains("stays in force"))
        #expect(try d.json(PeersResponse.self, "peers").peers.map(\.name) == ["gw-b", "gw-c"])
        #expect(try d.json(StatusResponse.self, "status").config.lastReloadError?.contains("not a key") == true)
        // SIGHUP with a valid file.
        try relaydConfig(peers: [("gw-c", peerKeyC, "240.3.3.0/24")]).write(toFile: d.configPath, atomically: true, encoding: .utf8)
        kill(d.pid, SIGHUP)
        try waitUntil("SIGHUP reload", timeout: 5) { try d.json(PeersResponse.self, "peers").peers.map(\.name) == ["gw-c"] }
        #expect(d.log.contains("reload (SIGHUP): peer gw-b removed"))
    }

    @Test("permissions by peer credentials: the read group may read, only root and relayd's user may change, others are told what to do",
          .enabled(if: getuid() == 0, "needs root to run relayctl as other users"))
    func permissions() throws {
        let d = try RelaydProcess(config: relaydConfig(peers: []))
        chmod(d.dir, 0o755)
        let ctl = try Binaries.path("relayctl")
        func asUser(_ uid: Int, _ args: [String]) throws -> CommandResult {
            try Command.run(["setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", ctl] + args + ["--socket", d.socket], check: false)
        }
        // uid 65534 is in group nogroup (65534), relayd's --read-group.
        let reader = try asUser(65534, ["status", "--json"])
        #expect(reader.status == 0, "\(reader.stderr)")
        let denied = try asUser(65534, ["reload"])
        #expect(denied.status == 4 && denied.stderr.contains("needs root or relayd's own user"))
        let stranger = try asUser(65533, ["status"])
        #expect(stranger.status == 4 && stranger.stderr.contains("add yourself to group nogroup"))
        #expect(d.log.contains("refused POST /v1/reload from uid 65534"))
        // Supplementary membership counts too (the group from /proc/PID/status).
        let supp = try Command.run(["setpriv", "--reuid=65533", "--regid=65533", "--groups=65534", ctl, "sites", "--socket", d.socket], check: false)
        #expect(supp.status == 0, "\(supp.stderr)")
    }

    static let controlClient = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Support/control_client.py").standardized.path

    @Test("control socket limits: a body over 64 KiB is refused as soon as it is declared or passed and never read whole; silent connections are closed; connections are bounded per uid")
    func controlLimits() throws {
        let d = try RelaydProcess(config: relaydConfig(peers: []), extraArgs: ["--control-idle-timeout", "2"])
        func run(_ args: String...) throws -> [String: Any] {
            let r = try Command.run(["/usr/bin/python3", Self.controlClient] + args, timeout: 60)
            return (try JSONSerialization.jsonObject(with: Data(r.stdout.split(separator: "\n").last.map(String.init)?.utf8 ?? "".utf8)) as? [String: Any]) ?? ["raw": r.stdout + r.stderr]
        }
        // 100 MB declared: 413 at once, and the connection closes before the body could be sent.
        let declared = try run("declared", d.socket, String(100 << 20))
        #expect(declared["status"] as? Int == 413, "\(declared)")
        #expect((declared["sent"] as? Int ?? .max) < 16 << 20, "relayd kept reading a body it had refused: \(declared)")
        // Chunked (no length): refused once 64 KiB have arrived.
        let chunked = try run("chunked", d.socket, String(100 << 20))
        #expect(chunked["status"] as? Int == 413, "\(chunked)")
        #expect((chunked["sent"] as? Int ?? .max) < 16 << 20, "\(chunked)")
        // Silent: 408 after the idle time (2 s here).
        let idle = try run("idle", d.socket, "10")
        #expect(idle["status"] as? Int == 408, "\(idle)")
        #expect((idle["seconds"] as? Double ?? 0) >= 1.5 && (idle["seconds"] as? Double ?? 99) < 6, "\(idle)")
        // Per uid: 16 open connections are the bound; the 17th is told so (503).
        let held = try run("hold", d.socket, "17", "0")
        #expect(held["status"] as? Int == 503, "\(held)")
        // relayd is still fine.
        #expect(try d.ctl("status").status == 0)
        #expect(!d.log.contains("Fatal"), "\(d.log)")
    }

    @Test("relayctl: exit codes and messages scripts can rely on; config check and explain without relayd")
    func relayctlOffline() throws {
        let dir = NSTemporaryDirectory() + "relayctl-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ctl = try Binaries.path("relayctl")
        let down = try Command.run([ctl, "status", "--socket", dir + "/absent.sock"], check: false)
        #expect(down.status == 3 && down.stderr.contains("relayd is not running"))
        try relaydConfig(peers: [("gw-b", peerKeyB, "240.2.2.0/24")]).write(toFile: dir + "/ok.toml", atomically: true, encoding: .utf8)
        try "[node]\nnmae = \"x\"\n".write(toFile: dir + "/bad.toml", atomically: true, encoding: .utf8)
        #expect(try Command.run([ctl, "config", "check", dir + "/ok.toml"]).stdout.contains("valid"))
        let bad = try Command.run([ctl, "config", "check", dir + "/bad.toml"], check: false)
        #expect(bad.status == 5 && bad.stderr.contains("node.nmae: unknown key (did you mean 'name'?)"))
        let explain = try Command.run([ctl, "explain", "--config", dir + "/ok.toml"])
        #expect(explain.stdout.contains("snat ip prefix to ip saddr map @snat4"))
        #expect(explain.stdout.contains("iifname \"relay*\" ip daddr @dnat4 counter dnat ip prefix"), "inbound translation only from Relay's devices")
        #expect(try Command.run([ctl, "explain", "--config", dir + "/ok.toml", "--device-prefix", "rly"]).stdout.contains("iifname \"rly*\" ip daddr @dnat4"))
        #expect(explain.stdout.contains("ip route replace 240.2.2.0/24 dev relay0 proto 196"))
        // The explained ruleset is valid nft syntax (nft --check parses it without applying).
        let nftText = explain.stdout.components(separatedBy: "# TUN device").first!
        try nftText.write(toFile: dir + "/explain.nft", atomically: true, encoding: .utf8)
        if getuid() == 0 {
            let check = try Command.run(["nft", "--check", "-f", dir + "/explain.nft"], check: false)
            #expect(check.status == 0, "nft --check: \(check.stderr)")
        }
        let keys = try Command.run([ctl, "keygen", "--json"]).stdout
        let obj = try JSONSerialization.jsonObject(with: Data(keys.utf8)) as? [String: String]
        #expect(obj?["public_key"]?.count == 44 && obj?["private_key"]?.count == 44)
    }
}

import Foundation
import Testing
import RelayControlAPI
import RelayCore
import RelayTestHarness

/// relayd's STUN reflector against clients nobody here wrote (coturn's turnutils_stunclient, the
/// Debian `stun` client), and relayctl's STUN client against coturn's turnserver. Loopback only.
@Suite("component: STUN reflector interop", .serialized)
struct ReflectorTests {
    func reflectorPort(_ d: RelaydProcess) throws -> UInt16 {
        try d.json(StatusResponse.self, "status").reflector!.port
    }

    static func freePort() -> UInt16 {
        let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0); defer { close(s) }
        var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); a.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
        return UInt16(bigEndian: a.sin_port)
    }

    @Test("turnutils_stunclient and stun get the right mapped address; CHANGE-REQUEST is refused with 420; garbage and floods are dropped and counted")
    func clientsAgainstRelayd() throws {
        let d = try RelaydProcess(config: "[node]\nname = \"r\"\nlisten_port = 0\n[reflector]\nport = 0\nrate = 20\nburst = 40\n")
        let port = try reflectorPort(d)
        let coturn = try Command.run(["turnutils_stunclient", "-p", String(port), "127.0.0.1"], timeout: 10, check: false)
        #expect(coturn.stdout.contains("UDP reflexive addr: 127.0.0.1:"), "turnutils_stunclient: \(coturn.stdout) \(coturn.stderr)")
        let classic = try Command.run(["stun", "127.0.0.1:\(port)", "-v"], timeout: 15, check: false)
        #expect(classic.stdout.contains("MappedAddress = 127.0.0.1:") || classic.stderr.contains("MappedAddress = 127.0.0.1:"), "stun: \(classic.stdout)")
        // Its tests II and III ask for a change of address/port: answered with 420, never faked.
        #expect(try d.json(StatusResponse.self, "status").reflector!.errors > 0)
        // relayctl's own client against relayd.
        let mine = try d.ctl("reflect", "--server", "127.0.0.1:\(port)")
        #expect(mine.status == 0 && mine.stdout.hasPrefix("127.0.0.1:"))
        // Garbage, truncated and oversized datagrams, then a flood from one source.
        let script = """
        import socket, os
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for b in [b'', b'\\x00\\x01', os.urandom(19), b'\\x00\\x01\\x00\\x04\\x21\\x12\\xa4\\x42' + os.urandom(12), os.urandom(3000)]:
            s.sendto(b, ('127.0.0.1', \(port)))
        req = b'\\x00\\x01\\x00\\x00\\x21\\x12\\xa4\\x42' + b'\\x00' * 12
        for i in range(200): s.sendto(req, ('127.0.0.1', \(port)))
        """
        try Command.run(["python3", "-c", script])
        try waitUntil("counted", timeout: 5) {
            let c = try d.json(StatusResponse.self, "status").reflector!
            return c.malformed >= 4 && c.rateLimited > 0
        }
        let c = try d.json(StatusResponse.self, "status").reflector!
        #expect(c.answered < 200 + 20, "the flood was limited: \(c)")
        // Still serving (after the bucket refills).
        usleep(300_000)
        #expect(try d.ctl("reflect", "--server", "127.0.0.1:\(port)").status == 0)
        #expect(d.stop() == 0, "relayd survived it all: \(d.log)")
    }

    @Test("relayctl reflect --server against coturn's turnserver (STUN only)")
    func relayctlAgainstCoturn() throws {
        let port = Self.freePort()
        let dir = NSTemporaryDirectory() + "coturn-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pid = try Spawn.start(["turnserver", "-n", "-S", "-z", "--no-cli", "--no-tls", "--no-dtls", "-L", "127.0.0.1", "-p", String(port),
                                   "--log-file", "stdout", "--pidfile", dir + "/pid", "--userdb", dir + "/db"],
                                  stdoutPath: dir + "/log", stderrPath: dir + "/log")
        defer { kill(pid, SIGTERM); _ = Spawn.reap(pid, block: true) }
        var out: CommandResult?
        try waitUntil("turnserver answers", timeout: 10) {
            out = try Command.run([try Binaries.path("relayctl"), "reflect", "--server", "127.0.0.1:\(port)", "--json"], check: false)
            return out?.status == 0
        }
        let obj = try JSONSerialization.jsonObject(with: Data(out!.stdout.utf8)) as? [String: Any]
        #expect((obj?["mapped"] as? String)?.hasPrefix("127.0.0.1:") == true, "\(out!.stdout)")
        #expect((obj?["software"] as? String)?.lowercased().contains("coturn") == true)

        // relayd's own client, with coturn configured as a reflector: it learns its tunnel port's
        // mapped address from coturn.
        let d = try RelaydProcess(config: "[node]\nname = \"c\"\nlisten_port = 0\n[reflector]\nport = 0\nservers = [\"127.0.0.1:\(port)\"]\n")
        let tunnelPort = try d.json(StatusResponse.self, "status").tunnelPort!
        var r: ReflectResponse?
        try waitUntil("an observation from coturn", timeout: 5) {
            r = try d.json(ReflectResponse.self, "reflect")
            return r?.observations.isEmpty == false
        }
        #expect(r?.observations.first?.observer == "stun 127.0.0.1:\(port)")
        #expect(r?.observations.first?.mapped.description == "127.0.0.1:\(tunnelPort)")
        #expect(r?.ipv4.address == nil && r?.ipv4.explanation.contains("evidence") == true, "one observer is not a quorum")
    }

    @Test("RFC 5780 on two loopback addresses: turnutils_natdiscovery and stun classify against relayd; relayd's client classifies against coturn and against relayd")
    func behaviourDiscovery() throws {
        let port = Self.freePort()
        let cfg = "[node]\nname = \"r\"\nlisten_port = 0\n[reflector]\nport = \(port)\nother_port = \(port + 1)\naddress = \"127.0.0.1\"\nother_address = \"127.0.0.2\"\nrate = 1000\nburst = 1000\n"
        let d = try RelaydProcess(config: cfg)
        let c = try d.json(StatusResponse.self, "status").reflector!
        #expect(c.discoverySockets?.map(\.description) == ["127.0.0.1:\(port)", "127.0.0.1:\(port + 1)", "127.0.0.2:\(port)", "127.0.0.2:\(port + 1)"])
        // coturn's NAT discovery client: all three tests, against relayd. Loopback has no NAT.
        let nd = try Command.run(["turnutils_natdiscovery", "-m", "-f", "-H", "-p", String(port), "127.0.0.1"], timeout: 60, check: false)
        #expect(nd.stdout.contains("Response origin: : 127.0.0.2:\(port + 1)"), "a CHANGE-REQUEST answer came from the other address and port: \(nd.stdout)")
        #expect(nd.stdout.contains("Other addr: : 127.0.0.2:\(port + 1)"))
        #expect(nd.stdout.contains("NAT with Endpoint Independent Mapping!"), "\(nd.stdout)")
        #expect(nd.stdout.contains("NAT with Endpoint Independent Filtering!"), "\(nd.stdout)")
        // The RFC 3489 client: its tests II and III are answered from the changed address/port now.
        let classic = try Command.run(["stun", "127.0.0.1:\(port)", "-v"], timeout: 30, check: false)
        let text = classic.stdout + classic.stderr
        #expect(text.contains("ChangedAddress = 127.0.0.2:\(port + 1)"), "\(text)")
        #expect(text.contains("Open"), "stun classifies loopback as open: \(text)")
        #expect(try d.json(StatusResponse.self, "status").reflector!.changed > 0)
        // relayctl's one-shot client shows the RFC 5780 attributes.
        let once = try d.ctl("reflect", "--server", "127.0.0.1:\(port)")
        #expect(once.stdout.contains("other address 127.0.0.2:\(port + 1)") && once.stdout.contains("answered from 127.0.0.1:\(port)"), "\(once.stdout)")

        // relayd's own client with this relayd as its reflector: no NAT, open filtering.
        let client = try RelaydProcess(config: "[node]\nname = \"c\"\nlisten_port = 0\n[reflector]\nport = 0\nrto_ms = 50\nretransmissions = 3\nservers = [\"127.0.0.1:\(port)\"]\n")
        var r: ReflectResponse?
        try waitUntil("behaviour measured against relayd", timeout: 10) {
            r = try client.json(ReflectResponse.self, "reflect"); return r?.behaviour != nil
        }
        #expect(r?.behaviour?.mapping == .noNAT && r?.behaviour?.filtering == .endpointIndependent && r?.behaviour?.hairpinning == nil, "\(String(describing: r?.behaviour))")
        #expect(r?.behaviour?.tests.count == 4, "two filtering and two mapping tests: \(String(describing: r?.behaviour?.tests))")
        let shown = try client.ctl("reflect")
        #expect(shown.stdout.contains("mapping      no NAT") && shown.stdout.contains("filtering    endpoint-independent"), "\(shown.stdout)")
        _ = client.stop(); _ = d.stop()

        // The same client against coturn with two addresses (RFC 5780 on by default then).
        let cport = Self.freePort()
        let dir = NSTemporaryDirectory() + "coturn5780-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pid = try Spawn.start(["turnserver", "-n", "-S", "-z", "--no-cli", "--no-tls", "--no-dtls", "-L", "127.0.0.1", "-L", "127.0.0.2", "-p", String(cport),
                                   "--log-file", "stdout", "--pidfile", dir + "/pid", "--userdb", dir + "/db"],
                                  stdoutPath: dir + "/log", stderrPath: dir + "/log")
        defer { kill(pid, SIGTERM); _ = Spawn.reap(pid, block: true) }
        try waitUntil("turnserver answers", timeout: 10) {
            try Command.run([try Binaries.path("relayctl"), "reflect", "--server", "127.0.0.1:\(cport)"], check: false).stdout.contains("other address")
        }
        let client2 = try RelaydProcess(config: "[node]\nname = \"c2\"\nlisten_port = 0\n[reflector]\nport = 0\nrto_ms = 50\nretransmissions = 3\nservers = [\"127.0.0.1:\(cport)\"]\n")
        try waitUntil("behaviour measured against coturn", timeout: 10) {
            r = try client2.json(ReflectResponse.self, "reflect"); return r?.behaviour != nil
        }
        #expect(r?.behaviour?.mapping == .noNAT && r?.behaviour?.filtering == .endpointIndependent, "\(String(describing: r?.behaviour))")
        #expect(r?.behaviour?.otherAddress.address.description == "127.0.0.2")
    }
}

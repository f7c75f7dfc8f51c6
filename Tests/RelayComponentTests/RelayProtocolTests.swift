import Foundation
import Testing
import RelayControlAPI
import RelayTestHarness

/// The relay role against a client written from docs/relay-protocol.md alone (Python: noiseprotocol
/// and cryptography), over real UDP to a real relayd.
@Suite("component: the relay protocol from its document")
struct RelayProtocolTests {
    static let client = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Support/relay_client.py").standardized.path

    struct Result: Decodable {
        struct Reg: Decodable { var id: UInt32?; var refused: Int?; var size: Int; var sent: Int }
        struct Pong: Decodable { var kind: Int; var family: Int; var address: String; var port: Int; var own_port: Int }
        struct Lookup: Decodable { var kind: Int; var id: UInt32?; var b_id: UInt32 }
        struct Delivered: Decodable { var count: Int; var all_deliver: Bool; var from_a: Bool; var in_order: Bool }
        struct Reply: Decodable { var kind: Int; var data: String }
        struct Nobody: Decodable { var kind: Int; var body: String }
        struct ReplayForged: Decodable { var first: String; var extra: Int }
        var register_a: Reg, register_b: Reg, pong_a: Pong, pong_b: Pong, lookup: Lookup, delivered: Delivered, reply: Reply, nobody: Nobody
        var replay_forged: ReplayForged, wrong_token: Reg
    }

    @Test("a Python client registers two nodes, looks one up, exchanges datagrams through the relay; replays, forgeries, unknown ids and a wrong token get what the document says")
    func pythonClient() throws {
        let token = "a-token-of-twenty-chars"
        let d = try RelaydProcess(config: "[node]\nname = \"relay\"\nlisten_port = 0\n[reflector]\nenabled = false\n[relay]\nenabled = true\nport = 0\ntokens = [\"\(token)\"]\n")
        let st = try d.json(StatusResponse.self, "status")
        let relay = try #require(st.relay, "status shows the relay role")
        let r = try Command.run(["python3", Self.client, "127.0.0.1", String(relay.port), st.publicKey, token], timeout: 60, check: false)
        #expect(r.status == 0, "\(r.stderr.suffix(1500))")
        let out = try JSONDecoder().decode(Result.self, from: Data(r.stdout.utf8))
        #expect(out.register_a.id != nil && out.register_b.id != nil && out.register_a.size < out.register_a.sent)
        #expect(out.pong_a.kind == 4 && out.pong_a.family == 4 && out.pong_a.address == "127.0.0.1" && out.pong_a.port == out.pong_a.own_port)
        #expect(out.lookup.kind == 6 && out.lookup.id == out.lookup.b_id)
        #expect(out.delivered.count == 20 && out.delivered.all_deliver && out.delivered.from_a && out.delivered.in_order)
        #expect(out.reply.kind == 2 && out.reply.data == "reply")
        #expect(out.nobody.kind == 7 && out.nobody.body == "77770000")
        #expect(out.replay_forged.first == "once" && out.replay_forged.extra == 0)
        #expect(out.wrong_token.refused == 1 && out.wrong_token.size < out.wrong_token.sent)
        let status = try d.json(RelayStatusResponse.self, "relay", "status")
        #expect(status.relay.nodes == 2 && status.relay.counters.forwarded == 22 && status.relay.counters.notAdmitted == 1)
        #expect(status.relay.counters.replayed == 1 && status.relay.counters.badFrames == 1 && status.relay.counters.notHere == 1, "\(status.relay.counters)")
        // relayctl relay status, for people.
        let human = try d.ctl("relay", "status")
        #expect(human.status == 0 && human.stdout.contains("nodes 2 registered"), "\(human.stdout)")
    }

    @Test("relayctl relay status on a node that is not a relay says how to make it one")
    func notARelay() throws {
        let d = try RelaydProcess(config: relaydConfig(peers: []))
        let r = try d.ctl("relay", "status")
        #expect(r.status != 0 && r.stderr.contains("[relay] enabled = true"), "\(r.stderr)")
    }

    struct Load: Decodable { var registered: Int; var refused: Int; var sent: Int; var received: Int; var notHere: Int; var badFrames: Int; var registrationsPerSecond: Double }

    static func rss(_ pid: pid_t) -> Int {
        let s = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = s.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }

    @Test("load: 300 simulated nodes register, forward 3,000 datagrams/s between random pairs for 12 s and leave, twice; every datagram arrives or is counted dropped with a reason, and the second round does not grow the relay's memory")
    func load() throws {
        let token = "a-token-of-twenty-chars"
        let d = try RelaydProcess(config: "[node]\nname = \"relay\"\nlisten_port = 0\n[reflector]\nenabled = false\n[relay]\nenabled = true\nport = 0\ntokens = [\"\(token)\"]\nregistrations_per_second = 10000\n")
        let st = try d.json(StatusResponse.self, "status")
        let port = try #require(st.relay?.port)
        var rss: [Int] = []
        var last = RelayServerCounters()
        for round in 1...2 {
            let r = try Command.run([try Binaries.path("relay-lab"), "relay-load", "--relay", "127.0.0.1:\(port)", "--key", st.publicKey, "--token", token,
                                     "--nodes", "300", "--rate", "3000", "--seconds", "12"], timeout: 90, check: false)
            #expect(r.status == 0, "\(r.stderr.suffix(800))")
            let l = try JSONDecoder().decode(Load.self, from: Data(r.stdout.utf8))
            let c = try d.json(RelayStatusResponse.self, "relay", "status").relay.counters
            let dropped = (c.throttled - last.throttled) + (c.notHere - last.notHere) + (c.sendDropped - last.sendDropped)
            print("relay load round \(round): \(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)); relay dropped \(dropped); RSS \(Self.rss(d.pid)) kB")
            #expect(l.registered == 300 && l.refused == 0 && l.badFrames == 0, "\(l)")
            #expect(l.sent == 36_000 && l.received + dropped == l.sent, "sent \(l.sent), received \(l.received), counted dropped \(dropped)")
            #expect(c.forwarded - last.forwarded == l.received)
            last = c
            // Every node left.
            try waitUntil("the nodes left", timeout: 5) { try d.json(RelayStatusResponse.self, "relay", "status").relay.nodes == 0 }
            rss.append(Self.rss(d.pid))
        }
        // Under a sanitizer (make test-sanitize sets ASAN_OPTIONS/TSAN_OPTIONS), freed memory is
        // held in quarantine and shadow memory grows: RSS says nothing about leaks there.
        let env = ProcessInfo.processInfo.environment
        if env["ASAN_OPTIONS"] == nil && env["TSAN_OPTIONS"] == nil {
            #expect(rss[1] <= rss[0] + 2048, "the relay grew from \(rss[0]) kB to \(rss[1]) kB in an identical second round")
        }
    }

    struct Blast: Decodable { var sent: Int; var received: Int; var payloadGbps: Double }

    @Test("relay-blast (make bench's forwarding row) delivers through relayd's relay and through coturn's TURN relay: allocations, channel bindings, frames; relayd's forwarded counter covers what arrived")
    func blastBothRelays() throws {
        let token = "a-token-of-twenty-chars"
        let d = try RelaydProcess(config: "[node]\nname = \"relay\"\nlisten_port = 0\n[reflector]\nenabled = false\n[relay]\nenabled = true\nport = 0\ntokens = [\"\(token)\"]\n")
        let st = try d.json(StatusResponse.self, "status")
        let port = try #require(st.relay?.port)
        func blast(_ args: [String]) throws -> Blast {
            let r = try Command.run([try Binaries.path("relay-lab"), "relay-blast", "--pairs", "2", "--size", "1000", "--seconds", "1"] + args, timeout: 30, check: false)
            #expect(r.status == 0, "\(r.stderr.suffix(800))")
            return try JSONDecoder().decode(Blast.self, from: Data(r.stdout.utf8))
        }
        let relayed = try blast(["--mode", "relay", "--server", "127.0.0.1:\(port)", "--key", st.publicKey, "--token", token])
        let c = try d.json(RelayStatusResponse.self, "relay", "status").relay.counters
        #expect(relayed.received > 1000 && relayed.received <= relayed.sent, "\(relayed)")
        #expect(c.forwarded >= UInt64(relayed.received), "relayd forwarded \(c.forwarded), the receivers got \(relayed.received)")

        let tport = ReflectorTests.freePort()
        let dir = NSTemporaryDirectory() + "coturn-blast-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pid = try Spawn.start(["turnserver", "-n", "--no-auth", "--no-cli", "--no-tls", "--no-dtls", "-L", "127.0.0.1", "--relay-ip", "127.0.0.1", "--allow-loopback-peers",
                                   "-p", String(tport), "--log-file", "stdout", "--pidfile", dir + "/pid", "--userdb", dir + "/db"],
                                  stdoutPath: dir + "/log", stderrPath: dir + "/log")
        defer { kill(pid, SIGTERM); _ = Spawn.reap(pid, block: true) }
        try waitUntil("turnserver listens", timeout: 10) { try Command.run(["ss", "-lnuH"]).stdout.contains("127.0.0.1:\(tport)") }
        let turned = try blast(["--mode", "turn", "--server", "127.0.0.1:\(tport)"])
        #expect(turned.received > 1000 && turned.received <= turned.sent, "\(turned)")
        print("relay-blast on loopback, 1 s: relayd \(relayed), coturn \(turned)")
    }

    @Test("node.callsign: a node claims its callsign at its home relay (relayctl relay links shows the answer, the relay's devices list it connected); a second node asking for the same callsign is told it is taken")
    func nodeCallsign() throws {
        let token = "a-token-of-twenty-chars"
        let relay = try RelaydProcess(config: "[node]\nname = \"relay\"\nlisten_port = 0\n[reflector]\nenabled = false\n[relay]\nenabled = true\nport = 0\ntokens = [\"\(token)\"]\n")
        let st = try relay.json(StatusResponse.self, "status")
        let port = try #require(st.relay?.port)
        func node(_ name: String) throws -> RelaydProcess {
            try RelaydProcess(config: "[node]\nname = \"\(name)\"\nlisten_port = 0\ncallsign = \"gw-test\"\n[reflector]\nenabled = false\n[[relays]]\naddress = \"127.0.0.1:\(port)\"\npublic_key = \"\(st.publicKey)\"\ntoken = \"\(token)\"\n")
        }
        let a = try node("a")
        try waitUntil("A's claim answered", timeout: 15) { (try a.json([RelayLinkView].self, "relay", "links")).first?.callsign == "GW-TEST: claimed" }
        let devices = try relay.json(DevicesResponse.self, "relay", "devices")
        let keyA = try a.json(StatusResponse.self, "status").publicKey
        #expect(devices.devices.count == 1 && devices.devices[0].callsign == "GW-TEST" && devices.devices[0].connected && devices.devices[0].publicKey == keyA, "\(devices)")
        let b = try node("b")
        try waitUntil("B's claim answered", timeout: 15) { (try b.json([RelayLinkView].self, "relay", "links")).first?.callsign?.hasPrefix("GW-TEST: taken") == true }
        #expect(b.log.contains("choose another node.callsign"))
    }
}

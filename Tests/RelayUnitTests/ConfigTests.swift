import Foundation
import Testing
import RelayConfig
import RelayControlAPI
import RelayCore

let keyA = "lGkyXqDvFAp8pZWVpYgLybW0x38CWs1wLZEY0c4kZwQ="
let keyB = "7tYQsqPB7sXwkHuOjyqXgiLDTXSbmlBLQ5naBkraWzY="

func siteAConfig(extraPeer: String = "", site: String? = nil) -> String {
    """
    [node]
    name = "gw-a"
    [site]
    \(site ?? "name = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"240.1.1.0/24\"\nvirtual6 = \"64:ff9b:1111::/96\"\nlan6 = \"fd00:cafe::/64\"\nvirtual6_lan = \"fd11:1111::/64\"\nmap = [{ ipv4 = \"192.168.1.30\", ipv6 = \"fd00:cafe::30\" }]")
    [[peer]]
    name = "gw-b"
    public_key = "\(keyA)"
    endpoint = "10.20.20.20:51820"
      [[peer.site]]
      name = "B"
      lan4 = "192.168.1.0/24"
      virtual4 = "240.2.2.0/24"
      virtual6 = "64:ff9b:2222::/96"
      virtual6_lan = "fd22:2222::/64"
    \(extraPeer)
    """
}

@Suite("relayd configuration")
struct ConfigTests {
    @Test("the two-site example parses, warns about class E, and implies the expected kernel state")
    func example() throws {
        let (cfg, warnings) = try ConfigFile.parse(siteAConfig())
        #expect(cfg.node.name == "gw-a" && cfg.node.device == "relay0" && cfg.node.mtu == 1408)
        #expect(warnings.map(\.key).sorted() == ["peer[0].site[0].virtual4", "site.virtual4"])
        let d = cfg.desiredKernelState
        #expect(d.nat.dnat == [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24")), PrefixMapping(P("fd11:1111::/64"), P("fd00:cafe::/64"))])
        #expect(d.nat.snat == [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24")), PrefixMapping(P("fd00:cafe::/64"), P("fd11:1111::/64"))])
        #expect(d.nat.remote == [P("240.2.2.0/24"), P("fd22:2222::/64")])
        #expect(d.routes.map(\.destination) == [P("240.2.2.0/24"), P("64:ff9b:2222::/96"), P("fd22:2222::/64")])
        #expect(cfg.site?.map == [ExplicitMapping(ipv4: IPv4Address("192.168.1.30")!, ipv6: IPv6Address("fd00:cafe::30")!)])
        #expect(d.device == DeviceSpec(name: "relay0", mtu: 1408, offload: true))
        // Offloads are on unless the node says otherwise.
        let off = try ConfigFile.parse(siteAConfig().replacingOccurrences(of: "name = \"gw-a\"", with: "name = \"gw-a\"\noffload = false")).0
        #expect(off.desiredKernelState.device?.offload == false)
        #expect(cfg.node.busyPoll == 0, "busy polling is off unless asked for")
        #expect(try ConfigFile.parse(siteAConfig().replacingOccurrences(of: "name = \"gw-a\"", with: "name = \"gw-a\"\nbusy_poll = 30000")).0.node.busyPoll == 30000)
        // Packet threads: auto (1 on two CPUs or fewer, else 2), 1 or 2; busy polling implies 1.
        #expect(cfg.node.threads == 0)
        #expect(cfg.node.packetThreads(cpus: 2) == 1 && cfg.node.packetThreads(cpus: 1) == 1 && cfg.node.packetThreads(cpus: 8) == 2)
        for (text, n) in [("1", 1), ("2", 2), ("\"auto\"", 0)] {
            let c = try ConfigFile.parse(siteAConfig().replacingOccurrences(of: "name = \"gw-a\"", with: "name = \"gw-a\"\nthreads = \(text)")).0
            #expect(c.node.threads == n, "threads = \(text)")
        }
        #expect(NodeConfig(threads: 2).packetThreads(cpus: 2) == 2 && NodeConfig(threads: 1).packetThreads(cpus: 64) == 1)
        #expect(NodeConfig(busyPoll: 50, threads: 2).packetThreads(cpus: 64) == 1)
        // The annotated example in contrib/ differs only by its placeholder key.
        let contrib = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../contrib/relayd.toml")
        let text = try String(contentsOf: contrib, encoding: .utf8).replacingOccurrences(of: "CHANGE-ME-to-the-peer's-44-character-base64-public-key=", with: keyA)
        #expect(try ConfigFile.parse(text).0 == cfg)
    }

    @Test("each kind of mistake is an error naming its key", arguments: [
        (siteAConfig(site: "name = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"240.1.0.0/23\""), "site.virtual4", "same size"),
        (siteAConfig(site: "name = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"240.2.2.0/24\""), "peer[0].site[0].virtual4", "overlaps site.virtual4"),
        (siteAConfig(site: "name = \"A\"\nvirtual6 = \"64:ff9b:1111::/80\""), "site.virtual6", "not an RFC 6052 prefix length"),
        (siteAConfig(site: "name = \"A\"\nvirtual6 = \"64:ff9b:1111:0:ff00::/96\""), "site.virtual6", "bits 64-71"),
        (siteAConfig(site: "name = \"A\"\nvirtaul4 = \"240.1.1.0/24\""), "site.virtaul4", "did you mean 'virtual4'"),
        (siteAConfig(site: "name = \"A\"\nlan4 = \"192.168.1.1/24\""), "site.lan4", "did you mean 192.168.1.0/24"),
        (siteAConfig(extraPeer: "[[peer]]\nname = \"gw-c\"\npublic_key = \"not-a-key\""), "peer[1].public_key", "is not a key"),
        (siteAConfig(extraPeer: "[[peer]]\nname = \"gw-b\"\npublic_key = \"\(keyB)\""), "peer[1].name", "used twice"),
        (siteAConfig(extraPeer: "[[peer]]\nname = \"gw-c\"\npublic_key = \"\(keyA)\""), "peer[1].public_key", "same public key"),
        (siteAConfig(extraPeer: "[[peer]]\nname = \"gw-c\"\npublic_key = \"\(keyB)\"\nendpoint = \"10.0.0.1\""), "peer[1].endpoint", "ADDRESS:PORT"),
        ("[node]\nmtu = 100\n", "node.mtu", "out of range"),
        ("[node]\noffload = \"yes\"\n", "node.offload", "true or false"),
        ("[node]\nbusy_poll = -5\n", "node.busy_poll", "0...1000000"),
        ("[node]\nthreads = 3\n", "node.threads", "1, 2 or \"auto\""),
        ("[node]\nthreads = \"many\"\n", "node.threads", "1, 2 or \"auto\""),
        (siteAConfig(site: "name = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"240.1.1.0/24\"\nlan6 = \"fd00:cafe::/64\""), "site.virtual6_lan", "go together"),
        (siteAConfig(site: "name = \"A\"\nlan6 = \"fd00:cafe::/64\"\nvirtual6_lan = \"fd11::/48\""), "site.virtual6_lan", "same size"),
        (siteAConfig(site: "name = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"240.1.1.0/24\"\nmap = [{ ipv4 = \"10.0.0.1\", ipv6 = \"fd00::1\" }]"), "site.map[0].ipv4", "outside site.lan4"),
        (siteAConfig(site: "name = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"240.1.1.0/24\"\nmap = [{ ipv4 = \"192.168.1.9\", ipv6 = \"fd00::1\" }, { ipv4 = \"192.168.1.9\", ipv6 = \"fd00::2\" }]"), "site.map[1].ipv4", "mapped twice"),
        (siteAConfig(site: "name = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"240.1.1.0/24\"\nmap = [{ ipv4 = \"192.168.1.9\" }]"), "site.map[0]", "needs ipv4 and ipv6"),
        (siteAConfig(site: "name = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"240.1.1.0/24\"\nmap = [{ ipv4 = \"192.168.1.9\", ipv6 = \"fd00::zz\" }]"), "site.map[0].ipv6", "not an IPv6 address"),
        (siteAConfig(extraPeer: "[[peer]]\nname = \"gw-c\"\npublic_key = \"\(keyB)\"\n[[peer.site]]\nname = \"C\"\nvirtual4 = \"240.3.3.0/24\"\nvirtual6 = \"64:ff9b:3333::/96\""), "peer[1].site[0].lan4", "needed with virtual6"),
        ("[node]\ndevice = \"this-name-is-too-long\"\n", "node.device", "not a usable device name"),
        ("[node\n", "line 1", "TOML syntax error"),
        ("[node]\nname = \"a\u{00}b\"\n", "line 2", "TOML syntax error at column 10: control character U+0000"),
        ("[reflector]\nother_address = \"192.0.2.8\"\n", "reflector.address", "primary address too"),
        ("[reflector]\naddress = \"192.0.2.8\"\nother_address = \"192.0.2.8\"\n", "reflector.other_address", "must differ"),
        ("[reflector]\naddress = \"192.0.2.8\"\nother_address = \"2001:db8::8\"\n", "reflector.other_address", "same family"),
        ("[reflector]\nother_port = 3479\n", "reflector.other_port", "only means something with reflector.other_address"),
        ("[reflector]\naddress = \"192.0.2.7\"\nother_address = \"192.0.2.8\"\nother_port = 3478\n", "reflector.other_port", "must differ"),
        ("[reflector]\naddress = \"192.0.2.7.1\"\n", "reflector.address", "not an IPv4 or IPv6 address"),
    ])
    func errors(text: String, key: String, fragment: String) {
        do {
            _ = try ConfigFile.parse(text)
            Issue.record("accepted; expected \(key): \(fragment)")
        } catch let e as ConfigError {
            #expect(e.issues.contains { $0.severity == .error && $0.key == key && $0.message.contains(fragment) }, "\(e)")
        } catch { Issue.record("\(error)") }
    }

    @Test("[paths]: defaults (hole punching on), seconds as integers or fractions, and each mistake named")
    func paths() throws {
        let (d, _) = try ConfigFile.parse("[node]\nname = \"n\"\n")
        #expect(d.paths == PathsConfig() && d.paths.holePunching && d.paths.attempt == 10 && d.paths.trust == 6.5)
        let (c, _) = try ConfigFile.parse("[paths]\nhole_punching = false\nattempt_seconds = 3\ntrust_seconds = 2.5\nheartbeat_seconds = 0.5\n")
        #expect(!c.paths.holePunching && c.paths.attempt == 3 && c.paths.trust == 2.5 && c.paths.heartbeat == 0.5)
        for (text, key, words) in [("[paths]\nattempt_seconds = 0", "paths.attempt_seconds", "1.0...120.0"),
                                   ("[paths]\nhole_punching = 1", "paths.hole_punching", "true or false"),
                                   ("[paths]\ntrust_seconds = 1\nheartbeat_seconds = 2", "paths.trust_seconds", "longer than heartbeat_seconds"),
                                   ("[paths]\nretry_secnds = 5", "paths.retry_secnds", "did you mean 'retry_seconds'")] {
            #expect(throws: ConfigError.self) { try ConfigFile.parse(text) }
            do { _ = try ConfigFile.parse(text) } catch let e as ConfigError {
                #expect(e.issues.contains { $0.key == key && $0.message.contains(words) }, "\(e)")
            }
        }
    }

    @Test("private IPv4 embedded in the well-known prefix is a warning, not an error")
    func wellKnownPrefixWarning() throws {
        let (_, warnings) = try ConfigFile.parse(siteAConfig(site: "name = \"A\"\nlan4 = \"192.168.1.0/24\"\nvirtual4 = \"100.65.1.0/24\"\nvirtual6 = \"64:ff9b::/96\""))
        #expect(warnings.contains { $0.key == "site.virtual6" && $0.message.contains("RFC 6052") })
    }

    @Test("reload reports only what changed")
    func changes() throws {
        let (a, _) = try ConfigFile.parse(siteAConfig())
        let (b, _) = try ConfigFile.parse(siteAConfig(extraPeer: "[[peer]]\nname = \"gw-c\"\npublic_key = \"\(keyB)\"\n  [[peer.site]]\n  name = \"C\"\n  virtual4 = \"240.3.3.0/24\""))
        #expect(configChanges(from: a, to: b) == ["peer gw-c added"])
        #expect(configChanges(from: b, to: a) == ["peer gw-c removed"])
        #expect(configChanges(from: a, to: a).isEmpty)
        #expect(b.desiredKernelState.nat.remote == [P("240.2.2.0/24"), P("fd22:2222::/64"), P("240.3.3.0/24")])
    }
}

/// What is refused before the TOML parser sees it (shapes on which toml++ traps; make fuzz found them).
@Suite("TOML text pre-check")
struct TOMLTextTests {
    @Test("a table header that does not start with a name is refused with its line; the same characters inside values, strings and comments are not", arguments: [
        ("[# interfaces]\n", "line 1"),
        ("a = 1\n\n  [[ =x]]\n", "line 3"),
        ("[\u{01}]\n", "control character U+0001"),
    ])
    func refused(_ text: String, _ fragment: String) {
        #expect(TOMLText.problem(text)?.contains(fragment) == true, "\(String(describing: TOMLText.problem(text)))")
    }

    @Test("valid documents pass: arrays over several lines, brackets in strings and comments, multi-line strings")
    func accepted() {
        for text in ["a = [\n  [1, 2],\n  [ \"x\" ],\n  [{ k = 1 }],\n]\n[t]\nb = \"[#\"\n",
                     "x = \"\"\"\n[#\n\"\"\"\n[ok]\ny = '''\n[=\n'''\n",
                     "# [# not a header]\n[\"quoted name\"]\n[[arr]]\n[ spaced . name ]\n",
                     "s = \"a \\\" [# b\"\n[t]\n"] {
            #expect(TOMLText.problem(text) == nil, "\(text): \(String(describing: TOMLText.problem(text)))")
        }
    }
}

extension TOMLTextTests {
    @Test("malformed TOML is refused before the parser, with the place and what was expected", arguments: [
        ("uids = [0,  }51}]\n", "line 1, column 13: expected a value"),    // found by make fuzz: toml++ asserts here
        ("a = [1 2]\n", "expected ',' or ']' in the array"),
        ("a = { b = 1, }\n", "expected a key"),
        ("a = yes\n", "'yes' is not a TOML value"),
        ("a = 007\n", "'007' is not a TOML value"),
        ("a = \"open\n", "not closed before the end of the line"),
        ("a = \"bad \\q\"\n", "unknown escape sequence"),
        ("a = 1 b = 2\n", "expected the end of the line"),
        ("[t\n", "expected ']' to close the table header"),
        ("[[t]\n", "expected ']]'"),
        ("a.\"\"\"b\"\"\" = 1\n", "a key cannot be a multi-line string"),
        ("= 1\n", "expected a key"),
    ])
    func malformed(_ text: String, _ fragment: String) {
        let p = TOMLText.problem(text)
        #expect(p?.contains(fragment) == true, "\(text): \(String(describing: p))")
    }

    @Test("the values TOML allows pass", arguments: [
        "a = 1\nb = -100\nc = +7\nd = 1_000\ne = 0x1F\nf = 0o17\ng = 0b101\nh = 3.14\ni = -0.5e-3\nj = inf\nk = -nan\nl = true\nm = false\n",
        "d1 = 1979-05-27T07:32:00Z\nd2 = 1979-05-27 07:32:00.999-07:00\nd3 = 1979-05-27\nd4 = 07:32:00\n",
        "s1 = \"tab\\t \\u00e9 \\U0001F600\"\ns2 = 'C:\\path'\ns3 = \"\"\"\nline \\\n   joined\"\"\"\ns4 = '''\nraw ''\n'''\n",
        "\u{FEFF}[a.b.\"c d\"]\nx = [ [1, 2], [\"a\", 'b'], { k = 1 }, ]  # trailing comma\ny = {}\n[[arr]]\n[[arr]]\nz = { p = { q = [] } }\n",
    ])
    func wellFormed(_ text: String) {
        #expect(TOMLText.problem(text) == nil, "\(String(describing: TOMLText.problem(text)))")
    }
}

@Suite("relayd configuration: the relay role and relays")
struct RelayConfigTests {
    func issues(_ text: String) -> [String] {
        do { _ = try ConfigFile.parse(text); return [] } catch let e as ConfigError { return e.issues.map { "\($0.key): \($0.message)" } } catch { return ["\(error)"] }
    }

    @Test("[relay] and [[relays]] parse; the role is off and no relays are used by default")
    func parses() throws {
        let (d, _) = try ConfigFile.parse("[node]\nname = \"n\"\n")
        #expect(!d.relay.enabled && d.relays.isEmpty)
        let (c, _) = try ConfigFile.parse("""
        [node]
        name = "r"
        [relay]
        enabled = true
        port = 7000
        allowed_keys = ["\(keyA)"]
        tokens = ["0123456789abcdef"]
        max_nodes = 50
        node_datagrams_per_second = 10
        [[relays]]
        address = "198.51.100.9:51821"
        public_key = "\(keyB)"
        [[relays]]
        address = "[2001:db8::9]:51821"
        public_key = "\(keyA)"
        token = "0123456789abcdef"
        """)
        #expect(c.relay.enabled && c.relay.port == 7000 && c.relay.allowedKeys == [keyA] && c.relay.maxNodes == 50 && c.relay.nodeDatagramsPerSecond == 10)
        #expect(c.relays.map { "\($0.address)" } == ["198.51.100.9:51821", "[2001:db8::9]:51821"] && c.relays[1].token == "0123456789abcdef")
    }

    @Test("mistakes name their key and what to do: a relay that admits nobody, a bad key, a short token, a relay without a key, a typo")
    func mistakes() {
        #expect(issues("[relay]\nenabled = true\n").contains { $0.hasPrefix("relay.allowed_keys:") && $0.contains("admits nobody") })
        #expect(issues("[relay]\nenabled = true\nallowed_keys = [\"nope\"]\n").contains { $0.hasPrefix("relay.allowed_keys[0]:") && $0.contains("not a key") })
        #expect(issues("[relay]\nenabled = true\ntokens = [\"short\"]\n").contains { $0.hasPrefix("relay.tokens[0]:") && $0.contains("16 to 64") })
        #expect(issues("[[relays]]\naddress = \"198.51.100.9:51821\"\n").contains { $0.hasPrefix("relays[0].public_key:") })
        #expect(issues("[[relays]]\naddress = \"nowhere\"\npublic_key = \"\(keyA)\"\n").contains { $0.hasPrefix("relays[0].address:") })
        #expect(issues("[relay]\nenabeld = true\n").contains { $0.contains("did you mean 'enabled'") })
    }

    @Test("[[relays]] websocket: wss:// or ws:// (a warning), anything else named; ca_file and spki_sha256 need wss://")
    func webSocketURLs() throws {
        let base = "[[relays]]\naddress = \"198.51.100.9:51821\"\npublic_key = \"\(keyA)\"\n"
        let (c, w) = try ConfigFile.parse(base + "websocket = \"wss://relay.example/relay\"\nspki_sha256 = \"\(String(repeating: "A", count: 43))=\"\n")
        #expect(c.relays.first?.webSocket == "wss://relay.example/relay" && w.isEmpty)
        let (_, plain) = try ConfigFile.parse(base + "websocket = \"ws://192.168.1.9:8080/relay\"\n")
        #expect(plain.contains { $0.severity == .warning && $0.key == "relays[0].websocket" && $0.message.contains("not encrypted") }, "\(plain)")
        #expect(issues(base + "websocket = \"https://relay.example/relay\"\n").contains { $0.hasPrefix("relays[0].websocket:") && $0.contains("wss://HOST") })
        #expect(issues(base + "websocket = \"relay.example\"\n").contains { $0.hasPrefix("relays[0].websocket:") })
        #expect(issues(base + "websocket = \"ws://192.168.1.9/relay\"\nca_file = \"/etc/ca.pem\"\n").contains { $0.contains("need a wss:// URL") })
        #expect(issues(base + "ca_file = \"/etc/ca.pem\"\n").contains { $0.hasPrefix("relays[0]:") && $0.contains("websocket") })
    }
}

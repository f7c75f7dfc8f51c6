import Foundation
import Testing
@testable import RelayCore
@testable import RelayHelperAPI
@testable import RelayHelperKit
@testable import RelayNftables
@testable import RelayWire

func P(_ s: String) -> IPPrefix { try! IPPrefix(parsing: s) }

@Suite("helper policy")
struct PolicyTests {
    static let lists = "[nat]\ntranslate=[\"192.168.0.0/16\", \"240.0.0.0/4\"]\n[routes]\ndestinations=[\"240.0.0.0/4\"]\n[devices]\naddresses=[\"240.0.0.0/4\"]\n"
    static let shipped = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("policies/helper.toml")

    @Test("the shipped policy is valid and narrow: routes and device addresses only in virtual space, nothing exposed")
    func shippedPolicy() throws {
        let p = try HelperPolicy.parse(try String(contentsOf: Self.shipped, encoding: .utf8))
        #expect(p.table.name == "relay")
        #expect(p.clientUIDs == [0] && p.clientUserNames == ["relayd"] && p.readerGroupNames == ["relay"])
        #expect(p.translate.contains(P("240.0.0.0/4")) && p.translate.contains(P("192.168.0.0/16")))
        // No LAN range may be routed into a device or carried by one.
        for lan in ["192.168.1.0/24", "10.1.0.0/16", "172.16.5.0/24"] {
            #expect(!HelperPolicy.covers(p.routeDestinations, P(lan)) && !HelperPolicy.covers(p.deviceAddresses, P(lan)), "\(lan)")
        }
        #expect(!p.exitDefaultRoute && p.masqueradeInterfaces.isEmpty && p.maxFilterRules == 0, "exposing kinds are off")
        #expect(p.check(routes: [RouteSpec(P("0.0.0.0/0"), device: "relay0")]).contains { $0.contains("[exit] default_route") })
    }

    @Test("every problem is named with its key", arguments: [
        ("[clients]\nuids = [\"root\"]\n" + lists, "clients.uids"),
        ("[table]\nname = \"Bad Name\"\n" + lists, "table.name"),
        ("[table]\ndnat_priority = 9999\n" + lists, "table.dnat_priority"),
        ("[nat]\ntranslate=[\"10.0.0.1/8\"]", "did you mean 10.0.0.0/8"),
        ("[nat]\ntranslate=[]", "are all empty"),
        ("[nat]\ntranslate=[\"0.0.0.0/0\"]", "would allow everything"),
        ("[routes]\ndestinations=[\"::/0\"]", "default route is granted apart"),
        ("[nat]\ntranslate=[\"10.0.0.0/8\"]\nmax_elemnts = 5", "unknown key nat.max_elemnts"),
        ("[natt]\n" + lists, "unknown section [natt]"),
        ("[nat\n", "TOML syntax error at line 1"),
        ("[devices]\nprefix = \"muchtoolongprefix\"\naddresses=[\"240.0.0.0/4\"]", "devices.prefix"),
        ("[nat]\nallowed_prefixes=[\"10.0.0.0/8\"]", "nat.translate (your LANs"),
        ("[exit]\ndefault_route = \"yes\"\n" + lists, "exit.default_route must be true or false"),
        ("[masquerade]\ninterfaces = [\"eth0/x\"]\n" + lists, "masquerade.interfaces"),
        ("[limits]\nmax_connections_per_uid = 0\n" + lists, "limits.max_connections_per_uid"),
        // Found by make fuzz: toml++ asserts on a control character in a table header.
        ("[\u{01}\u{00}]\naBBBBBfixes = [\"02&0.0.0/8\"]\n", "TOML syntax error at line 1, column 2: expected a key (letters, digits, _, - or a quoted name), found control character U+0001"),
    ])
    func policyErrors(_ text: String, _ expected: String) {
        do {
            _ = try HelperPolicy.parse(text, file: "test.toml")
            Issue.record("accepted an invalid policy")
        } catch let e as PolicyError {
            #expect(e.description.contains(expected), "\(e.description)")
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test("the checker refuses each kind of out-of-policy request, each against its own list")
    func checker() throws {
        var p = try HelperPolicy.parse(Self.lists)
        p.maxElements = 3
        let ok = NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))], remote: [P("240.2.2.0/24")])
        #expect(p.check(ok).isEmpty)
        let cases: [(NATState, String)] = [
            (NATState(dnat: [PrefixMapping(P("10.1.1.0/24"), P("192.168.1.0/24"))]), "dnat[0] 10.1.1.0/24 is outside the policy's nat.translate"),
            (NATState(snat: [PrefixMapping(P("192.168.1.0/24"), P("8.8.8.0/24"))]), "snat[0] 8.8.8.0/24 is outside"),
            (NATState(remote: [P("0.0.0.0/0")]), "remote[0] 0.0.0.0/0 is outside the policy's routes.destinations"),
            // A LAN may be translated but is not a remote (routed) prefix.
            (NATState(remote: [P("192.168.2.0/24")]), "remote[0] 192.168.2.0/24 is outside the policy's routes.destinations"),
            (NATState(dnatExact: [AddressMapping(IPAddress("240.1.1.1")!, IPAddress("1.1.1.1")!)]), "dnatExact[0] 1.1.1.1 is outside"),
            (NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.0.0/23"))]), "must be the same size"),
            (NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("fd00::/120"))]), "same family"),
            (NATState(remote: [P("240.2.0.0/16"), P("240.2.2.0/24")]), "overlap"),
            (NATState(remote: [P("240.1.0.0/24"), P("240.2.0.0/24"), P("240.3.0.0/24"), P("240.4.0.0/24")]), "exceed the policy's nat.max_elements = 3"),
        ]
        for (state, expected) in cases {
            let problems = p.check(state)
            #expect(problems.contains { $0.contains(expected) }, "\(problems)")
        }
        // Routes: the LAN is translatable but never routable into a device.
        #expect(p.check(routes: [RouteSpec(P("192.168.1.0/25"), device: "relay0")]).contains { $0.contains("outside the policy's routes.destinations") })
    }

    @Test("a device address is checked with its prefix length: what the kernel derives must stay inside devices.addresses", arguments: [
        ("240.1.1.1/24", true), ("240.1.1.1/32", true), ("240.1.1.1/4", true),
        ("240.1.1.1/1", false), ("240.1.1.1/3", false), ("240.1.1.1/0", false),
        ("64:ff9b::1/96", true), ("64:ff9b::1/32", true), ("64:ff9b::1/1", false), ("64:ff9b::1/31", false), ("64:ff9b::1/0", false),
    ])
    func deviceAddressLengths(_ address: String, _ accepted: Bool) throws {
        let p = try HelperPolicy.parse("[devices]\naddresses=[\"240.0.0.0/4\", \"64:ff9b::/32\"]")
        let problems = p.check(device: DeviceSpec(name: "relay0", mtu: 1400, addresses: [try InterfaceAddress(parsing: address)]))
        #expect(problems.isEmpty == accepted, "\(address): \(problems)")
        if !accepted { #expect(problems.contains { $0.contains("reaches outside the policy's devices.addresses") && $0.contains("longer one") }, "\(problems)") }
    }

    @Test("a route inside another owner's route is found (a /25 of a connected /24); a default route never counts")
    func shadowing() {
        let foreign = [P("192.168.1.0/24"), P("0.0.0.0/0"), P("fd00:1::/64")]
        #expect(HelperPolicy.shadowed(by: P("192.168.1.0/25"), among: foreign) == P("192.168.1.0/24"))
        #expect(HelperPolicy.shadowed(by: P("192.168.1.0/24"), among: foreign) == P("192.168.1.0/24"))
        #expect(HelperPolicy.shadowed(by: P("192.168.0.0/16"), among: foreign) == nil, "a shorter route leaves the connected /24 in charge")
        #expect(HelperPolicy.shadowed(by: P("240.2.2.0/24"), among: foreign) == nil)
        #expect(HelperPolicy.shadowed(by: P("fd00:1::/96"), among: foreign) == P("fd00:1::/64"))
    }

    @Test("permissions: writers, readers, strangers; supplementary groups and names count, resolved at each check")
    func permissions() throws {
        let p = try HelperPolicy.parse("[clients]\nuids=[0, 1000]\ngids=[50]\nread_uids=[2000]\nusers=[\"later\"]\nread_groups=[\"watchers\"]\n" + Self.lists)
        #expect(p.permission(uid: 1000, gid: 1000) == .write)
        #expect(p.permission(uid: 3000, gid: 50) == .write)
        #expect(p.permission(uid: 3000, gid: 3000, groups: [7, 50]) == .write, "a supplementary group counts")
        #expect(p.permission(uid: 2000, gid: 2000) == .read)
        #expect(p.permission(uid: 65534, gid: 65534) == .none)
        // A user created after the policy loaded: the name is resolved when it is checked.
        let box = NameBox()
        let names = NameResolver(uid: { box.users[$0] }, gid: { $0 == "watchers" ? 77 : nil })
        #expect(p.permission(uid: 4242, gid: 4242, names: names) == .none)
        box.users["later"] = 4242
        #expect(p.permission(uid: 4242, gid: 4242, names: names) == .write)
        #expect(p.permission(uid: 5000, gid: 5000, groups: [77], names: names) == .read)
        #expect(HelperOp.allCases.filter { $0.permission == .read } == [.hello, .observe], "only hello and observe are reads")
    }
}

final class NameBox: @unchecked Sendable { var users: [String: UInt32] = [:] }

@Suite("helper wire protocol")
struct WireTests {
    @Test("frames decode across every split of the input")
    func everySplit() throws {
        let payloads: [[UInt8]] = [Array("{\"a\":1}".utf8), [], Array(repeating: 7, count: 300)]
        let stream = payloads.flatMap(FrameEncoder.frame)
        for cut in 0...stream.count {
            var d = FrameDecoder(maxFrame: 1024)
            var out: [[UInt8]] = []
            for part in [stream[..<cut], stream[cut...]] {
                d.feed(part)
                while case .frame(let f) = try d.next() { out.append(f) }
            }
            #expect(out == payloads, "split at \(cut)")
        }
        // One byte at a time.
        var d = FrameDecoder(maxFrame: 1024)
        var out: [[UInt8]] = []
        for b in stream { d.feed([b]); while case .frame(let f) = try d.next() { out.append(f) } }
        #expect(out == payloads)
    }

    @Test("a frame over the cap is refused before it is buffered")
    func oversized() {
        var d = FrameDecoder(maxFrame: 16)
        d.feed([0, 0, 0, 17])
        #expect(throws: WireError.self) { try d.next() }
    }

    @Test("malformed requests get typed errors that say what is wrong", arguments: [
        ("not json", WireError.malformed, "not a JSON object"),
        ("{\"version\":2,\"id\":1,\"op\":\"hello\"}", WireError.unsupportedVersion, "version 2"),
        ("{\"version\":1,\"id\":1,\"op\":\"format_disk\"}", WireError.unknownOperation, "format_disk"),
        ("{\"version\":1,\"op\":\"hello\"}", WireError.malformed, "missing 'id'"),
        ("{\"version\":1,\"id\":1,\"op\":\"apply_nat\",\"nat\":{\"dnat\":\"1.2.3.4/8=10.0.0.0/8\"}}", WireError.malformed, "host bits"),
    ])
    func malformed(_ text: String, _ code: String, _ fragment: String) {
        switch HelperCodec.decodeRequest(Array(text.utf8)) {
        case .success: Issue.record("accepted \(text)")
        case .failure(let e):
            #expect(e.code == code)
            #expect(e.message.contains(fragment), "\(e.message)")
        }
    }

    @Test("random bytes never crash the decoders (bounded fuzz)")
    func fuzz() throws {
        var rng = SystemRandomNumberGenerator()
        let seed = Array(HelperCodec.encode(HelperRequest(id: 1, op: .applyNAT, nat: NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))]))))
        for _ in 0..<3000 {
            var input = seed
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                let i = Int.random(in: 0..<input.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: input[i] = UInt8.random(in: 0...255, using: &rng)
                case 1: input.remove(at: i)
                default: input.insert(UInt8.random(in: 0...255, using: &rng), at: i)
                }
                if input.isEmpty { input = [0] }
            }
            _ = HelperCodec.decodeRequest(input)
            var d = FrameDecoder(maxFrame: 4096)
            d.feed(input)
            while case .frame = try? d.next() {}
        }
    }
}

@Suite("nftables plan")
struct PlanTests {
    @Test("the two-site example renders the expected nft text (golden)")
    func golden() {
        let state = NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))],
                             snat: [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24"))], remote: [P("240.2.2.0/24")])
        let text = TablePlan(state, spec: TableSpec()).render()
        #expect(text == """
        table inet relay {
        \tset remote4 {
        \t\ttype ipv4_addr
        \t\tflags interval
        \t\telements = { 240.2.2.0/24 }
        \t}
        \tmap dnat4 {
        \t\ttype ipv4_addr : interval ipv4_addr
        \t\tflags interval
        \t\telements = { 240.1.1.0/24 : 192.168.1.0/24 }
        \t}
        \tmap snat4 {
        \t\ttype ipv4_addr : interval ipv4_addr
        \t\tflags interval
        \t\telements = { 192.168.1.0/24 : 240.1.1.0/24 }
        \t}
        \tchain prerouting {
        \t\ttype nat hook prerouting priority -100; policy accept;
        \t\tiifname "relay*" ip daddr @dnat4 counter dnat ip prefix to ip daddr map @dnat4 comment "\(TablePlan.Rule.dnatPrefix(.ipv4, map: "dnat4", from: "relay").tag)"
        \t}
        \tchain postrouting {
        \t\ttype nat hook postrouting priority 100; policy accept;
        \t\tip daddr @remote4 ip saddr @snat4 counter snat ip prefix to ip saddr map @snat4 comment "\(TablePlan.Rule.snatPrefix(.ipv4, map: "snat4", remote: "remote4").tag)"
        \t}
        }

        """)
    }

    @Test("interval elements follow nft's encoding: leading 0/END, start with min..max data, an END after every interval")
    func intervalElements() {
        let plan = TablePlan(NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24")),
                                             PrefixMapping(P("240.1.2.0/24"), P("192.168.2.0/24")),
                                             PrefixMapping(P("240.1.9.0/24"), P("192.168.9.0/24"))]), spec: TableSpec())
        let e = NftBuild.elements(plan.sets[0])
        #expect(e.map(\.key) == [[0, 0, 0, 0], [240, 1, 1, 0], [240, 1, 2, 0], [240, 1, 2, 0], [240, 1, 3, 0], [240, 1, 9, 0], [240, 1, 10, 0]])
        #expect(e.map(\.end) == [true, false, true, false, true, false, true])
        #expect(e[1].data == [192, 168, 1, 0, 192, 168, 1, 255])
    }

    @Test("rule tags are stable and differ between rules")
    func tags() {
        let a = TablePlan.Rule.dnatPrefix(.ipv4, map: "dnat4", from: "relay"), b = TablePlan.Rule.dnatPrefix(.ipv6, map: "dnat6", from: "relay")
        #expect(a.tag == a.tag && a.tag != b.tag && a.tag.hasPrefix("relay:") && a.tag.count == 22)
    }
}

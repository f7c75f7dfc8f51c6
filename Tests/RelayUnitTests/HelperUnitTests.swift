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
    @Test("the shipped policy file is valid")
    func shippedPolicy() throws {
        let text = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("policies/helper.toml"), encoding: .utf8)
        let p = try HelperPolicy.parse(text)
        #expect(p.table.name == "relay")
        #expect(p.clientUIDs == [0])
        #expect(p.allowedPrefixes.contains(P("240.0.0.0/4")))
    }

    @Test("every problem is named with its key", arguments: [
        ("[clients]\nuids = [\"root\"]\n[nat]\nallowed_prefixes=[\"10.0.0.0/8\"]", "clients.uids"),
        ("[table]\nname = \"Bad Name\"\n[nat]\nallowed_prefixes=[\"10.0.0.0/8\"]", "table.name"),
        ("[table]\ndnat_priority = 9999\n[nat]\nallowed_prefixes=[\"10.0.0.0/8\"]", "table.dnat_priority"),
        ("[nat]\nallowed_prefixes=[\"10.0.0.1/8\"]", "did you mean 10.0.0.0/8"),
        ("[nat]\nallowed_prefixes=[]", "nat.allowed_prefixes is empty"),
        ("[nat]\nallowed_prefixes=[\"10.0.0.0/8\"]\nmax_elemnts = 5", "unknown key nat.max_elemnts"),
        ("[natt]\n[nat]\nallowed_prefixes=[\"10.0.0.0/8\"]", "unknown section [natt]"),
        ("[nat\n", "TOML syntax error at line 1"),
        ("[devices]\nprefix = \"muchtoolongprefix\"\n[nat]\nallowed_prefixes=[\"10.0.0.0/8\"]", "devices.prefix"),
    ])
    func policyErrors(_ text: String, _ expected: String) {
        do {
            _ = try HelperPolicy.parse(text, file: "test.toml")
            Issue.record("accepted an invalid policy")
        } catch let e as PolicyError {
            #expect(e.description.contains(expected), "\(e.description)")
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test("the checker refuses each kind of out-of-policy request")
    func checker() throws {
        let p = try HelperPolicy.parse("[nat]\nallowed_prefixes=[\"192.168.0.0/16\", \"240.0.0.0/4\"]\nmax_elements = 3")
        let ok = NATState(dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24"))], remote: [P("240.2.2.0/24")])
        #expect(p.check(ok).isEmpty)
        let cases: [(NATState, String)] = [
            (NATState(dnat: [PrefixMapping(P("10.1.1.0/24"), P("192.168.1.0/24"))]), "dnat[0] 10.1.1.0/24 is outside"),
            (NATState(snat: [PrefixMapping(P("192.168.1.0/24"), P("8.8.8.0/24"))]), "snat[0] 8.8.8.0/24 is outside"),
            (NATState(remote: [P("0.0.0.0/0")]), "remote[0] 0.0.0.0/0 is outside"),
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
    }

    @Test("permissions: writers, readers, strangers")
    func permissions() throws {
        let p = try HelperPolicy.parse("[clients]\nuids=[0, 1000]\ngids=[50]\nread_uids=[2000]\n[nat]\nallowed_prefixes=[\"10.0.0.0/8\"]")
        #expect(p.permission(uid: 1000, gid: 1000) == .write)
        #expect(p.permission(uid: 3000, gid: 50) == .write)
        #expect(p.permission(uid: 2000, gid: 2000) == .read)
        #expect(p.permission(uid: 65534, gid: 65534) == .none)
        #expect(HelperOp.allCases.filter { $0.permission == .read } == [.hello, .observe], "only hello and observe are reads")
    }
}

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
        \t\tip daddr @dnat4 counter dnat ip prefix to ip daddr map @dnat4 comment "\(TablePlan.Rule.dnatPrefix(.ipv4, map: "dnat4").tag)"
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
        let a = TablePlan.Rule.dnatPrefix(.ipv4, map: "dnat4"), b = TablePlan.Rule.dnatPrefix(.ipv6, map: "dnat6")
        #expect(a.tag == a.tag && a.tag != b.tag && a.tag.hasPrefix("relay:") && a.tag.count == 22)
    }
}

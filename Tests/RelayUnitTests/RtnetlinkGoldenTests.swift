import Testing
import RelayCore
import RelayHelperAPI
import RelayHelperKit
import RelayNetlink
import RelayNftables

private func hex(_ s: String) -> [UInt8] {
    let digits = s.split(whereSeparator: { $0 == " " || $0 == "\n" })
    return digits.map { UInt8($0, radix: 16)! }
}

/// Golden bytes: what iproute2 (6.1) sends for the same `ip` command, captured with
/// `strace -e trace=sendmsg -e write=3 ip ...` in a throwaway namespace, with the sequence number
/// (bytes 8-11) set to 0x01020304 and the interface index to 1 (lo). The comments name each field.
@Suite("rtnetlink requests (golden bytes from iproute2)")
struct RtnetlinkGoldenTests {
    static let seq: UInt32 = 0x0403_0201

    @Test("ip route replace 240.2.2.0/24 dev lo proto 196 table 254")
    func routeReplaceV4() {
        let want = hex("""
        2c 00 00 00  18 00  05 05  01 02 03 04  00 00 00 00
        02 18 00 00  fe  c4  fd  01  00 00 00 00
        08 00 01 00  f0 02 02 00
        08 00 04 00  01 00 00 00
        """)
        // nlmsghdr: len 44, RTM_NEWROUTE, REQUEST|ACK|REPLACE|CREATE, seq, pid 0
        // rtmsg: AF_INET, dst_len 24, src 0, tos 0, table main, proto 196, scope link, unicast, flags
        // RTA_DST 240.2.2.0, RTA_OIF 1
        #expect(RtnetlinkRequests.routeReplace(P("240.2.2.0/24"), oif: 1, table: 254, protocolNumber: 196, metric: nil, seq: Self.seq) == want)
    }

    @Test("ip -6 route replace fd00:b::/64 dev lo proto 196 table 254 (scope universe)")
    func routeReplaceV6() {
        let want = hex("""
        38 00 00 00  18 00  05 05  01 02 03 04  00 00 00 00
        0a 40 00 00  fe  c4  00  01  00 00 00 00
        14 00 01 00  fd 00 00 0b 00 00 00 00 00 00 00 00 00 00 00 00
        08 00 04 00  01 00 00 00
        """)
        #expect(RtnetlinkRequests.routeReplace(P("fd00:b::/64"), oif: 1, table: 254, protocolNumber: 196, metric: nil, seq: Self.seq) == want)
    }

    @Test("ip route replace 240.2.2.0/24 dev lo proto 196 table 1000 (RTA_TABLE, rtm_table unspec)")
    func routeReplaceBigTable() {
        let want = hex("""
        34 00 00 00  18 00  05 05  01 02 03 04  00 00 00 00
        02 18 00 00  00  c4  fd  01  00 00 00 00
        08 00 01 00  f0 02 02 00
        08 00 0f 00  e8 03 00 00
        08 00 04 00  01 00 00 00
        """)
        #expect(RtnetlinkRequests.routeReplace(P("240.2.2.0/24"), oif: 1, table: 1000, protocolNumber: 196, metric: nil, seq: Self.seq) == want)
    }

    @Test("ip route del 240.2.2.0/24 dev lo proto 196 table 254 (scope nowhere, type unspec)")
    func routeDelete() {
        let want = hex("""
        2c 00 00 00  19 00  05 00  01 02 03 04  00 00 00 00
        02 18 00 00  fe  c4  ff  00  00 00 00 00
        08 00 01 00  f0 02 02 00
        08 00 04 00  01 00 00 00
        """)
        #expect(RtnetlinkRequests.routeDelete(P("240.2.2.0/24"), oif: 1, table: 254, protocolNumber: 196, metric: nil, seq: Self.seq) == want)
    }

    @Test("ip addr replace 240.1.1.1/24 dev lo noprefixroute")
    func addressReplace() {
        let want = hex("""
        30 00 00 00  14 00  05 05  01 02 03 04  00 00 00 00
        02 18 00 00  01 00 00 00
        08 00 02 00  f0 01 01 01
        08 00 01 00  f0 01 01 01
        08 00 08 00  00 02 00 00
        """)
        #expect(RtnetlinkRequests.addressReplace(try! InterfaceAddress(parsing: "240.1.1.1/24"), index: 1, seq: Self.seq) == want)
    }

    @Test("ip link set dev lo mtu 1400 up")
    func linkSet() {
        let want = hex("""
        28 00 00 00  10 00  05 00  01 02 03 04  00 00 00 00
        00 00 00 00  01 00 00 00  01 00 00 00  01 00 00 00
        08 00 04 00  78 05 00 00
        """)
        #expect(RtnetlinkRequests.linkSet(index: 1, mtu: 1400, up: true, seq: Self.seq) == want)
    }

    @Test("a route reply decodes; truncated replies never trap")
    func decodeRoute() {
        var bytes = RtnetlinkRequests.routeReplace(P("240.2.2.0/24"), oif: 7, table: 254, protocolNumber: 196, metric: 5, seq: 1)
        bytes[4] = UInt8(RTNL.RTM_NEWROUTE)
        let m = NetlinkMessage(type: RTNL.RTM_NEWROUTE, flags: 0, seq: 1, pid: 0, bytes: bytes)
        let r = RtnetlinkReplies.route(m)
        #expect(r?.destination == P("240.2.2.0/24") && r?.oif == 7 && r?.table == 254 && r?.protocolNumber == 196 && r?.metric == 5)
        for cut in 16..<bytes.count {
            _ = RtnetlinkReplies.route(NetlinkMessage(type: RTNL.RTM_NEWROUTE, flags: 0, seq: 1, pid: 0, bytes: Array(bytes[..<cut])))
            _ = RtnetlinkReplies.link(NetlinkMessage(type: RTNL.RTM_NEWLINK, flags: 0, seq: 1, pid: 0, bytes: Array(bytes[..<cut])))
            _ = RtnetlinkReplies.address(NetlinkMessage(type: RTNL.RTM_NEWADDR, flags: 0, seq: 1, pid: 0, bytes: Array(bytes[..<cut])))
        }
    }
}

@Suite("helper policy: routes, devices, request fields, integration")
struct HelperPolicyKernelObjectsTests {
    let policy = try! HelperPolicy.parse("""
    [nat]
    translate = ["240.0.0.0/4", "192.168.0.0/16", "fd00::/8"]
    [routes]
    destinations = ["240.0.0.0/4", "fd00::/8"]
    max_routes = 2
    [devices]
    addresses = ["240.0.0.0/4", "fd00::/8"]
    prefix = "rly"
    max_addresses = 1
    [integration]
    chains = ["inet filter forward"]
    """)

    @Test("each kind of out-of-policy route is refused with its reason")
    func routes() {
        #expect(policy.check(routes: [RouteSpec(P("240.2.2.0/24"), device: "rly0")]).isEmpty)
        let cases: [([RouteSpec], String)] = [
            ([RouteSpec(P("8.8.8.0/24"), device: "rly0")], "outside the policy"),
            ([RouteSpec(P("0.0.0.0/0"), device: "rly0")], "is a default route"),
            ([RouteSpec(P("192.168.1.0/25"), device: "rly0")], "outside the policy's routes.destinations"),
            ([RouteSpec(P("240.2.2.0/24"), device: "eth0")], "not one of the helper's devices"),
            ([RouteSpec(P("240.2.2.0/24"), device: "rly")], "not one of the helper's devices"),
            ([RouteSpec(P("240.2.2.0/24"), device: "rly0"), RouteSpec(P("240.2.2.0/24"), device: "rly0")], "listed twice"),
            ((1...3).map { RouteSpec(P("240.2.\($0).0/24"), device: "rly0") }, "max_routes"),
        ]
        for (routes, reason) in cases {
            let problems = policy.check(routes: routes)
            #expect(problems.contains { $0.contains(reason) }, "\(routes): \(problems)")
        }
    }

    @Test("each kind of out-of-policy device is refused with its reason")
    func devices() throws {
        #expect(policy.check(device: DeviceSpec(name: "rly0", mtu: 1420, addresses: [try InterfaceAddress(parsing: "240.1.1.1/24")])).isEmpty)
        let cases: [(DeviceSpec, String)] = [
            (DeviceSpec(name: "eth0"), "must be 'rly'"),
            (DeviceSpec(name: "rly-too-long-name"), "must be 'rly'"),
            (DeviceSpec(name: "rly0;x"), "must be 'rly'"),
            (DeviceSpec(name: "rly0", mtu: 100), "mtu 100"),
            (DeviceSpec(name: "rly0", mtu: 1000, addresses: [try InterfaceAddress(parsing: "fd00::1/64")]), "IPv6 needs at least 1280"),
            (DeviceSpec(name: "rly0", addresses: [try InterfaceAddress(parsing: "10.0.0.1/8")]), "outside the policy"),
            (DeviceSpec(name: "rly0", addresses: [try InterfaceAddress(parsing: "240.1.1.1/24"), try InterfaceAddress(parsing: "240.1.1.2/24")]), "max_addresses"),
        ]
        for (d, reason) in cases {
            let problems = policy.check(device: d)
            #expect(problems.contains { $0.contains(reason) }, "\(d): \(problems)")
        }
    }

    @Test("a request carries exactly the fields of its operation")
    func fields() {
        #expect(HelperRequest(id: 1, op: .applyNAT, nat: NATState()).fieldProblem == nil)
        #expect(HelperRequest(id: 1, op: .applyNAT).fieldProblem?.contains("needs 'nat'") == true)
        #expect(HelperRequest(id: 1, op: .observe, nat: NATState()).fieldProblem?.contains("'nat' is not allowed") == true)
        #expect(HelperRequest(id: 1, op: .updateNAT, nat: NATState()).fieldProblem?.contains("needs 'remove'") == true)
        #expect(HelperRequest(id: 1, op: .openDevice, routes: []).fieldProblem != nil)
        #expect(HelperRequest(id: 1, op: .deleteDevice, name: "rly0").fieldProblem == nil)
    }

    @Test("integration points parse strictly; the rendered rules name the jump and the device prefix")
    func integration() throws {
        #expect(policy.integrations.map(\.point.description) == ["inet filter forward"])
        #expect(IntegrationPoint("inet filter") == nil)
        #expect(IntegrationPoint("bridge filter forward") == nil)
        #expect(IntegrationPoint("inet filter forward;flush") == nil)
        let text = policy.integrations[0].render()
        #expect(text.contains("iifname \"rly*\" ct status dnat counter accept"))
        #expect(text.contains("insert rule inet filter forward counter jump relay-accept comment \"relay:integration\""))
        #expect(throws: PolicyError.self) { _ = try HelperPolicy.parse("[nat]\ntranslate=[\"10.0.0.0/8\"]\n[integration]\nchains=[\"filter forward\"]") }
    }

    @Test("clients by name: an unknown name grants nothing and is a warning")
    func clientNames() throws {
        let p = try HelperPolicy.parse("[clients]\nuids = []\nusers = [\"root\", \"no-such-user-here\"]\nread_groups = [\"no-such-group-here\"]\n[nat]\ntranslate = [\"10.0.0.0/8\"]")
        #expect(p.clientUIDs.isEmpty && p.clientUserNames == ["root", "no-such-user-here"])
        #expect(p.warnings.count == 2 && p.warnings[0].contains("no-such-user-here"))
        #expect(p.permission(uid: 0, gid: 0) == .write)
        #expect(p.permission(uid: 1, gid: 1) == .none)
    }

    @Test("prefix from a kernel interval: inverse of endExclusive, refuses non-prefix ranges")
    func prefixFromRange() {
        for s in ["240.2.2.0/24", "10.0.0.7/32", "0.0.0.0/0", "255.255.255.0/24", "fd00:b::/64", "::/0", "64:ff9b::/96"] {
            let p = P(s)
            #expect(IPPrefix(start: p.address, endExclusive: p.endExclusive) == p, "\(s)")
        }
        #expect(IPPrefix(start: IPAddress("10.0.0.1")!, endExclusive: IPAddress("10.0.0.3")!) == nil)
        #expect(IPPrefix(start: IPAddress("10.0.0.0")!, endExclusive: IPAddress("10.0.0.3")!) == nil)
    }
}

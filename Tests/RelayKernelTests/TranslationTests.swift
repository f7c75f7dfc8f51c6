import Foundation
import Testing
import RelayControlAPI
import RelayCore
import RelayTestHarness

/// Issue 7's matrix on the two-site scenario with IPv6 added: each site has an IPv4-only host
/// (192.168.1.20) and an IPv6-only segment (fd00:cafe::/64 at both sites) whose host fd00:cafe::30
/// has the IPv4 name 192.168.1.30 (site.map, RFC 7757) and fd00:cafe::31 has none.
@Suite("kernel: IPv4/IPv6 translation on the site path", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct TranslationTests {
    static func trimmed(_ r: CommandResult) -> String { r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
    /// socat prints IPv6 peers as "[addr]"; compare as addresses.
    static func address(_ s: Substring) -> IPAddress? { IPAddress(String(s.trimmingCharacters(in: CharacterSet(charactersIn: "[]")))) }

    @Test("the matrix: IPv4->IPv4, IPv6->IPv4 (RFC 6052 names), IPv4->IPv6 (explicit mappings), IPv6->IPv6 over one shared ULA prefix, untranslatable -> ICMP errors; ping, TCP, UDP both ways; traceroute and path MTU across the translation")
    func matrix() throws {
        try KernelGate.check()
        try Lab.with("siit") { lab in
            let s = try SiteToSite(lab, ipv6: true)
            try s.start()
            let h6A = s.host6A!, h6B = s.host6B!
            for h in [s.hostA, s.hostB] { try SiteToSite.startWhoami(h) }
            for h in [h6A, h6B] { try SiteToSite.startWhoami(h, ipv6: true) }
            // The tunnel comes up on the first packet.
            try waitUntil("the tunnel is up", timeout: 15) { try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded }

            // 1. IPv4 -> IPv4 (the site-to-site baseline).
            #expect(Self.trimmed(try s.hostA.run(["socat", "-T", "3", "-", "TCP:240.2.2.20:9001"], stdin: "")) == "240.1.1.20 192.168.1.20")

            // 2. IPv6 -> IPv4: A's IPv6-only host reaches B's IPv4-only host by its RFC 6052 name; B's
            //    host sees A's host by its IPv4 name (192.168.1.30 in A's site.map -> 240.1.1.30).
            let b4 = "64:ff9b:2222::192.168.1.20"
            let ping2 = try h6A.run(["ping", "-6", "-c3", "-i0.2", "-W2", "-I", "fd00:cafe::30", b4], check: false)
            #expect(ping2.succeeded, "ping6 \(b4): \(ping2.stdout)\(ping2.stderr)")
            let tcp2 = Self.trimmed(try h6A.run(["socat", "-T", "3", "-", "TCP6:[\(b4)]:9001,bind=[fd00:cafe::30]"], stdin: ""))
            #expect(tcp2 == "240.1.1.30 192.168.1.20", "TCP6 -> \(b4)")
            let udp2 = Self.trimmed(try h6A.run(["socat", "-T", "2", "-", "UDP6:[\(b4)]:9000,bind=[fd00:cafe::30]"], stdin: "x\n"))
            #expect(udp2 == "240.1.1.30", "UDP6 -> \(b4)")
            // ... and the other way round (B's IPv6 host to A's IPv4 host).
            let tcp2b = Self.trimmed(try h6B.run(["socat", "-T", "3", "-", "TCP6:[64:ff9b:1111::192.168.1.20]:9001,bind=[fd00:cafe::30]"], stdin: ""))
            #expect(tcp2b == "240.2.2.30 192.168.1.20", "TCP6 B -> A")

            // 3. IPv4 -> IPv6: A's IPv4-only host reaches B's IPv6-only host by the IPv4 name B's
            //    site.map gives it (192.168.1.30 -> 240.2.2.30); B's host sees 64:ff9b:1111::192.168.1.20.
            let a4in6 = IPAddress("64:ff9b:1111::192.168.1.20")!
            let ping3 = try s.hostA.run(["ping", "-c3", "-i0.2", "-W2", "240.2.2.30"], check: false)
            #expect(ping3.succeeded, "ping 240.2.2.30: \(ping3.stdout)")
            let tcp3 = Self.trimmed(try s.hostA.run(["socat", "-T", "3", "-", "TCP:240.2.2.30:9001"], stdin: "")).split(separator: " ")
            #expect(tcp3.count == 2 && Self.address(tcp3[0]) == a4in6 && Self.address(tcp3[1]) == IPAddress("fd00:cafe::30"), "TCP -> 240.2.2.30: \(tcp3)")
            let udp3 = Self.trimmed(try s.hostA.run(["socat", "-T", "2", "-", "UDP:240.2.2.30:9000"], stdin: "x\n"))
            #expect(IPAddress(udp3) == a4in6, "UDP -> 240.2.2.30: \(udp3)")
            let tcp3b = Self.trimmed(try s.hostB.run(["socat", "-T", "3", "-", "TCP:240.1.1.30:9001"], stdin: "")).split(separator: " ")
            #expect(tcp3b.first.flatMap(Self.address) == IPAddress("64:ff9b:2222::192.168.1.20"), "TCP B -> 240.1.1.30: \(tcp3b)")

            // 4. IPv6 -> IPv6 although both sites use fd00:cafe::/64: the kernel's IPv6 prefix maps
            //    (virtual6_lan) keep the host bits, as virtual4 does for IPv4.
            let ping4 = try h6A.run(["ping", "-6", "-c3", "-i0.2", "-W2", "fd22:2222::30"], check: false)
            #expect(ping4.succeeded, "ping6 fd22:2222::30: \(ping4.stdout)")
            let tcp4 = Self.trimmed(try h6A.run(["socat", "-T", "3", "-", "TCP6:[fd22:2222::30]:9001,bind=[fd00:cafe::31]"], stdin: "")).split(separator: " ")
            #expect(tcp4.first.flatMap(Self.address) == IPAddress("fd11:1111::31"), "TCP6 -> fd22:2222::30: \(tcp4)")
            let udp4 = Self.trimmed(try h6B.run(["socat", "-T", "2", "-", "UDP6:[fd11:1111::30]:9000,bind=[fd00:cafe::30]"], stdin: "x\n"))
            #expect(IPAddress(udp4) == IPAddress("fd22:2222::30"), "UDP6 B -> fd11:1111::30: \(udp4)")
            let nft = try s.gwA.run(["nft", "-j", "list", "table", "inet", "relay"]).stdout
            #expect(nft.contains("fd00:cafe::") && nft.contains("fd11:1111::"), "A's IPv6 prefix maps in nft -j")

            // relayctl: a host's names in both families.
            let m1 = try s.relayctl(s.gwA, s.socketA, ["map", "192.168.1.20", "--site", "B"])
            #expect(m1.status == 0 && m1.stdout.contains("240.2.2.20") && m1.stdout.contains("64:ff9b:2222::192.168.1.20") && m1.stdout.contains("64:ff9b:2222::c0a8:114"), "\(m1.stdout)\(m1.stderr)")
            let m2 = try s.relayctl(s.gwB, s.socketB, ["map", "fd00:cafe::30", "--json"])
            let names = try JSONDecoder().decode(HostNames.self, from: Data(m2.stdout.utf8))
            #expect(names.lan4 == IPv4Address("192.168.1.30") && names.virtual4 == IPv4Address("240.2.2.30")
                    && names.virtual6 == IPv6Address("64:ff9b:2222::192.168.1.30") && names.virtual6Lan == IPv6Address("fd22:2222::30"), "\(m2.stdout)")
            let sites = try s.relayctl(s.gwA, s.socketA, ["sites"]).stdout
            #expect(sites.contains("fd00:cafe::/64") && sites.contains("fd22:2222::/64") && sites.contains("64:ff9b:2222::/96"), "\(sites)")
            let bad = try s.relayctl(s.gwA, s.socketA, ["map", "64:ff9b:2222::10.9.9.9"])
            #expect(bad.status != 0 && bad.stderr.contains("outside site B's LAN"), "\(bad.stderr)")

            // 5. Nothing to translate to: an ICMP error back to the sender, counted, nothing forwarded.
            let before = try status(s, gw: s.gwA, socket: s.socketA)
            let outside = try h6A.run(["ping", "-6", "-c1", "-W2", "64:ff9b:2222::10.9.9.9"], check: false)
            #expect(!outside.succeeded && outside.stdout.contains("Address unreachable"), "embedded address outside B's LAN: \(outside.stdout)")
            let noName = try h6A.run(["ping", "-6", "-c1", "-W2", "-I", "fd00:cafe::31", b4], check: false)
            #expect(!noName.succeeded && noName.stdout.contains("Administratively prohibited"), "source without an IPv4 name: \(noName.stdout)")
            try s.gwA.ip("route", "add", "240.9.9.0/24", "dev", "relay0")
            let nobody = try s.hostA.run(["ping", "-c1", "-W2", "240.9.9.9"], check: false)
            #expect(!nobody.succeeded && nobody.stdout.contains("Net Unreachable"), "a prefix nobody owns: \(nobody.stdout)")
            let after = try status(s, gw: s.gwA, socket: s.socketA)
            let (t0, t1) = (before.tunnel!, after.tunnel!)
            #expect(t1.untranslatable - t0.untranslatable >= 2 && t1.noRoute - t0.noRoute >= 1 && t1.icmpErrorsSent - t0.icmpErrorsSent >= 3, "\(t0) -> \(t1)")
            #expect(t1.translatedTo4 > 0 && t1.translatedTo6 > 0)

            // Traceroute across the translation: the last hop is the destination's translated name.
            let tr6 = try h6A.run(["traceroute", "-6", "-n", "-q1", "-w1", "-m8", "-s", "fd00:cafe::30", b4], timeout: 40, check: false)
            #expect(tr6.stdout.split(separator: "\n").last?.contains("64:ff9b:2222::c0a8:114") == true, "traceroute -6: \(tr6.stdout)")
            let tr4 = try s.hostA.run(["traceroute", "-n", "-q1", "-w1", "-m8", "240.2.2.30"], timeout: 40, check: false)
            #expect(tr4.stdout.split(separator: "\n").last?.contains("240.2.2.30") == true, "traceroute: \(tr4.stdout)")

            // Path MTU across the translation: B's LAN link narrows to 1300; B's gateway says so in
            // IPv4 ("fragmentation needed", DF is set on translated packets over 1260 bytes), A's
            // relayd translates it into an ICMPv6 "packet too big" with 1320, the host learns it.
            // (1408-byte IPv6 packets: they just fit A's tunnel device, 1408, and not B's LAN.)
            for (h, dev) in [(s.gwB, "lan0"), (s.hostB, "eth0")] { try h.ip("link", "set", dev, "mtu", "1300") }
            _ = try h6A.run(["ping", "-6", "-c2", "-i0.3", "-W1", "-M", "do", "-s", "1360", "-I", "fd00:cafe::30", b4], check: false)
            let route = try h6A.run(["ip", "-6", "route", "get", b4, "from", "fd00:cafe::30"]).stdout
            #expect(route.contains("mtu 1320"), "PMTU learnt by A's IPv6 host: \(route)")
            let fits = try h6A.run(["ping", "-6", "-c2", "-i0.3", "-W2", "-M", "do", "-s", "1272", "-I", "fd00:cafe::30", b4], check: false)
            #expect(fits.succeeded, "1320-byte packets pass: \(fits.stdout)")
        }
    }

    func status(_ s: SiteToSite, gw: LabHost, socket: String) throws -> StatusResponse {
        try ControlJSON.decoder().decode(StatusResponse.self, from: Data(try s.relayctl(gw, socket, ["status", "--json"]).stdout.utf8))
    }

    static let differential = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Support/siit_differential.py").standardized.path

    @Test("differential against tayga: the same scapy-made packets (TCP with options, UDP, zero UDP checksum, ICMP echo, ICMP errors with inner packets, fragments, DF, IPv4 options) through tayga and through Relay's translator agree field by field, except the listed deliberate differences; Relay's checksums verify")
    func taygaDifferential() throws {
        try KernelGate.check()
        try Lab.with("tayga") { lab in
            let h = try lab.host("xlat")
            let dir = lab.logDirectory.appendingPathComponent("tayga").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let conf = dir + "/tayga.conf"
            try """
            tun-device nat64
            ipv4-addr 192.0.2.1
            prefix 2001:db8:64::/96
            map 192.0.2.10 2001:db8:1::10
            data-dir \(dir)
            """.write(toFile: conf, atomically: true, encoding: .utf8)
            try h.run(["tayga", "--mktun", "-c", conf])
            try h.ip("link", "set", "nat64", "up")
            let tayga = try h.spawn(["tayga", "-d", "-c", conf], label: "tayga")
            // (tayga's log is block-buffered into a file: wait until it holds the TUN device open.)
            try waitUntil("tayga runs", timeout: 10) {
                if !tayga.isRunning { throw HarnessError("tayga exited: \(tayga.log())") }
                let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(tayga.pid)/fd")) ?? []
                return fds.contains { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(tayga.pid)/fd/\($0)")) == "/dev/net/tun" }
            }
            let r = try h.run(["/usr/bin/python3", Self.differential, try Binaries.path("relay-lab"), "2001:db8:64::/96", "192.0.2.10", "2001:db8:1::10"], timeout: 120, check: false)
            #expect(r.status == 0, "siit_differential.py: \(r.stderr)")
            guard r.status == 0 else { return }
            struct Case: Decodable { var `case`: String; var tayga: String?; var relay: String; var expected: Bool; var identical_bytes: Bool?; var relay_checksums_ok: Bool?; var deliberate: String?
                struct Difference: Decodable { var field: String }
                var differences: [Difference] }
            struct Report: Decodable { var cases: [Case] }
            let report = try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8))
            try r.stdout.write(toFile: dir + "/report.json", atomically: true, encoding: .utf8)
            #expect(report.cases.count >= 30)
            for c in report.cases {
                #expect(c.expected, "\(c.case): tayga \(c.tayga ?? "dropped") / relay \(c.relay); differences \(c.differences.map(\.field))")
                if let ok = c.relay_checksums_ok { #expect(ok, "\(c.case): Relay's checksums do not verify") }
            }
            // tayga really ran: it translated most cases, most of them byte for byte like Relay.
            #expect(report.cases.filter { $0.tayga != nil }.count >= 25)
            #expect(report.cases.filter { $0.identical_bytes == true }.count >= 15)
        }
    }
}

import Foundation
import Testing
import RelayControlAPI
import RelayTestHarness

/// The headline scenario with the real programs: two sites that both use 192.168.1.0/24, joined by
/// relayd tunnels (Noise IK over UDP) with the helper's prefix NAT on both gateways.
@Suite("kernel: site to site over Relay tunnels", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct SiteToSiteTests {
    @Test("A's 192.168.1.x reaches B's as 240.2.2.x and is seen as 240.1.1.x (ping, TCP, UDP, both ways); the underlay carries only sealed UDP; sessions and peers are reported")
    func twoSites() throws {
        try KernelGate.check()
        try Lab.with("s2s") { lab in
            let s = try SiteToSite(lab)
            try s.start()
            try SiteToSite.startWhoami(s.hostB)
            try SiteToSite.startWhoami(s.hostA)
            // Capture the underlay at the router while everything happens.
            let pcap = lab.logDirectory.appendingPathComponent("underlay.pcap").path
            let dump = try s.underlay.spawn(["tcpdump", "-i", "a0", "-U", "-n", "-w", pcap], label: "tcpdump")
            try waitUntil("the capture runs", timeout: 10) {
                _ = try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false)
                return ((try? FileManager.default.attributesOfItem(atPath: pcap)[.size] as? Int) ?? 0) > 100
            }

            // A -> B: ping, then TCP and UDP, with host numbers kept both sides.
            let ping = try s.hostA.run(["ping", "-c3", "-i0.2", "-W2", "240.2.2.20"], check: false)
            #expect(ping.succeeded, "ping A -> 240.2.2.20: \(ping.stdout)")
            for (src, dst) in [(20, 20), (21, 77), (77, 21)] {
                let tcp = try s.hostA.run(["socat", "-T", "3", "-", "TCP:240.2.2.\(dst):9001,bind=192.168.1.\(src)"], stdin: "").stdout
                #expect(tcp.trimmingCharacters(in: .whitespacesAndNewlines) == "240.1.1.\(src) 192.168.1.\(dst)", "TCP .\(src) -> 240.2.2.\(dst)")
            }
            let udp = try s.hostA.run(["socat", "-T", "2", "-", "UDP:240.2.2.20:9000"], stdin: "x\n").stdout
            #expect(udp.trimmingCharacters(in: .whitespacesAndNewlines) == "240.1.1.20")
            // B -> A: the same in the other direction.
            #expect(try s.hostB.run(["ping", "-c2", "-i0.2", "-W2", "240.1.1.20"], check: false).succeeded)
            let back = try s.hostB.run(["socat", "-T", "3", "-", "TCP:240.1.1.20:9001"], stdin: "").stdout
            #expect(back.trimmingCharacters(in: .whitespacesAndNewlines) == "240.2.2.20 192.168.1.20")
            // (UDP to A's primary address: socat answers from it, so conntrack matches the reply.)
            let backUDP = try s.hostB.run(["socat", "-T", "2", "-", "UDP:240.1.1.20:9000,bind=192.168.1.77"], stdin: "x\n").stdout
            #expect(backUDP.trimmingCharacters(in: .whitespacesAndNewlines) == "240.2.2.77")

            // A marker crosses inside the tunnel; it must never appear on the underlay in clear.
            let (marker, raw) = try s.sendMarker(stopping: dump, pcap: pcap)
            #expect(raw.count > 1000, "the capture saw the traffic")
            #expect(raw.range(of: Data(marker.utf8)) == nil, "the marker appeared in clear on the underlay")
            // Only sealed UDP between the gateways (ARP and IPv6 neighbour discovery are link noise).
            let other = try s.underlay.run(["tcpdump", "-n", "-r", pcap, "(ip and not (udp and port 51820)) or (ip6 and not (udp and port 51820) and not icmp6 and not dst net ff00::/8)"], check: false)
            #expect(other.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "non-tunnel packets on the underlay:\n\(other.stdout.prefix(800))")
            let tunnel = try s.underlay.run(["tcpdump", "-n", "-r", pcap, "udp and port 51820"], check: false).stdout
            #expect(tunnel.split(separator: "\n").count > 20)

            // relayctl: peers up with a handshake and a latency; sessions show the flows with the
            // LAN address behind the virtual one.
            let peers = try ControlJSON.decoder().decode(PeersResponse.self, from: Data(try s.relayctl(s.gwA, s.socketA, ["peers", "--json"]).stdout.utf8))
            #expect(peers.peers.first?.state == "up")
            #expect(peers.peers.first?.runtime?.endpoint == "10.20.20.20:51820")
            #expect((peers.peers.first?.runtime?.latencyMs ?? -1) >= 0)
            #expect((peers.peers.first?.runtime?.txBytes ?? 0) > 1000)
            let sessions = try ControlJSON.decoder().decode(SessionsResponse.self, from: Data(try s.relayctl(s.gwA, s.socketA, ["sessions", "--json"]).stdout.utf8))
            let tcp = sessions.sessions.first { $0.flow.proto == "tcp" && $0.flow.remoteVirtual == "240.2.2.20" && $0.flow.remotePort == 9100 }
            #expect(tcp?.localReal == "192.168.1.20" && tcp?.flow.localVirtual == "240.1.1.20", "\(sessions.sessions)")
            #expect((tcp?.flow.bytesOut ?? 0) > 50 * marker.count)
            #expect(sessions.sessions.contains { $0.flow.proto == "icmp" })
            let human = try s.relayctl(s.gwB, s.socketB, ["sessions", "--host", "192.168.1.20"])
            #expect(human.status == 0 && human.stdout.contains("240.1.1.20"))
        }
    }
}

extension SiteToSiteTests {
    func status(_ s: SiteToSite) throws -> StatusResponse {
        try ControlJSON.decoder().decode(StatusResponse.self, from: Data(try s.relayctl(s.gwA, s.socketA, ["status", "--json"]).stdout.utf8))
    }
    func sessions(_ s: SiteToSite) throws -> SessionsResponse {
        try ControlJSON.decoder().decode(SessionsResponse.self, from: Data(try s.relayctl(s.gwA, s.socketA, ["sessions", "--json"]).stdout.utf8))
    }

    @Test("a third party's garbage, forged and replayed datagrams get no answer and change nothing; kill -9 relayd and restart: traffic resumes without duplicates; idle flows expire; a flood stays within the cap")
    func robustness() throws {
        try KernelGate.check()
        try Lab.with("s2s-robust") { lab in
            let s = try SiteToSite(lab)
            try s.start(extraConfig: "[sessions]\nudp_timeout = 3\nmax = 64\n")
            #expect(try s.hostA.run(["ping", "-c2", "-i0.2", "-W2", "240.2.2.20"], check: false).succeeded)

            // Capture tunnel traffic at the router, then replay it from there (a third party on the underlay).
            let pcap = lab.logDirectory.appendingPathComponent("u.pcap").path
            let dump = try s.underlay.spawn(["tcpdump", "-i", "a0", "-U", "-n", "-w", pcap, "udp"], label: "tcpdump")
            // tcpdump writes its file header before it captures: ping until packets land in the file.
            try waitUntil("the capture sees tunnel traffic", timeout: 10) {
                _ = try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false)
                return ((try? FileManager.default.attributesOfItem(atPath: pcap)[.size] as? Int) ?? 0) > 400
            }
            let before = try status(s).tunnel!
            let attack = """
            import socket, struct, sys, os
            data = open(sys.argv[1], 'rb').read()
            off, pkts, seen = 24, [], []
            while off + 16 <= len(data):
                incl = struct.unpack('<I', data[off+8:off+12])[0]
                frame = data[off+16:off+16+incl]; off += 16 + incl
                ihl = (frame[14] & 15) * 4
                udp = frame[14+ihl:]
                seen.append(socket.inet_ntoa(frame[14+12:14+16]))
                # Tunnel messages only (0xC1/0xC2/0xC4): a STUN request on the shared port would
                # rightly be answered by the reflector, which anyone may ask.
                if len(udp) > 8 and frame[14+12:14+16] == socket.inet_aton('10.20.20.20') and udp[8] in (0xc1, 0xc2, 0xc4):
                    pkts.append(udp[8:])
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(('10.10.10.1', 40000))
            for p in pkts: s.sendto(p, ('10.10.10.10', 51820))            # replays of B's datagrams
            s.sendto(b'\\xc1\\x00\\x00\\x00' + os.urandom(108), ('10.10.10.10', 51820))  # forged initiation
            s.sendto(b'\\xc4\\x00\\x00\\x00' + os.urandom(60), ('10.10.10.10', 51820))   # forged data
            s.sendto(b'GET / HTTP/1.0\\r\\n\\r\\n', ('10.10.10.10', 51820))                 # garbage
            s.settimeout(1.0)
            try:
                s.recvfrom(2048); print('ANSWERED')
            except socket.timeout:
                print('silence', len(pkts))
            print(len(data), seen[:5], file=sys.stderr)
            """
            usleep(300_000)
            let out = try s.underlay.run(["python3", "-c", attack, pcap], check: false)
            dump.signal(SIGINT); _ = try? dump.waitForExit(timeout: 5)
            #expect(out.stdout.hasPrefix("silence"), "\(out.stdout) \(out.stderr)")
            let replayed = Int(out.stdout.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "0") ?? 0
            #expect(replayed >= 3, "replayed \(replayed) captured datagrams: \(out.stderr)")
            let after = try status(s).tunnel!
            #expect(after.malformed > before.malformed && after.authFailed >= before.authFailed + replayed, "before \(before) after \(after)")
            #expect(after.handshakesCompleted == before.handshakesCompleted, "a forged or replayed handshake made a session")
            #expect(try s.hostA.run(["ping", "-c2", "-i0.2", "-W2", "240.2.2.20"], check: false).succeeded, "flows continue")

            // Idle UDP flows leave after udp_timeout = 3 s; a flood of distinct flows stays within max = 64.
            try SiteToSite.startWhoami(s.hostB)
            _ = try s.hostA.run(["socat", "-T", "2", "-", "UDP:240.2.2.20:9000"], stdin: "x\n")
            #expect(try sessions(s).sessions.contains { $0.flow.proto == "udp" })
            try waitUntil("idle UDP flows expire", timeout: 10) { try !sessions(s).sessions.contains { $0.flow.proto == "udp" } }
            try s.hostA.run(["bash", "-c", "for p in $(seq 20000 20199); do echo x > /dev/udp/240.2.2.20/$p; done"])
            try waitUntil("flood counted", timeout: 5) { try sessions(s).stats.created >= 200 }
            let st = try sessions(s).stats
            #expect(st.active <= 64 && st.evicted >= 136, "\(st)")

            // kill -9 relayd on A, start it again: the helper keeps its objects, relayd re-attaches.
            func table() throws -> String {
                // Handles and rules as they are; counter values move with traffic.
                try s.gwA.run(["nft", "-a", "list", "table", "inet", "relay"]).stdout
                    .replacingOccurrences(of: #"packets \d+ bytes \d+"#, with: "packets N bytes N", options: .regularExpression)
            }
            let tables = try table()
            s.relaydA.signal(SIGKILL)
            _ = try s.relaydA.waitForExit()
            try s.restartRelaydA()
            try waitUntil("relayd A back", timeout: 20) { (try? status(s).helper.lastAppliedAt) != nil }
            try waitUntil("traffic resumes A -> B", timeout: 20) { try s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded }
            try waitUntil("traffic resumes B -> A", timeout: 20) { try s.hostB.run(["ping", "-c1", "-W1", "240.1.1.20"], check: false).succeeded }
            #expect(try s.gwA.ipJSON("-d", "link", "show", "type", "tun").count == 1, "one TUN device")
            #expect(try s.gwA.ipJSON("route", "show", "proto", "196").count == 1)
            #expect(try table() == tables, "the table is untouched (same handles, no duplicates)")
        }
    }
}

extension SiteToSiteTests {
    @Test("offloads: TCP leaves A's TUN device as bursts larger than its MTU and enters B's as coalesced writes, byte for byte (two packet threads); with node.offload = false (and busy polling) one packet per read and write, same bytes", arguments: [true, false])
    func offloads(_ offload: Bool) throws {
        try KernelGate.check()
        try Lab.with("s2s-offload") { lab in
            let s = try SiteToSite(lab, extraHostNumbers: [])
            // With offloads, two packet threads (node.threads; the other tests run with "auto", one
            // thread on CI's two CPUs); without, the loop also busy-polls (node.busy_poll).
            try s.start(nodeExtra: offload ? "threads = 2" : "offload = false\nbusy_poll = 2000")
            let file = lab.logDirectory.appendingPathComponent("data").path, got = lab.logDirectory.appendingPathComponent("received").path
            try Command.run(["bash", "-c", "head -c 8000000 /dev/urandom > \(file)"])
            try s.hostB.spawn(["socat", "-u", "TCP-LISTEN:9300,reuseaddr", "CREATE:\(got)"], label: "sink")
            try waitUntil("sink") { try s.hostB.run(["ss", "-lntH"]).stdout.contains(":9300") }
            // The TUN device's counters: tx = what relayd read (one per skb), rx = what it wrote.
            func stats(_ gw: LabHost) throws -> (rxBytes: Int, rxPackets: Int, txBytes: Int, txPackets: Int) {
                let j = try JSONSerialization.jsonObject(with: Data(try gw.run(["ip", "-j", "-s", "link", "show", "relay0"]).stdout.utf8)) as? [[String: Any]]
                let st = j?.first?["stats64"] as? [String: Any], rx = st?["rx"] as? [String: Any], tx = st?["tx"] as? [String: Any]
                return (rx?["bytes"] as? Int ?? 0, rx?["packets"] as? Int ?? 0, tx?["bytes"] as? Int ?? 0, tx?["packets"] as? Int ?? 0)
            }
            let a0 = try stats(s.gwA), b0 = try stats(s.gwB)
            let send = try s.hostA.run(["socat", "-u", "OPEN:\(file)", "TCP:240.2.2.20:9300"], timeout: 60, check: false)
            #expect(send.succeeded, "transfer: \(send.stderr)")
            try waitUntil("all 8 MB at B", timeout: 20) { ((try? FileManager.default.attributesOfItem(atPath: got)[.size] as? Int) ?? 0) == 8_000_000 }
            let sum = { (p: String) in try Command.run(["sha256sum", p]).stdout.split(separator: " ").first.map(String.init) ?? "" }
            #expect(try sum(file) == sum(got), "the bytes that arrived differ from those sent")
            let a1 = try stats(s.gwA), b1 = try stats(s.gwB)
            let read = Double(a1.txBytes - a0.txBytes) / Double(max(1, a1.txPackets - a0.txPackets))
            let written = Double(b1.rxBytes - b0.rxBytes) / Double(max(1, b1.rxPackets - b0.rxPackets))
            if offload {
                #expect(read > 4000, "relayd A read \(read) bytes per packet: no TSO bursts")
                #expect(written > 4000, "relayd B wrote \(written) bytes per packet: nothing coalesced")
            } else {
                #expect(read <= 1408 && written <= 1408, "without offloads nothing exceeds the MTU: read \(read), written \(written)")
            }
        }
    }

    static let udpDatagrams = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Support/udp_datagrams.py").standardized.path

    @Test("offloads: bursts of UDP datagrams enter B's TUN device as UDP GSO writes; host B gets every datagram as A's TUN device carried it (IPv4 IDs, payloads, order) with checksums that verify, split by B's kernel (IPv4, and IPv6 between the sites' IPv6 LANs)", arguments: [false, true])
    func udpCoalescing(_ v6: Bool) throws {
        try KernelGate.check()
        try Lab.with("s2s-udpgso") { lab in
            let s = try SiteToSite(lab, extraHostNumbers: [], ipv6: v6)
            try s.start()
            let (sender, receiver, dst, lan) = v6 ? (s.host6A!, s.host6B!, "fd22:2222::30", "lan6") : (s.hostA, s.hostB, "240.2.2.20", "lan0")
            // B's LAN link splits and checksums in software (as for a NIC without UDP segmentation),
            // so host B's capture shows each datagram as it goes on the wire.
            try s.gwB.run(["ethtool", "-K", lan, "tx-udp-segmentation", "off", "tx", "off"])
            let dir = lab.logDirectory.path, sent = dir + "/tunA.pcap", got = dir + "/hostB.pcap", result = dir + "/received.json"
            let capA = try s.gwA.spawn(["tcpdump", "-i", "relay0", "--immediate-mode", "-B", "16384", "-U", "-n", "-w", sent, "udp port 9400"], label: "tcpdump-a")
            let capB = try receiver.spawn(["tcpdump", "-i", "eth0", "--immediate-mode", "-B", "16384", "-U", "-n", "-w", got, "udp port 9400"], label: "tcpdump-b")
            try waitUntil("the captures run", timeout: 10) {
                [sent, got].allSatisfy { ((try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int) ?? 0) >= 24 }
            }
            let count = Int(try Command.run(["/usr/bin/python3", Self.udpDatagrams, "count"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            let sink = try receiver.spawn(["/usr/bin/python3", Self.udpDatagrams, "recv", "9400", String(count), result], label: "udp-sink")
            try waitUntil("sink") { try receiver.run(["ss", "-lnuH"]).stdout.contains(":9400") }
            func tunRx() throws -> (bytes: Int, packets: Int) {
                let j = try JSONSerialization.jsonObject(with: Data(try s.gwB.run(["ip", "-j", "-s", "link", "show", "relay0"]).stdout.utf8)) as? [[String: Any]]
                let rx = (j?.first?["stats64"] as? [String: Any])?["rx"] as? [String: Any]
                return (rx?["bytes"] as? Int ?? 0, rx?["packets"] as? Int ?? 0)
            }
            let before = try tunRx()
            let send = try sender.run(["/usr/bin/python3", Self.udpDatagrams, "send", dst, "9400"], timeout: 30, check: false)
            #expect(send.succeeded, "sender: \(send.stderr)")
            _ = try sink.waitForExit(timeout: 15)
            let after = try tunRx()
            usleep(300_000)
            for c in [capA, capB] { c.signal(SIGINT); _ = try? c.waitForExit(timeout: 5) }
            let r = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: result))) as? [String: Any]
            #expect(r?["received"] as? Int == count && r?["identical"] as? Bool == true, "host B's socket: \(String(describing: r))")
            // Fewer, larger writes than datagrams: relayd B merged them.
            let writes = after.packets - before.packets
            #expect(writes > 0 && writes < count / 3, "relayd B wrote \(writes) packets for \(count) datagrams: nothing merged")
            let cmp = try receiver.run(["/usr/bin/python3", Self.udpDatagrams, "compare", sent, got, "9400"], timeout: 60, check: false)
            let c = try JSONSerialization.jsonObject(with: Data(cmp.stdout.utf8)) as? [String: Any]
            #expect(c?["sent"] as? Int == count && c?["got"] as? Int == count, "captures: \(cmp.stdout) \(cmp.stderr)")
            #expect(c?["same"] as? Bool == true, "host B did not get the datagrams A's TUN device carried (IDs, payloads, order): \(cmp.stdout)")
            #expect(c?["asExpected"] as? Bool == true, "payloads differ from those sent: \(cmp.stdout)")
            #expect((c?["badChecksums"] as? [Any])?.isEmpty == true, "checksums that do not verify at host B: \(cmp.stdout)")
        }
    }

    @Test("path MTU: with a 1400-byte link on the underlay, relayd answers oversized packets with ICMP 'fragmentation needed', TCP adapts, the underlay never fragments")
    func pathMTU() throws {
        try KernelGate.check()
        try Lab.with("s2s-pmtu") { lab in
            let s = try SiteToSite(lab, extraHostNumbers: [])
            // B's side of the underlay carries at most 1400 bytes; the router says so with ICMP.
            try s.underlay.ip("link", "set", "b0", "mtu", "1400")
            try s.gwB.ip("link", "set", "wan0", "mtu", "1400")
            try s.start()
            try s.hostB.spawn(["socat", "-u", "TCP-LISTEN:9200,reuseaddr", "CREATE:/dev/null"], label: "sink")
            try waitUntil("sink") { try s.hostB.run(["ss", "-lntH"]).stdout.contains(":9200") }
            // 2 MB with full-size segments: only works if the sender learns the smaller MTU.
            let send = try s.hostA.run(["bash", "-c", "head -c 2000000 /dev/zero | socat -u - TCP:240.2.2.20:9200"], timeout: 30, check: false)
            #expect(send.succeeded, "transfer: \(send.stderr)")
            let st = try ControlJSON.decoder().decode(StatusResponse.self, from: Data(try s.relayctl(s.gwA, s.socketA, ["status", "--json"]).stdout.utf8))
            #expect((st.tunnel?.tooBig ?? 0) > 0, "relayd answered no oversized packet: \(String(describing: st.tunnel))")
            // Host A's kernel learned the path MTU towards 240.2.2.20 from relayd's ICMP error.
            let cache = try s.hostA.run(["ip", "route", "get", "240.2.2.20"]).stdout
            #expect(cache.contains("mtu 1340"), "route cache: \(cache)")   // 1400 - 20 IP - 8 UDP - 16 header - 16 tag
            // No fragments on the underlay between the router and B.
            let frags = try s.underlay.run(["nstat", "-az", "IpFragCreates"]).stdout
            #expect(frags.contains("IpFragCreates                   0") || !frags.contains("IpFragCreates"), "\(frags)")
        }
    }
}

import Foundation
import Testing
import RelayControlAPI
import RelayTestHarness

/// The tunnel against an attacker on the underlay: captured handshakes replayed after a crash.
@Suite("kernel: tunnel hardening", .serialized, .enabled(if: KernelGate.shouldRun, "needs root"))
struct TunnelHardeningTests {
    static let replayScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Support/initiation_replay.py").standardized.path

    @Test("an initiation captured on the underlay and replayed after kill -9 of the responder gets no answer, does not move the peer's endpoint, and the tunnel keeps working")
    func replayAfterRestart() throws {
        try KernelGate.check()
        try Lab.with("replay") { lab in
            let s = try SiteToSite(lab)
            try s.start()
            let captured = lab.logDirectory.appendingPathComponent("initiation.bin").path
            let cap = try s.underlay.spawn(["/usr/bin/python3", Self.replayScript, "capture", "b0", captured, "20"], label: "capture")
            try waitUntil("the capture listens", timeout: 20) { cap.log().contains("listening") }
            // The gateways shook hands when they started; A restarts, so its next packet starts a
            // handshake the attacker records.
            s.relaydA.signal(SIGKILL)
            _ = try s.relaydA.waitForExit()
            try s.restartRelaydA()
            try waitUntil("a handshake after A's restart", timeout: 20) {
                try s.hostA.run(["ping", "-c", "1", "-W", "1", "240.2.2.20"], check: false).succeeded
            }
            #expect(try cap.waitForExit(timeout: 25) == 0, "capture: \(cap.log())")
            let bytes = try #require(FileManager.default.contents(atPath: captured))
            #expect(bytes.count == 144 && bytes.first == 0xC1)
            #expect(FileManager.default.fileExists(atPath: s.stateB + "/initiations"), "the accepted timestamp is kept in the state directory")

            s.relaydB.signal(SIGKILL)
            _ = try s.relaydB.waitForExit()
            try s.restartRelaydB()

            // The attacker (the underlay router itself, 10.20.20.1) replays it to B.
            let r = try s.underlay.run(["/usr/bin/python3", Self.replayScript, "replay", captured, "10.20.20.20", "51820", "2"])
            #expect(r.stdout.contains("\"answers\": 0"), "B answered a replayed initiation: \(r.stdout)")
            let status = try ControlJSON.decoder().decode(StatusResponse.self, from: Data(s.relayctl(s.gwB, s.socketB, ["status", "--json"]).stdout.utf8))
            #expect((status.tunnel?.replayedInitiation ?? 0) >= 1, "\(String(describing: status.tunnel))")
            let peers = try ControlJSON.decoder().decode(PeersResponse.self, from: Data(s.relayctl(s.gwB, s.socketB, ["peers", "--json"]).stdout.utf8)).peers
            #expect(peers.first?.runtime?.endpoint?.contains("10.20.20.1:") != true, "the endpoint moved to the attacker: \(String(describing: peers.first?.runtime))")
            // A's next handshake (newer timestamp) is accepted: the tunnel works again.
            try waitUntil("the tunnel works after the restart", timeout: 30) {
                try s.hostA.run(["ping", "-c", "1", "-W", "1", "240.2.2.20"], check: false).succeeded
            }
            let after = try ControlJSON.decoder().decode(PeersResponse.self, from: Data(s.relayctl(s.gwB, s.socketB, ["peers", "--json"]).stdout.utf8)).peers
            #expect(after.first?.runtime?.endpoint?.hasPrefix("10.10.10.10:") == true, "\(String(describing: after.first?.runtime))")
        }
    }

    /// A (an authenticated peer) claims that B's site also holds an address of B itself, an
    /// underlay network and a network B routes to: its helper routes them into its device and
    /// relayd A seals packets for them. B delivers none of them: a peer reaches only the virtual
    /// prefixes B exports. (B's underlay endpoint itself stays outside A's claims: A's tunnel runs
    /// to it.)
    @Test("a peer reaches only what the site exports: B's own addresses, the underlay and a network B routes get nothing through; B's hosts still do")
    func onlyWhatTheSiteExports() throws {
        try KernelGate.check()
        try Lab.with("export") { lab in
            let s = try SiteToSite(lab)
            let other = try lab.host("other")
            try lab.link(s.gwB, "oth0", ["10.30.0.1/24"], other, "eth0", ["10.30.0.2/24"])
            try other.route("default", via: "10.30.0.1")
            try s.gwB.ip("addr", "add", "10.40.0.1/32", "dev", "lo")           // one of B's own addresses
            try s.underlay.ip("addr", "add", "10.50.0.1/32", "dev", "lo")      // the underlay's
            try s.gwB.route("10.50.0.0/24", via: "10.20.20.1")
            try s.underlay.route("240.1.1.0/24", via: "10.20.20.20")           // so that an answer could come back
            try s.start(extraConfigA: """
              [[peer.site]]
              name = "B-itself"
              virtual4 = "10.40.0.0/24"
              [[peer.site]]
              name = "B-underlay"
              virtual4 = "10.50.0.0/24"
              [[peer.site]]
              name = "B-elsewhere"
              virtual4 = "10.30.0.0/24"
            """)
            #expect(try s.hostA.run(["ping", "-c", "1", "-W", "2", "240.2.2.20"], check: false).succeeded, "B's exported hosts are reachable")
            for dst in ["10.40.0.1", "10.50.0.1", "10.30.0.2"] {
                let r = try s.hostA.run(["ping", "-c", "2", "-i", "0.3", "-W", "1", dst], check: false)
                #expect(!r.succeeded, "a peer reached \(dst) through B: \(r.stdout)")
            }
            let status = try ControlJSON.decoder().decode(StatusResponse.self, from: Data(s.relayctl(s.gwB, s.socketB, ["status", "--json"]).stdout.utf8))
            #expect((status.tunnel?.notExported ?? 0) >= 6, "\(String(describing: status.tunnel))")
        }
    }
}

extension TunnelHardeningTests {
    static func pingStats(_ out: String) -> (loss: Double, avg: Double)? {
        guard let l = out.range(of: #"(\d+(\.\d+)?)% packet loss"#, options: .regularExpression),
              let loss = Double(out[l].split(separator: "%").first ?? ""),
              let r = out.range(of: #"= [\d.]+/([\d.]+)/"#, options: .regularExpression) else { return nil }
        let avg = Double(out[r].split(separator: "/")[1]) ?? 0
        return (loss, avg)
    }

    /// 60,000 initiations a second with a valid mac1 from spoofed sources at gateway B: the
    /// handshake thread takes them (cookies under load, no Diffie-Hellman), the tunnel keeps
    /// carrying every ping, and gateway A, restarted during the flood, completes a new handshake.
    @Test("a flood of 60,000 spoofed initiations/s with valid mac1: the tunnel stays lossless, B answers with cookies instead of handshakes, and a legitimate peer still completes a handshake during the flood")
    func handshakeFlood() throws {
        try KernelGate.check()
        try Lab.with("flood") { lab in
            let s = try SiteToSite(lab)
            try s.start()
            try s.underlay.ip("route", "add", "blackhole", "10.99.0.0/16")  // the cookie replies to spoofed sources go nowhere
            let ping = ["ping", "-c", "100", "-i", "0.02", "-W", "1", "-q", "240.2.2.20"]
            _ = try s.hostA.run(["ping", "-c", "3", "-W", "2", "240.2.2.20"], check: false)
            let before = try #require(Self.pingStats(try s.hostA.run(ping, check: false).stdout))
            let flood = try s.underlay.spawn([try Binaries.path("relay-lab"), "handshake-flood", "--target", "10.20.20.20:51820", "--key", s.publicKeyB,
                                              "--rate", "60000", "--seconds", "20"], label: "flood")
            Thread.sleep(forTimeInterval: 1)
            let during = try #require(Self.pingStats(try s.hostA.run(ping, check: false).stdout))
            let mid = try ControlJSON.decoder().decode(StatusResponse.self, from: Data(s.relayctl(s.gwB, s.socketB, ["status", "--json"]).stdout.utf8)).tunnel
            print("handshake flood, after the pings (before \(before), during \(during)): B \(String(describing: mid))")
            // A restarts while the flood goes on: its handshake must get through (with a cookie).
            s.relaydA.signal(SIGKILL)
            _ = try s.relaydA.waitForExit()
            try s.restartRelaydA()
            try waitUntil("A's new handshake during the flood", timeout: 15) {
                try s.hostA.run(["ping", "-c", "1", "-W", "1", "240.2.2.20"], check: false).succeeded
            }
            #expect(flood.isRunning, "the flood ended before A's handshake: \(flood.log())")
            _ = try flood.waitForExit(timeout: 30)
            let st = try ControlJSON.decoder().decode(StatusResponse.self, from: Data(s.relayctl(s.gwB, s.socketB, ["status", "--json"]).stdout.utf8))
            let t = try #require(st.tunnel)
            print("handshake flood: \(flood.log().trimmingCharacters(in: .whitespacesAndNewlines)); ping before \(before), during \(during); B: \(t.cookiesSent) cookies, \(t.handshakesDropped) dropped, \(t.badMAC) bad mac1, \(t.authFailed) failed handshakes, \(t.handshakesCompleted) completed")
            #expect(during.loss == 0, "pings lost during the flood: \(during)")
            #expect(t.cookiesSent > 10_000, "B did not switch to cookies: \(t)")
        }
    }
}

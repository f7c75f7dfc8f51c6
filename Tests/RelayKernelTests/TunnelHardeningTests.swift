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
            #expect(bytes.count == 112 && bytes.first == 0xC1)
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
}

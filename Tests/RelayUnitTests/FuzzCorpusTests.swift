import Foundation
import Testing
import RelayFuzzTargets

/// The fuzz targets' committed seeds and every crash `make fuzz` ever found (Fuzz/crashes), replayed
/// through the same functions in every `make test`: a crash once found stays a test.
@Suite("fuzz corpus and crash replay")
struct FuzzCorpusTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    static func inputs(_ kind: String, _ t: FuzzTarget) -> [(String, [UInt8])] {
        let dir = root.appendingPathComponent(kind).appendingPathComponent(t.rawValue)
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        return names.compactMap { n in FileManager.default.contents(atPath: dir.appendingPathComponent(n).path).map { (n, Array($0)) } }
    }

    @Test("every seed and every kept crash runs through its target without a trap", arguments: FuzzTarget.allCases)
    func replay(_ t: FuzzTarget) {
        let seeds = Self.inputs("corpus", t)
        #expect(seeds.count >= 1, "no seeds for \(t.rawValue)")
        for (_, bytes) in seeds + Self.inputs("crashes", t) { _ = t.run(bytes) }
    }

    @Test("the seeds mean what their names say (so the fuzzer starts from inputs that reach deep)")
    func seedOutcomes() {
        func outcome(_ t: FuzzTarget, _ name: String) -> FuzzTarget.Outcome? { Self.inputs("corpus", t).first { $0.0 == name }.map { t.run($0.1) } }
        #expect(outcome(.helperRequest, "apply_nat.json") == .accepted)
        #expect(outcome(.helperRequest, "open_device.json") == .accepted)
        #expect(outcome(.helperRequest, "open_device_wide.json") == .refused, "240.1.1.1/1 reaches outside the policy")
        #expect(outcome(.helperPolicy, "shipped.toml") == .accepted)
        #expect(outcome(.helperPolicy, "full.toml") == .accepted)
        #expect(outcome(.helperPolicy, "retired.toml") == .refused)
        #expect(outcome(.stun, "binding_request.bin") == .accepted)
        // Written by Python's noiseprotocol for the fuzz responder's key: our responder reads it.
        #expect(outcome(.tunnel, "initiation.bin") == .accepted)
        #expect(outcome(.relaydConfig, "example.toml") == .accepted)
        // Written by Python (noiseprotocol, cryptography) from docs/relay-protocol.md.
        #expect(outcome(.relay, "register.bin") == .accepted)
        #expect(outcome(.relay, "forward.bin") == .accepted)
        #expect(outcome(.path, "candidates.bin") == .accepted)
        #expect(outcome(.path, "probe_ack.bin") == .accepted)
        // Garbage is refused, not trapped on.
        for t in FuzzTarget.allCases { #expect(t.run([0xff, 0x00, 0x13]) == .refused, "\(t.rawValue)") }
    }
}

import ArgumentParser
import Foundation
import RelayCore
import RelayIPC
import RelayNftables
import RelayTestHarness

/// `make bench`: one run, anchors measured in the same run, a table of ratios.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the benchmarks and print a table of ratios against anchors measured in the same run.")
    @Option(help: "Map sizes to measure.") var sizes: [Int] = [10_000, 100_000]
    @Option(help: "Repetitions per measurement (the median is reported).") var repeats = 3

    func run() throws {
        print("Relay benchmarks (\(ProcessInfo.processInfo.activeProcessorCount) cores); median of \(repeats)")
        var rows: [(String, Double, Double)] = []
        try Lab.with("bench") { lab in
            let gw = try lab.host("gw"), ref = try lab.host("ref")
            let helper = try HelperFixture.start(in: gw)
            for n in sizes {
                let state = NATState(snat: (0..<n).map { i in
                    let v = UInt32(i)
                    return PrefixMapping(IPPrefix(network: .v4(IPv4Address(0x0a00_0000 | v)), length: 32),
                                         IPPrefix(network: .v4(IPv4Address(0xf000_0000 | v)), length: 32))
                }, remote: [try IPPrefix(parsing: "240.0.0.0/4")])
                let text = TablePlan(state, spec: TableSpec()).render()
                let file = lab.logDirectory.appendingPathComponent("bench-\(n).nft").path
                try text.write(toFile: file, atomically: true, encoding: .utf8)
                var relay: [Double] = [], nft: [Double] = []
                for _ in 0..<repeats {
                    let client = try HelperClient(path: helper.socketPath)
                    try client.cleanup()
                    let t0 = Date()
                    let report = try client.apply(state)
                    relay.append(Date().timeIntervalSince(t0))
                    precondition(report.changed)
                    _ = try ref.run(["nft", "delete", "table", "inet", "relay"], check: false)
                    let t1 = Date()
                    try ref.run(["nft", "-f", file], timeout: 120)
                    nft.append(Date().timeIntervalSince(t1))
                }
                // Both kernels hold the same number of entries.
                let observed = try HelperClient(path: helper.socketPath).observe().table.sets.first { $0.name == "snat4" }?.entries
                guard observed == n else { throw HarnessError("helper holds \(observed ?? -1) entries, expected \(n)") }
                rows.append(("apply \(n) map entries (one request)", median(relay), median(nft)))
            }
            if ProcessInfo.processInfo.environment["RELAY_BENCH_VERBOSE"] == "1" {
                print(helper.process.log().split(separator: "\n").filter { $0.contains(" ms") }.joined(separator: "\n"))
            }
        }
        print("")
        print(pad("benchmark", 40) + pad("relay-helper", 14) + pad("anchor: nft -f", 16) + "ratio (anchor/relay, >1 = faster)")
        for (name, r, a) in rows {
            print(pad(name, 40) + pad(String(format: "%.3f s", r), 14) + pad(String(format: "%.3f s", a), 16) + String(format: "%.2fx", a / r))
        }
    }

    func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }
    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
}

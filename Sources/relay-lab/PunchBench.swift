import Foundation
import RelayTestHarness

/// `make bench`, NAT traversal: every ordered pair of router kinds (`LabNAT`, 25) `rounds` times,
/// time to the first packet and to the direct path per NAT kind, the share of cells that end direct
/// against what theory allows, then TCP and round trip on a punched path against a configured
/// direct one (alternating, medians).
enum PunchBench {
    static func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }

    static func run(rounds: Int) throws {
        print("")
        print("NAT traversal: 25 ordered pairs of NAT router kinds x \(rounds) (gateways restarted per cell; attempts of 3 s), then a punched path against a configured one:")
        let t0 = Date()
        var cells: [PunchLab.Cell] = []
        var failures: [String] = []
        try Lab.with("bench-punch") { lab in
            let p = try PunchLab(lab)
            for _ in 0..<rounds {
                for a in LabNAT.allCases {
                    for b in LabNAT.allCases {
                        do { cells.append(try p.cell(a, b)) } catch { failures.append("\(a) x \(b): \(error)") }
                    }
                }
            }
            // A punched path (plain masquerade on both sides) against the configured direct path.
            try p.setNATs(.masquerade, .masquerade)
            try waitUntil("A reaches B", timeout: 25) { try p.s.hostA.run(["ping", "-c1", "-W1", "240.2.2.20"], check: false).succeeded }
            try waitUntil("punched", timeout: 25) { try p.path(a: true).hasPrefix("direct") && p.path(a: false).hasPrefix("direct") }
            try Lab.with("bench-punch-direct") { dl in
                let (direct, ds) = try PathBench.relayPath(dl)
                var punched = try PathBench.measure(client: p.s.hostA, server: p.s.hostB, address: "240.2.2.20", port: 5211)
                var rounds: [(Double?, Double?)] = [(direct.tcpGbps, punched.tcpGbps)]
                for _ in 0..<2 {
                    rounds.append((try PathBench.tcp(client: ds.hostA, server: ds.hostB, address: "240.2.2.20"),
                                   try PathBench.tcp(client: p.s.hostA, server: p.s.hostB, address: "240.2.2.20", port: 5411)))
                }
                punched.tcpGbps = PathBench.median(rounds.compactMap(\.1))
                let d = PathBench.median(rounds.compactMap(\.0))
                func v(_ x: Double?, _ f: String) -> String { x.map { String(format: f, $0) } ?? "-" }
                func r(_ a: Double?, _ b: Double?) -> String { (a != nil && b != nil && b! > 0) ? String(format: "%.2fx", a! / b!) : "-" }
                print("TCP rounds (configured / punched Gbit/s): " + rounds.map { String(format: "%.2f / %.2f", $0.0 ?? 0, $0.1 ?? 0) }.joined(separator: ", "))
                print(pad("metric", 34) + pad("punched", 12) + pad("configured", 12) + "punched/configured (goal: equal within noise)")
                print(pad("TCP Gbit/s", 34) + pad(v(punched.tcpGbps, "%.2f"), 12) + pad(v(d, "%.2f"), 12) + r(punched.tcpGbps, d))
                print(pad("ping RTT ms", 34) + pad(v(punched.rttMs, "%.3f"), 12) + pad(v(direct.rttMs, "%.3f"), 12) + r(punched.rttMs, direct.rttMs))
                print(pad("TCP request/response per s", 34) + pad(v(punched.rrPerSec, "%.0f"), 12) + pad(v(direct.rrPerSec, "%.0f"), 12) + r(punched.rrPerSec, direct.rrPerSec))
            }
        }
        let direct = cells.filter(\.direct).count, possible = cells.filter(\.expectDirect).count
        let wrong = cells.filter { $0.direct != $0.expectDirect }
        print(pad("cells direct / theoretical max", 34) + "\(direct) / \(possible) of \(cells.count) (goal: equal)\(wrong.isEmpty ? "" : "; off: " + wrong.map { "\($0.a)x\($0.b)=\($0.direct ? "direct" : "relayed")" }.joined(separator: ", "))")
        if !failures.isEmpty { print("cells that did not connect: " + failures.joined(separator: "; ")) }
        let slow = cells.filter { $0.direct && $0.afterFirst > 2 }
        if !slow.isEmpty { print("direct later than 2 s after the first packet: " + slow.map { String(format: "%@ x %@ %.1f s", $0.a.rawValue, $0.b.rawValue, $0.afterFirst) }.joined(separator: ", ")) }
        print(pad("per NAT kind (either side)", 34) + pad("first packet", 14) + pad("direct after it", 17) + pad("p90", 8) + "(medians, s; goal under 2)")
        for k in LabNAT.allCases {
            let mine = cells.filter { $0.a == k || $0.b == k }
            let first = PathBench.median(mine.map(\.firstPacket)), ups = mine.filter(\.direct).map(\.afterFirst).sorted()
            let p90 = ups.isEmpty ? nil : ups[min(ups.count - 1, Int(Double(ups.count) * 0.9))]
            func f(_ x: Double?) -> String { x.map { String(format: "%.2f", $0) } ?? "-" }
            print(pad("  \(k)", 34) + pad(f(first), 14) + pad(f(PathBench.median(ups)), 17) + pad(f(p90), 8))
        }
        print(String(format: "(the first packet counts from the gateways' start: a relay registration, a lookup and the handshake; %.0f s in all)", Date().timeIntervalSince(t0)))
    }
}

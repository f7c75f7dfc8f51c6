import Foundation

/// The hole-punching lab (kernel tests and `make bench`): `SiteToSite` with both gateways behind NAT
/// routers whose kind can change (`LabNAT`), a relay on the underlay, and nothing else between the
/// routers: whether the gateways go direct is up to the NATs. Short path timers (attempts of 3 s).
public final class PunchLab {
    public let s: SiteToSite
    public static let paths = "[paths]\nattempt_seconds = 3\nretry_seconds = 3\nheartbeat_seconds = 1\ntrust_seconds = 3\n"

    public init(_ lab: Lab, extraConfig: String = "", relayExtra: String = "") throws {
        s = try SiteToSite(lab, extraHostNumbers: [], relays: 1)
        try s.underlay.run(["nft", "delete", "table", "inet", "relaylab_nodirect"])
        try s.start(extraConfig: PunchLab.paths + extraConfig, relayExtra: relayExtra)
    }

    /// Puts router kinds in front of A and B: the gateways stop (they leave the relay), the routers
    /// get their rulesets and an empty conntrack table, the gateways forget the paths that worked
    /// (each cell starts from nothing) and start again.
    public func setNATs(_ a: LabNAT, _ b: LabNAT) throws {
        try s.restartGateways {
            for site in ["A", "B"] { try? FileManager.default.removeItem(atPath: s.dir(site) + "/state/paths.json") }
            for (router, kind, host, net, wan) in [(s.natA!, a, "10.10.10.10", "10.10.10.0/24", "100.64.1.2"), (s.natB!, b, "10.20.20.20", "10.20.20.0/24", "100.64.2.2")] {
                for t in [["inet", "relaylab_nat"], ["ip", "labnat"]] { _ = try router.run(["nft", "delete", "table"] + t, check: false) }
                if let rules = kind.ruleset(host: host) { try router.loadNftables(rules) }
                _ = try router.run(["conntrack", "-F"], check: false)
                // Without NAT the inside network is routed on the underlay.
                if kind == .none { try s.underlay.run(["ip", "route", "replace", net, "via", wan]) }
                else { _ = try s.underlay.run(["ip", "route", "del", net], check: false) }
            }
        }
    }

    func json(_ r: CommandResult) -> [String: Any]? { try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] }

    /// Gateway A's (or B's) route to the other, as `relayctl peers` says it ("" for none).
    public func path(a: Bool) throws -> String {
        let o = json(try s.relayctl(a ? s.gwA : s.gwB, a ? s.socketA : s.socketB, ["peers", "--json"]))
        let p = (o?["peers"] as? [[String: Any]])?.first?["runtime"] as? [String: Any]
        return p?["path"] as? String ?? ""
    }

    /// A number from `relayctl paths PEER --json` on gateway A (or B).
    public func pathsFigure(a: Bool, _ key: String) throws -> Int {
        json(try s.relayctl(a ? s.gwA : s.gwB, a ? s.socketA : s.socketB, ["paths", a ? "gw-b" : "gw-a", "--json"]))?[key] as? Int ?? 0
    }

    /// What the relay forwarded so far.
    public func forwarded() throws -> Int {
        let o = json(try s.relayctl(s.relayHosts[0], s.relaySocket(0), ["relay", "status", "--json"]))
        return ((o?["relay"] as? [String: Any])?["counters"] as? [String: Any])?["forwarded"] as? Int ?? -1
    }

    /// Pings across (20 in about a second) and how many datagrams the relay forwarded meanwhile.
    public func relayedDuringPings() throws -> (ok: Bool, forwarded: Int) {
        let before = try forwarded()
        let ping = try s.hostA.run(["ping", "-c20", "-i0.05", "-W1", "240.2.2.20"], check: false)
        return (ping.stdout.contains(" 0% packet loss"), try forwarded() - before)
    }

    /// The UDP flows conntrack holds on `router` between its gateway and `to`, in either direction
    /// (behind a full cone, the peer's probe may have opened the flow from outside).
    public func conntrack(_ router: LabHost, from host: String, to: String) throws -> String {
        let all = try router.run(["conntrack", "-L", "-p", "udp"], check: false).stdout
        return all.split(separator: "\n").filter { $0.contains("=\(host) ") && $0.contains("=\(to) ") }.joined(separator: "\n")
    }

    public struct Cell: Sendable {
        public var a: LabNAT, b: LabNAT
        public var expectDirect: Bool
        /// Both gateways on a direct path at the end.
        public var direct: Bool
        /// Seconds from the gateways' start to the first ping answered, and to the outcome (both
        /// direct, or both attempts ended).
        public var firstPacket: Double, settled: Double
        /// Seconds from the first packet to the outcome.
        public var afterFirst: Double { settled - firstPacket }
    }

    /// One cell: the routers set, connectivity (through the relay at worst), then the outcome
    /// (direct within 12 s, or both first attempts over). Throws when nothing connects at all.
    public func cell(_ a: LabNAT, _ b: LabNAT) throws -> Cell {
        try setNATs(a, b)
        let expect = LabNAT.expectDirect(a, b)
        let started = Date()
        // One ping waits up to 5 s for its answer (its packet waits for the handshake): the first
        // answer's time is the time to the first packet, not a retry interval.
        try waitUntil("\(a)/\(b): A reaches B", timeout: 25) { try self.s.hostA.run(["ping", "-c1", "-W5", "240.2.2.20"], check: false).succeeded }
        let first = Date().timeIntervalSince(started)
        var direct = false
        do {
            try waitUntil("\(a)/\(b): settled", timeout: 12, interval: 0.05) {
                direct = try self.path(a: true).hasPrefix("direct") && self.path(a: false).hasPrefix("direct")
                if direct { return true }
                return try self.pathsFigure(a: true, "failures") >= 1 && self.pathsFigure(a: false, "failures") >= 1 && !expect
            }
        } catch { direct = false }
        return Cell(a: a, b: b, expectDirect: expect, direct: direct, firstPacket: first, settled: Date().timeIntervalSince(started))
    }
}

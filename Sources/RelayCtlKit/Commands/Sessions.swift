import ArgumentParser
import Foundation
import RelayControlAPI

struct Sessions: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the flows relayd carries through its tunnels (counters each way, first and last seen).")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only flows with this peer.") var peer: String?
    @Option(help: "Only flows of this site (this node's site or a peer's site name).") var site: String?
    @Option(help: "Only flows where this address takes part (virtual or LAN address).") var host: String?

    func run() throws {
        try runCtl {
            var r = try connection.client.get(.sessions, as: SessionsResponse.self)
            if let peer { r.sessions = r.sessions.filter { $0.flow.peer == peer } }
            if let site { r.sessions = r.sessions.filter { $0.site == site || $0.flow.peer == site } }
            if let host { r.sessions = r.sessions.filter { [$0.flow.localVirtual, $0.flow.remoteVirtual, $0.localReal].contains(host) } }
            if connection.json { printJSON(r); return }
            print(table(["PROTO", "LOCAL (LAN)", "LOCAL (VIRTUAL)", "REMOTE (VIRTUAL)", "PEER", "OUT PKTS/BYTES", "IN PKTS/BYTES", "FIRST", "LAST"], r.sessions.map { s in
                let f = s.flow
                // ICMP "ports" are the echo identifier: shown as "id N" in the protocol column.
                let icmp = f.proto.hasPrefix("icmp")
                func ep(_ a: String, _ p: UInt16?) -> String { icmp ? a : p.map { a.contains(":") ? "[\(a)]:\($0)" : "\(a):\($0)" } ?? a }
                return [icmp ? "\(f.proto) id \(f.localPort ?? 0)" : f.proto, s.localReal.map { ep($0, f.localPort) } ?? "-", ep(f.localVirtual, f.localPort), ep(f.remoteVirtual, f.remotePort), f.peer,
                        "\(f.packetsOut)/\(bytes(f.bytesOut))", "\(f.packetsIn)/\(bytes(f.bytesIn))", ago(f.firstSeen), ago(f.lastSeen)]
            }))
            print("\(r.stats.active) active (max \(r.stats.maxFlows)), \(r.stats.created) created, \(r.stats.expired) expired, \(r.stats.evicted) evicted")
        }
    }
}

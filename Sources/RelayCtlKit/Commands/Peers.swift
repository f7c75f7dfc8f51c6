import Foundation
import ArgumentParser
import RelayControlAPI

struct Peers: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the configured peers and their state.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let r = try connection.client.get(.peers, as: PeersResponse.self)
            if connection.json { printJSON(r); return }
            print(table(["PEER", "STATE", "PATH", "WHY", "HANDSHAKE", "LATENCY", "RX", "TX", "SITES", "PUBLIC KEY"], r.peers.map { p in
                let rt = p.runtime
                return [p.name, p.state, rt?.path ?? rt?.endpoint ?? p.endpoint.map { "\($0)" } ?? "-",
                        rt?.pathChange.map { "\($0)\(rt?.pathChangeSecondsAgo.map { ", \(Int($0))s ago" } ?? "")" } ?? "-",
                        rt?.lastHandshakeSecondsAgo.map { "\(Int($0))s ago" } ?? "never",
                        rt?.latencyMs.map { String(format: "%.2f ms", $0) } ?? "-",
                        bytes(rt?.rxBytes ?? 0), bytes(rt?.txBytes ?? 0), p.sites.joined(separator: ","), p.publicKey]
            }))
        }
    }
}

func bytes(_ n: UInt64) -> String {
    if n < 1024 { return "\(n) B" }
    if n < 1 << 20 { return String(format: "%.1f KiB", Double(n) / 1024) }
    if n < 1 << 30 { return String(format: "%.1f MiB", Double(n) / 1048576) }
    return String(format: "%.2f GiB", Double(n) / 1073741824)
}

struct Paths: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show how this node looks for a direct path to a peer: candidates, probes, the path in use and why.",
        discussion: "The route is a direct path while probes on it are answered, else a relay. See docs/paths.md.")
    @Argument(help: "The peer's name (as `relayctl peers` lists it).") var peer: String
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let q = "peer=" + (peer.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? peer)
            let v = try connection.client.get(.paths, query: q, as: PathsView.self)
            if connection.json { printJSON(v); return }
            print("peer \(v.peer): \(v.route ?? "no path yet")\(v.lastChange.map { " (\($0)\(v.lastChangeSecondsAgo.map { ", \(Int($0))s ago" } ?? ""))" } ?? "")")
            print("hole punching: \(v.holePunching ? "on" : "off (paths.hole_punching = false)")\(v.attempting ? ", attempt in progress" : v.nextAttemptInSeconds.map { ", next attempt in \(Int($0.rounded(.up)))s" } ?? "")")
            print("attempts \(v.attempts), direct \(v.successes), failed \(v.failures); probes sent \(v.probesSent), answered \(v.acksReceived), answers sent \(v.acksSent), unmatched \(v.unmatchedAcks), refused candidates \(v.candidatesRefused), held back \(v.probesLimited)")
            if let s = v.seenAs { print("the peer sees this node at \(s)") }
            print("")
            print(table(["PATH", "LAST PROOF"], v.paths.sorted { $0.key < $1.key }.map { [$0.key, $0.value.map { String(format: "%.1fs ago", $0) } ?? "never"] }))
            print("")
            let rows = (v.cached ?? []).map { ["cache", $0, "worked before the restart"] } + v.local.map { ["local", $0.endpoint, $0.kind] } + v.remote.map { ["peer", $0.endpoint, $0.kind] } + v.peerReflexive.map { ["peer", $0, "peerReflexive (a probe came from there)"] }
            print(table(["SIDE", "CANDIDATE", "KIND"], rows))
            if !v.probes.isEmpty {
                print("")
                print(table(["PROBED", "SENT THIS ATTEMPT", "ROUND TRIP"], v.probes.map { [$0.endpoint, "\($0.sent)", $0.roundTripMs.map { String(format: "%.2f ms", $0) } ?? "-"] }))
            }
        }
    }
}

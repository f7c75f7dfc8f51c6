import ArgumentParser
import RelayControlAPI

struct Peers: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the configured peers and their state.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let r = try connection.client.get(.peers, as: PeersResponse.self)
            if connection.json { printJSON(r); return }
            print(table(["PEER", "STATE", "PATH", "HANDSHAKE", "LATENCY", "RX", "TX", "SITES", "PUBLIC KEY"], r.peers.map { p in
                let rt = p.runtime
                return [p.name, p.state, rt?.path ?? rt?.endpoint ?? p.endpoint.map { "\($0)" } ?? "-",
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

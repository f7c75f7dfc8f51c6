import ArgumentParser
import RelayControlAPI

struct Peers: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the configured peers and their state.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let r = try connection.client.get(.peers, as: PeersResponse.self)
            if connection.json { printJSON(r); return }
            print(table(["PEER", "PUBLIC KEY", "ENDPOINT", "SITES", "STATE"], r.peers.map {
                [$0.name, $0.publicKey, $0.endpoint.map { "\($0)" } ?? "-", $0.sites.joined(separator: ","), $0.state]
            }))
        }
    }
}

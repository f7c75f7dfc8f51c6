import ArgumentParser
import RelayControlAPI

struct Sites: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the configured sites: this node's and its peers'.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let r = try connection.client.get(.sites, as: SitesResponse.self)
            if connection.json { printJSON(r); return }
            print(table(["SITE", "OWNER", "LAN", "VIRTUAL IPv4", "VIRTUAL IPv6"], r.sites.map {
                [$0.name, $0.owner, $0.lan4.map { "\($0)" } ?? "-", $0.virtual4.map { "\($0)" } ?? "-", $0.virtual6.map { "\($0)" } ?? "-"]
            }))
        }
    }
}

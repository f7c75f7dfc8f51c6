import ArgumentParser
import RelayControlAPI
import RelayCore

struct Sites: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the configured sites: this node's and its peers', with their IPv4 and IPv6 prefixes.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let r = try connection.client.get(.sites, as: SitesResponse.self)
            if connection.json { printJSON(r); return }
            func p(_ x: IPPrefix?) -> String { x.map { "\($0)" } ?? "-" }
            print(table(["SITE", "OWNER", "LAN IPv4", "VIRTUAL IPv4", "VIRTUAL IPv6 (RFC 6052)", "LAN IPv6", "VIRTUAL IPv6 LAN", "MAPPED"], r.sites.map {
                [$0.name, $0.owner, p($0.lan4), p($0.virtual4), p($0.virtual6), p($0.lan6), p($0.virtual6Lan), $0.map.map { "\($0.count)" } ?? "-"]
            }))
            for s in r.sites where !(s.map ?? []).isEmpty {
                print("\nsite \(s.name): IPv4 names of IPv6 hosts (RFC 7757)")
                print(table(["IPv4 (LAN)", "IPv6 HOST"], (s.map ?? []).map { ["\($0.ipv4)", "\($0.ipv6)"] }))
            }
        }
    }
}

struct MapHost: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "map", abstract: "Show a host's names in both families: how other sites reach it over IPv4 and IPv6.",
        discussion: "ADDRESS is a LAN address (IPv4, or IPv6 of the site's lan6) or one of the site's virtual addresses. Without --site: the site whose virtual prefixes hold ADDRESS, else this node's own site. Example: relayctl map 192.168.1.20 --site B")
    @Argument(help: "The host's address.") var address: String
    @Option(help: "The site the host belongs to (default: found from ADDRESS, else this node's site).") var site: String?
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            guard let addr = IPAddress(address) else { throw ValidationError("'\(address)' is not an IPv4 or IPv6 address") }
            let r = try connection.client.get(.sites, as: SitesResponse.self)
            let view: SiteView
            if let name = site {
                guard let v = r.sites.first(where: { $0.name == name }) else {
                    throw ValidationError("no site named '\(name)': configured are \(r.sites.map(\.name).joined(separator: ", "))")
                }
                view = v
            } else if let v = r.sites.first(where: { s in [s.virtual4, s.virtual6, s.virtual6Lan].contains { $0?.contains(addr) == true } }) ?? r.sites.first(where: { $0.owner == "self" }) {
                view = v
            } else {
                throw ValidationError("this node has no site of its own and no site's virtual prefixes hold \(addr): name one with --site")
            }
            let n: HostNames
            do { n = try HostNames.of(addr, in: view.site) } catch { throw ValidationError("\(error)") }
            if connection.json { printJSON(n); return }
            print("\(addr) at site \(view.name)\(view.owner == "self" ? " (this node)" : " (behind peer \(view.owner))")")
            var rows: [[String]] = []
            if let x = n.lan4 { rows.append(["LAN IPv4", "\(x)", n.lan6 != nil ? "its IPv4 name (site.map)" : ""]) }
            if let x = n.lan6 { rows.append(["LAN IPv6", "\(x)", ""]) }
            if let x = n.virtual4 { rows.append(["from other sites, IPv4", "\(x)", "virtual4"]) }
            if let x = n.virtual6, let l = n.lan4 {
                rows.append(["from other sites, IPv6", "\(x)", "virtual6, RFC 6052: embeds \(l)"])
                if let p = view.virtual6, p.length == 96 {
                    // The same address written with the embedded IPv4 in dotted form.
                    var base = "\(p.address)"
                    if base.hasSuffix(":0:0") { base = String(base.dropLast(3)) }
                    if base.hasSuffix(":") { rows.append(["", base + "\(l)", "(the same, IPv4 part dotted)"]) }
                }
            }
            if let x = n.virtual6Lan { rows.append(["from other sites, IPv6", "\(x)", "virtual6_lan"]) }
            print(table(["", "ADDRESS", "NOTE"], rows))
            for note in n.notes { print("note: \(note)") }
        }
    }
}

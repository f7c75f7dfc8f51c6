import ArgumentParser
import Foundation
import RelayControlAPI

struct Relay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The relay role: registered nodes, forwarded traffic, limits hit (relay status); callsigns and admission (relay devices, release, admit); this node's relays (relay links); a certificate for the front door (relay cert).",
        subcommands: [RelayStatus.self, RelayLinks.self, RelayDevices.self, RelayRelease.self, RelayAdmit.self, RelayCert.self], defaultSubcommand: RelayStatus.self)
}

struct RelayStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "On a relay: its nodes, what it forwarded, what it refused and why.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let r = try connection.client.get(.relay, as: RelayStatusResponse.self)
            if connection.json { printJSON(r); return }
            let s = r.relay, c = s.counters
            print("relay on UDP port \(s.port), key \(s.publicKey)")
            print("nodes \(s.nodes) registered, \(s.pending) pending, at most \(s.maxNodes)")
            print("forwarded \(c.forwarded) datagrams (\(bytes(c.forwardedBytes))); not here \(c.notHere); throttled \(c.throttled); send buffer full \(c.sendDropped)")
            print("registrations \(c.registrations); refused: not admitted \(c.notAdmitted), blocked \(c.blocked), rate limited \(c.rateLimited), full \(c.full); replayed \(c.replayed); cookies sent under load \(c.cookiesSent); callsign claims \(c.claims)")
            print("dropped: bad mac1 \(c.badMAC), failed handshakes \(c.authFailed), bad frames \(c.badFrames), wrong source \(c.wrongSource), unknown session \(c.unknownSession), malformed \(c.malformed), oversized \(c.oversized); expired \(c.expired), left \(c.left)")
            if let f = r.frontDoor {
                let k = f.counters
                print("front door on \(f.listen) (port \(f.port)), \(f.tls ? "TLS 1.3, \(f.certificateSubject ?? "certificate") until \(f.certificateNotAfter ?? "?")" : "no TLS"); \(f.connectionsOpen) connections open")
                print("  connections \(k.connections), refused per address \(k.refusedPerAddress), no request in time \(k.headerTimeouts), idle \(k.idleTimeouts), TLS failures \(k.tlsFailures)")
                print("  requests HTTP/1.1 \(k.requestsHTTP1), HTTP/2 \(k.requestsHTTP2), not found \(k.notFound), HTTP/2 connection errors \(k.http2ConnectionErrors); WebSockets \(k.webSocketsOpened) opened, \(k.webSocketsRefused) refused, \(k.webSocketProtocolErrors) protocol errors, \(k.webSocketMessagesIn) messages in")
            }
            if !r.nodes.isEmpty {
                print(table(["NODE KEY", "ID", "ADDRESS", "REGISTERED", "LAST HEARD", "FORWARDED", "THROTTLED"], r.nodes.map {
                    [$0.publicKey, String($0.id), $0.address, "\(Int($0.registeredSecondsAgo))s ago", String(format: "%.1fs ago", $0.lastHeardSecondsAgo), String($0.forwarded), String($0.throttled)]
                }))
            }
        }
    }
}

struct RelayLinks: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "links", abstract: "This node's relays: the home relay, others registered on demand or on standby, its id at each, its address as each relay sees it.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let r = try connection.client.get(.status, as: StatusResponse.self)
            let links = r.relays ?? []
            if connection.json { printJSON(links); return }
            if links.isEmpty { print("no relays configured ([[relays]] in the configuration)"); return }
            print(table(["RELAY", "STATE", "HOME", "ID", "SEES US AS", "SINCE"], links.map {
                [$0.address, $0.state, $0.home ? "yes" : "", $0.id.map(String.init) ?? "-", $0.observed ?? "-", $0.registeredSecondsAgo.map { "\(Int($0))s" } ?? "-"]
            }))
        }
    }
}

struct RelayDevices: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "devices", abstract: "On a relay: callsigns, their keys, whether their devices are connected; the allow and block lists.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let r = try connection.client.get(.relayDevices, as: DevicesResponse.self)
            if connection.json { printJSON(r); return }
            printDevices(r)
        }
    }
}

func printDevices(_ r: DevicesResponse) {
    if let p = r.storeProblem { print("store: \(p)") }
    if r.devices.isEmpty { print("no callsigns claimed") } else {
        print(table(["CALLSIGN", "KEY", "CONNECTED", "LAST ACTIVITY", "LISTED"], r.devices.map {
            [$0.callsign, $0.publicKey, $0.connected ? "yes, \(Int($0.connectedSecondsAgo ?? 0))s" : "no", $0.lastActivitySecondsAgo.map { "\(Int($0))s ago" } ?? "-", $0.listed ? "yes" : "no"]
        }))
    }
    for a in r.admission { print("\(a.list) \(a.subject)") }
}

struct RelayRelease: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "release", abstract: "On a relay: free a callsign (its key may claim it again, or another key).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The callsign.") var callsign: String

    func run() throws {
        try runCtl {
            let q = "callsign=" + (callsign.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? callsign)
            let r = try connection.client.get(.relayRelease, query: q, as: DevicesResponse.self)
            if connection.json { printJSON(r); return }
            print("released \(callsign.uppercased())")
        }
    }
}

/// `relay allow` / `relay block`: the relay's device admission lists, by key or callsign.
struct RelayAdmit: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "admit",
        abstract: "On a relay: put a node key or callsign on the allow list (admitted without a token) or the block list (refused; its registrations end).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "allow or block.") var list: String
    @Argument(help: "A node key (44 characters of base64) or a callsign.") var subject: String
    @Flag(help: "Take it off the list instead.") var remove = false

    func run() throws {
        try runCtl {
            guard list == "allow" || list == "block" else { throw CtlFailure(code: RelayCtlExit.failure, description: "the list is 'allow' or 'block', not '\(list)'") }
            let q = "list=\(list)&subject=\(subject.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? subject)\(remove ? "&on=false" : "")"
            let r = try connection.client.get(.relayAdmission, query: q, as: DevicesResponse.self)
            if connection.json { printJSON(r); return }
            print("\(remove ? "removed from" : "added to") the \(list) list: \(subject)")
        }
    }
}

import ArgumentParser
import Foundation
import RelayControlAPI
import RelayCore
#if canImport(Glibc)
import Glibc
#endif

struct Reflect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show this node's public address as its peers see it (majority vote), or query one STUN server once.",
        discussion: "With --server, relayctl itself sends a STUN Binding request (RFC 8489, retransmitted after 0.5, 1, 2 s) and prints the mapped address.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: ArgumentHelp("Query this STUN server (ADDRESS:PORT or [ADDRESS]:PORT) once.", valueName: "addr")) var server: String?

    struct Once: Codable {
        var server: String; var mapped: String; var rttMs: Double; var software: String?
        /// RFC 5780 attributes, when the server has a second address.
        var otherAddress: String?; var responseOrigin: String?
    }

    func run() throws {
        try runCtl {
            if let server {
                guard let ep = Endpoint(server) else { throw CtlFailure(code: RelayCtlExit.failure, description: "'\(server)' is not ADDRESS:PORT") }
                let r = try query(ep)
                if connection.json { printJSON(r) } else {
                    print("\(r.mapped)  (from \(r.server), \(String(format: "%.2f", r.rttMs)) ms\(r.software.map { ", \($0)" } ?? ""))")
                    if let o = r.otherAddress { print("other address \(o) (RFC 5780 behaviour discovery)\(r.responseOrigin.map { ", answered from \($0)" } ?? "")") }
                }
                return
            }
            let r = try connection.client.get(.reflect, as: ReflectResponse.self)
            if connection.json { printJSON(r); return }
            for (fam, v) in [("IPv4", r.ipv4), ("IPv6", r.ipv6)] where v.observers > 0 {
                print("\(fam)  \(v.address ?? "undecided")  (\(v.explanation); mapping \(v.mapping.rawValue))")
            }
            if r.observations.isEmpty { print("no observations yet (peers with endpoints are asked every 60 s)") }
            print(table(["OBSERVER", "SEES US AS", "WHEN"], r.observations.map { [$0.observer, $0.mapped.description, ago($0.at)] }))
            if let b = r.behaviour {
                print("")
                print("NAT behaviour (RFC 5780 tests against \(b.server), other address \(b.otherAddress), \(ago(b.measuredAt))):")
                print("  mapping      \(b.mapping.rawValue)")
                print("  filtering    \(b.filtering.rawValue)")
                print("  hairpinning  \(b.hairpinning.map { $0 ? "yes" : "no" } ?? "not measured")")
                print(table(["TEST", "SENT TO", "ANSWER"], b.tests.map { [$0.name, $0.to.description, $0.answered ? ($0.mapped.map { "sees us as \($0)" } ?? "yes") : "none"] }))
            } else if !r.observations.isEmpty {
                print("NAT behaviour: not measured (needs a reflector with a second address: reflector.other_address on a peer, or a server in reflector.servers)")
            }
            if let c = r.reflector {
                let where_ = c.discoverySockets.map { $0.map(\.description).joined(separator: ", ") + " (RFC 5780)" } ?? "UDP \(c.port)"
                print("reflector on \(where_): \(c.answered) answered (\(c.changed) from another address/port), \(c.errors) errors, \(c.malformed) malformed, \(c.rateLimited) rate-limited, \(c.trackedSources) sources tracked")
            }
        }
    }

    func query(_ ep: Endpoint) throws -> Once {
        let v6 = ep.address.family == .ipv6
        let s = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard s >= 0 else { throw CtlFailure(code: RelayCtlExit.failure, description: "cannot open a UDP socket") }
        defer { close(s) }
        var st = sockaddr_storage()
        let len: socklen_t
        withUnsafeMutableBytes(of: &st) { raw in
            if case .v4(let a) = ep.address {
                var sin = sockaddr_in(); sin.sin_family = sa_family_t(AF_INET); sin.sin_port = ep.port.bigEndian; sin.sin_addr.s_addr = a.value.bigEndian
                withUnsafeBytes(of: sin) { raw.copyMemory(from: $0) }
            } else if case .v6(let a) = ep.address {
                var sin6 = sockaddr_in6(); sin6.sin6_family = sa_family_t(AF_INET6); sin6.sin6_port = ep.port.bigEndian
                withUnsafeMutableBytes(of: &sin6.sin6_addr) { for (i, b) in a.bytes.enumerated() { $0[i] = b } }
                withUnsafeBytes(of: sin6) { raw.copyMemory(from: $0) }
            }
        }
        len = socklen_t(v6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        let tid = (0..<12).map { _ in UInt8.random(in: 0...255) }
        let req = STUN.encode(type: STUN.bindingRequest, transactionID: tid, attributes: [])
        var buf = [UInt8](repeating: 0, count: 2048)
        var rto = 0.5
        let start = Date()
        for _ in 0..<4 {
            _ = withUnsafePointer(to: &st) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(s, req, req.count, 0, $0, len) } }
            let deadline = Date().addingTimeInterval(rto)
            while Date() < deadline {
                var pfd = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, Int32(max(1, deadline.timeIntervalSinceNow * 1000))) > 0 else { break }
                let n = recv(s, &buf, buf.count, 0)
                guard n > 0, let m = try? STUN.parse(buf[0..<n], allowClassic: false), m.transactionID == tid else { continue }
                guard m.type == STUN.bindingSuccess, let v = m.attribute(STUN.Attr.xorMappedAddress),
                      let mapped = STUN.decodeAddress(v, xor: true, transactionID: tid) else {
                    throw CtlFailure(code: RelayCtlExit.failure, description: "\(ep) answered with an error or without XOR-MAPPED-ADDRESS")
                }
                func addr(_ t: UInt16) -> String? { m.attribute(t).flatMap { STUN.decodeAddress($0, xor: false, transactionID: tid) }?.description }
                return Once(server: ep.description, mapped: mapped.description, rttMs: Date().timeIntervalSince(start) * 1000,
                            software: m.attribute(STUN.Attr.software).map { String(decoding: $0, as: UTF8.self) },
                            otherAddress: addr(STUN.Attr.otherAddress), responseOrigin: addr(STUN.Attr.responseOrigin))
            }
            rto *= 2
        }
        throw CtlFailure(code: RelayCtlExit.failure, description: "no STUN answer from \(ep) after 4 tries (7.5 s)")
    }
}

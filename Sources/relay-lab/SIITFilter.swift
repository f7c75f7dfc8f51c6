import ArgumentParser
import Foundation
import RelayCore

/// Runs Relay's translator over packets given as hex lines on stdin (the tayga differential test
/// feeds it the same bytes it wrote into tayga's TUN device). One line out per line in: the
/// translated packet in hex, or "DROP reason".
struct SIITFilter: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "siit",
        abstract: "Translate hex-encoded IP packets from stdin with Relay's SIIT (RFC 7915) and print the results (tests).")
    @Option(help: "RFC 6052 prefix for IPv4 addresses, e.g. 2001:db8:64::/96.") var prefix: String
    @Option(help: "Explicit mapping IPV4=IPV6 (RFC 7757; repeatable).") var map: [String] = []
    @Flag(help: "Keep TTL/hop limit as they are (what relayd does behind the kernel's forwarding).") var noDecrement = false

    func run() throws {
        guard let p = IPPrefix(prefix), p.family == .ipv6 else { throw ValidationError("--prefix: '\(prefix)' is not an IPv6 prefix") }
        var to6: [IPv4Address: IPv6Address] = [:], to4: [IPv6Address: IPv4Address] = [:]
        for m in map {
            let parts = m.split(separator: "=")
            guard parts.count == 2, let a = IPv4Address(String(parts[0])), let b = IPv6Address(String(parts[1])) else { throw ValidationError("--map: '\(m)' is not IPV4=IPV6") }
            to6[a] = b; to4[b] = a
        }
        let addressMap = SIIT.AddressMap(toV6: { to6[$0] ?? RFC6052.embed($0, in: p) }, toV4: { to4[$0] ?? RFC6052.extract($0, from: p) })
        var out = [UInt8](repeating: 0, count: 65536 + 64)
        while let line = readLine() {
            let hex = line.trimmingCharacters(in: .whitespaces)
            guard hex.count % 2 == 0, !hex.isEmpty else { print("DROP not hex"); continue }
            var bytes: [UInt8] = []
            var i = hex.startIndex
            while i < hex.endIndex { let j = hex.index(i, offsetBy: 2); bytes.append(UInt8(hex[i..<j], radix: 16) ?? 0); i = j }
            let r = bytes.withUnsafeBytes { src in
                out.withUnsafeMutableBytes { dst in
                    bytes.first.map { $0 >> 4 == 4 } == true
                        ? SIIT.toIPv6(src, into: dst, map: addressMap, decrement: !noDecrement)
                        : SIIT.toIPv4(src, into: dst, map: addressMap, decrement: !noDecrement)
                }
            }
            switch r {
            case .translated(let n): print(out[0..<n].map { String(format: "%02x", $0) }.joined())
            case .drop(let why): print("DROP \(why)")
            }
            fflush(stdout)
        }
    }
}

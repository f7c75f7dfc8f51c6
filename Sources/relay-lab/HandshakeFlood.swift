import ArgumentParser
import CRelayShim
import Foundation
import RelayCore
import RelayTunnel

/// A handshake flood as an attacker on the underlay would send it: initiations with a valid mac1
/// (a node's public key is public) and garbage Noise content, each from a spoofed source address
/// (raw IPv4 socket, IP_HDRINCL), at a fixed rate for a fixed time. Only for namespaces a test made.
struct HandshakeFlood: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "handshake-flood",
        abstract: "Send spoofed-source handshake initiations with a valid mac1 (kernel tests and make bench, inside a lab namespace).")
    @Option(help: "Target IPv4 address and port, e.g. 10.20.20.20:51820.") var target: String
    @Option(help: "The target node's public key (base64).") var key: String
    @Option(help: "Spoofed sources are drawn from this IPv4 prefix.") var sources = "10.99.0.0/16"
    @Option(help: "Initiations per second (1...200000).") var rate = 60_000
    @Option(help: "Seconds to send (0.1...60).") var seconds = 5.0

    func run() throws {
        guard let ep = Endpoint(target), case .v4(let dst) = ep.address else { throw ValidationError("--target must be IPv4ADDRESS:PORT") }
        guard let pub = Data(base64Encoded: key), pub.count == 32 else { throw ValidationError("--key must be a 32-byte public key in base64") }
        guard let pfx = IPPrefix(sources), pfx.family == .ipv4, pfx.length <= 30, case .v4(let base) = pfx.address else { throw ValidationError("--sources must be an IPv4 prefix of at most /30") }
        guard (1...200_000).contains(rate) else { throw ValidationError("--rate must be 1...200000") }
        guard (0.1...60).contains(seconds) else { throw ValidationError("--seconds must be 0.1...60") }
        let fd = socket(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_RAW))
        guard fd >= 0 else { throw ValidationError("raw socket: \(String(cString: strerror(errno))) (needs CAP_NET_RAW)") }
        defer { close(fd) }
        let mac1Key = HandshakeMAC.key(receiver: Array(pub))
        var to = sockaddr_in(); to.sin_family = sa_family_t(AF_INET); to.sin_addr.s_addr = dst.value.bigEndian
        let hostMask = UInt32.max >> UInt32(pfx.length)
        var rng = SystemRandomNumberGenerator()
        let total = Int(Double(rate) * seconds)
        let start = Date()
        var sent = 0, failed = 0
        // 1024 distinct initiations (random sender index and Noise content, each with its mac1),
        // made before the clock starts; per packet only the spoofed source changes.
        let pool: [[UInt8]] = (0..<1024).map { _ in
            var body: [UInt8] = [WireType.initiation.rawValue, 0, 0, 0]
            body += (0..<(4 + 104)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            return HandshakeMAC.append(to: body, key: mac1Key)
        }
        let udpLen = 8 + TunnelLimits.initiationSize, ipLen = 20 + udpLen
        var packet = [UInt8](repeating: 0, count: ipLen)
        packet.withUnsafeMutableBytes { p in
            p.storeBytes(of: UInt8(0x45), toByteOffset: 0, as: UInt8.self)
            p.storeBytes(of: UInt16(ipLen).bigEndian, toByteOffset: 2, as: UInt16.self)
            p.storeBytes(of: UInt16(0x4000).bigEndian, toByteOffset: 6, as: UInt16.self)  // DF
            p.storeBytes(of: UInt8(64), toByteOffset: 8, as: UInt8.self)
            p.storeBytes(of: UInt8(17), toByteOffset: 9, as: UInt8.self)                   // the kernel fills the checksum
            p.storeBytes(of: dst.value.bigEndian, toByteOffset: 16, as: UInt32.self)
            p.storeBytes(of: ep.port.bigEndian, toByteOffset: 22, as: UInt16.self)
            p.storeBytes(of: UInt16(udpLen).bigEndian, toByteOffset: 24, as: UInt16.self)  // no UDP checksum (IPv4)
        }
        var next = 0
        while sent + failed < total {
            // Pace in batches of 64: the batch's due time, then send.
            let due = start.addingTimeInterval(Double(sent + failed) / Double(rate))
            let wait = due.timeIntervalSinceNow
            if wait > 0 { usleep(useconds_t(wait * 1_000_000)) }
            if Date().timeIntervalSince(start) > seconds + 5 { break }
            for _ in 0..<min(64, total - sent - failed) {
                let src = base.value | (UInt32.random(in: 1...max(1, hostMask - 1), using: &rng) & hostMask)
                let payload = pool[next & 1023]
                next &+= 1
                packet.withUnsafeMutableBytes { p in
                    p.storeBytes(of: src.bigEndian, toByteOffset: 12, as: UInt32.self)
                    p.storeBytes(of: UInt16.random(in: 1024...65535, using: &rng).bigEndian, toByteOffset: 20, as: UInt16.self)
                    payload.withUnsafeBytes { p.baseAddress!.advanced(by: 28).copyMemory(from: $0.baseAddress!, byteCount: payload.count) }
                }
                let n = withUnsafePointer(to: &to) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, packet, ipLen, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                if n == ipLen { sent += 1 } else { failed += 1 }
            }
        }
        let took = Date().timeIntervalSince(start)
        print("{\"sent\": \(sent), \"failed\": \(failed), \"seconds\": \(String(format: "%.2f", took)), \"rate\": \(Int(Double(sent) / max(took, 0.001)))}")
    }
}

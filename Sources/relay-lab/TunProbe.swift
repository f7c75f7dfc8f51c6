import ArgumentParser
import Foundation
import RelayCore
import RelayIPC

/// Asks relay-helper for a TUN device (as whatever uid this runs as), then pings through the
/// handed-over fd: writes ICMP echo requests from --src to --dst and waits for the replies.
struct TunProbe: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tun-probe",
        abstract: "Open a TUN device through relay-helper and ping through its fd (kernel tests).")
    @Option(help: "relay-helper socket.") var socket: String
    @Option(help: "Device name.") var device: String
    @Option(help: "MTU.") var mtu = 1400
    @Option(help: "Address for the device (repeatable), e.g. 240.1.1.1/24.") var address: [String] = []
    @Option(help: "Source of the echo requests written into the TUN.") var src: String
    @Option(help: "Destination of the echo requests.") var dst: String
    @Option(help: "Requests to send.") var count = 3
    @Option(help: "Seconds to wait for replies.") var timeout = 3.0
    @Flag(help: "Succeed only when NO reply arrives.") var expectNone = false

    func run() throws {
        guard let s = IPv4Address(src), let d = IPv4Address(dst) else { throw ValidationError("--src and --dst must be IPv4 addresses") }
        let addrs = try address.map { try InterfaceAddress(parsing: $0) }
        let client = try HelperClient(path: socket)
        let (dev, fd) = try client.openDevice(DeviceSpec(name: device, mtu: mtu, addresses: addrs))
        defer { close(fd) }
        print("uid \(getuid()) got fd \(fd) for \(dev.name) index \(dev.index) mtu \(dev.mtu) up \(dev.up)")
        let ident = UInt16(truncatingIfNeeded: getpid())
        var replies = 0
        let deadline = Date().addingTimeInterval(timeout)
        var buf = [UInt8](repeating: 0, count: 65536)
        for seq in 1...count {
            let pkt = ProbePacket.echoRequest(src: s, dst: d, ident: ident, seq: UInt16(seq))
            guard write(fd, pkt, pkt.count) == pkt.count else { throw ValidationError("write to TUN failed: \(String(cString: strerror(errno)))") }
        }
        while replies < count && Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ms = Int32(max(1, deadline.timeIntervalSinceNow * 1000))
            guard poll(&pfd, 1, ms) > 0 else { break }
            let n = read(fd, &buf, buf.count)
            guard n > 0 else { continue }
            if ProbePacket.isEchoReply(buf[0..<n], from: d, to: s, ident: ident) { replies += 1 }
        }
        print("\(replies)/\(count) echo replies from \(d)")
        fflush(stdout)
        if expectNone ? replies != 0 : replies != count { throw ExitCode(1) }
    }
}

/// Minimal IPv4/ICMP for the probe (the real codecs live in RelayCore's packet path).
enum ProbePacket {
    static func checksum(_ b: ArraySlice<UInt8>) -> UInt16 { internetChecksum(b) }

    static func echoRequest(src: IPv4Address, dst: IPv4Address, ident: UInt16, seq: UInt16) -> [UInt8] {
        let payload = Array("relay-tun-probe".utf8)
        var icmp: [UInt8] = [8, 0, 0, 0, UInt8(ident >> 8), UInt8(ident & 0xff), UInt8(seq >> 8), UInt8(seq & 0xff)] + payload
        let c = checksum(icmp[...]); icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
        let total = 20 + icmp.count
        var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, UInt8(seq & 0xff), 0x40, 0, 64, 1, 0, 0] + src.bytes + dst.bytes
        let h = checksum(ip[...]); ip[10] = UInt8(h >> 8); ip[11] = UInt8(h & 0xff)
        return ip + icmp
    }

    static func isEchoReply(_ p: ArraySlice<UInt8>, from: IPv4Address, to: IPv4Address, ident: UInt16) -> Bool {
        let b = Array(p)
        guard b.count >= 28, b[0] >> 4 == 4 else { return false }
        let ihl = Int(b[0] & 0x0f) * 4
        guard b.count >= ihl + 8, b[9] == 1, Array(b[12..<16]) == from.bytes, Array(b[16..<20]) == to.bytes else { return false }
        return b[ihl] == 0 && UInt16(b[ihl + 4]) << 8 | UInt16(b[ihl + 5]) == ident
    }
}

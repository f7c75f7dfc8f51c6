import Crypto
import Foundation
import RelayCore
import RelayTunnel
import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// A simulated node's side of the relay protocol (docs/relay-protocol.md): its UDP socket, the
/// register (Noise IK against the relay's pinned key, a token), the grant, and its frames. Shared
/// by `relay-load` and `relay-blast`.
final class SimulatedNode {
    let fd: Int32
    let key = Curve25519.KeyAgreement.PrivateKey()
    let index = UInt32.random(in: 1...UInt32.max)
    var initiator: Noise.Initiator?
    var id: UInt32 = 0, send: SymmetricKey?, receive: SymmetricKey?, counter: UInt64 = 0
    var window = ReplayWindow()
    var active = false
    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    /// A non-blocking UDP socket bound to `local` (any port), with a 1 MiB receive buffer.
    convenience init(bind local: IPv4Address, receiveBuffer: Int32 = 1 << 20) throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw LabToolError("socket: \(String(cString: strerror(errno)))") }
        var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); a.sin_addr.s_addr = local.value.bigEndian
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var big = receiveBuffer
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, socklen_t(MemoryLayout<Int32>.size))
        self.init(fd: fd)
    }

    /// The register message (its timestamp is now, the token follows it in the Noise payload).
    func register(relayKey pub: [UInt8], token: String) throws -> [UInt8] {
        var ini = try Noise.Initiator(staticKey: key, remoteStatic: pub)
        var stamp = [UInt8](); let ns = UInt64(Date().timeIntervalSince1970 * 1e9)
        for s in (0..<8).reversed() { stamp.append(UInt8(truncatingIfNeeded: ns >> (UInt64(s) * 8))) }
        let m1 = try ini.writeMessage1(payload: stamp + Array(token.utf8))
        initiator = ini
        let wire = RelayMessage.register(sender: index, noise: m1, mac1Key: HandshakeMAC.key(receiver: pub))
        lastRegister = (m1, wire, pub)
        return wire
    }

    private var lastRegister: (noise: [UInt8], wire: [UInt8], relay: [UInt8])?

    /// The relay is under load and sent a cookie: the same register again with mac2 (nil when the
    /// cookie is not for our register).
    func cookie(receiver: UInt32, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>) -> [UInt8]? {
        guard receiver == index, let last = lastRegister,
              let c = HandshakeMAC.openCookie(nonce: nonce, sealed: sealed, mac1: Array(HandshakeMAC.mac1(of: last.wire[...])), key: HandshakeMAC.cookieKey(sender: last.relay)) else { return nil }
        return RelayMessage.register(sender: index, noise: last.noise, mac1Key: HandshakeMAC.key(receiver: last.relay), cookie: c)
    }

    /// The relay's `registered`: the grant taken, the activating ping returned (nil when it does
    /// not belong to our register or does not authenticate).
    func registered(sender: UInt32, receiver: UInt32, noise: ArraySlice<UInt8>) -> [UInt8]? {
        guard receiver == index, var ini = initiator, let (payload, tr) = try? ini.readMessage2(Array(noise)), let g = RelayGrant(payload), g.id == sender else { return nil }
        id = g.id; send = tr.send.key; receive = tr.receive.key; initiator = nil
        return frame(.ping, [][...])
    }

    func frame(_ kind: RelayFrameKind, _ body: ArraySlice<UInt8>) -> [UInt8] {
        defer { counter += 1 }
        return RelayMessage.frame(kind, session: id, counter: counter, body: body, key: send!)
    }

    func send(_ bytes: [UInt8], to: inout sockaddr_in) -> Bool {
        withUnsafePointer(to: &to) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == bytes.count
    }
}

struct LabToolError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// `sockaddr_in` for an IPv4 address and port.
func socketAddress(_ a: IPv4Address, _ port: UInt16) -> sockaddr_in {
    var s = sockaddr_in(); s.sin_family = sa_family_t(AF_INET); s.sin_port = port.bigEndian; s.sin_addr.s_addr = a.value.bigEndian
    return s
}

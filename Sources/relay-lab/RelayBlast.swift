import ArgumentParser
import Foundation
import RelayCore
import RelayTunnel
import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// A relay's forwarding rate, measured the same way against relayd's relay role and coturn's TURN
/// relay: `pairs` sender/receiver pairs, each sender blasting `size`-byte payloads to its receiver
/// through the relay (Relay: forward frames to the receiver's id; TURN: ChannelData on a channel
/// bound to the receiver's relayed address) for `seconds`, in batches (sendmmsg / recvmmsg, one
/// sending and one receiving thread, so the two relays face the same generator). Prints a JSON
/// summary of payload delivered. Bounded in time; loopback or a lab namespace only.
struct RelayBlast: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "relay-blast",
        abstract: "Forwarding rate through relayd's relay or a TURN server, same generator for both (make bench; loopback or a lab namespace only).")
    enum Mode: String, ExpressibleByArgument { case relay, turn }
    @Option(help: "relay (relayd's relay role) or turn (a TURN server that allows unauthenticated allocations).") var mode: Mode
    @Option(help: "The server, IPv4ADDRESS:PORT.") var server: String
    @Option(help: "relay: the relay's public key (base64).") var key = ""
    @Option(help: "relay: a token the relay admits.") var token = ""
    @Option(help: "Local IPv4 address for the clients' sockets.") var bind = "127.0.0.1"
    @Option(help: "Sender/receiver pairs (1...16).") var pairs = 2
    @Option(help: "Payload bytes per datagram (16...1400).") var size = 1200
    @Option(help: "Seconds of sending (0.5...30).") var seconds = 3.0

    struct Summary: Codable {
        var mode: String, pairs: Int, size: Int, seconds: Double
        var sent: Int, received: Int, receivedPerSecond: Double, payloadGbps: Double, lossPercent: Double
    }

    /// One client: a socket and how its datagrams reach its partner through the server.
    final class Client {
        let node: SimulatedNode
        var relayed: Endpoint?       // TURN: our relayed transport address
        var peerID: UInt32 = 0       // relay: the receiver's id
        init(_ n: SimulatedNode) { node = n }
    }

    func run() throws {
        guard let ep = Endpoint(server), case .v4(let dst) = ep.address else { throw ValidationError("--server must be IPv4ADDRESS:PORT") }
        guard case .v4(let local)? = IPAddress(bind) else { throw ValidationError("--bind must be an IPv4 address") }
        guard (1...16).contains(pairs), (16...1400).contains(size), (0.5...30).contains(seconds) else {
            throw ValidationError("--pairs 1...16, --size 16...1400, --seconds 0.5...30")
        }
        var to = socketAddress(dst, ep.port)
        let clients = try (0..<(2 * pairs)).map { _ in Client(try SimulatedNode(bind: local, receiveBuffer: 8 << 20)) }
        let senders = Array(clients[0..<pairs]), receivers = Array(clients[pairs...])
        switch mode {
        case .relay:
            guard let pub = Data(base64Encoded: key).map(Array.init), pub.count == 32 else { throw ValidationError("--key must be the relay's 32-byte public key in base64") }
            for c in clients { try registerAtRelay(c.node, pub: pub, to: &to) }
            for (s, r) in zip(senders, receivers) { s.peerID = r.node.id }
        case .turn:
            for c in clients { c.relayed = try turnAllocate(c.node, to: &to) }
            for (s, r) in zip(senders, receivers) {
                // Both directions bound to channel 0x4000: the receiver gets ChannelData, not Data indications.
                try turnBind(s.node, peer: r.relayed!, to: &to)
                try turnBind(r.node, peer: s.relayed!, to: &to)
            }
        }
        // The receiving thread counts datagrams of the expected length until told to stop.
        let expected = mode == .relay ? RelayMessage.frameOverhead + 4 + size : 4 + size
        let stop = ManagedAtomicFlag()
        let result = ResultBox()
        let receiverDone = DispatchSemaphore(value: 0)
        let relayAddress = to, mode = mode
        let rx = Thread {
            result.value = Self.receive(receivers, expected: expected, stop: stop, mode: mode, to: relayAddress)
            receiverDone.signal()
        }
        rx.start()
        let sent = try blast(senders, to: &to)
        Thread.sleep(forTimeInterval: 0.5)  // what is in flight arrives
        stop.set()
        receiverDone.wait()
        let received = result.value
        if mode == .relay { for c in clients { _ = c.node.send(c.node.frame(.leave, [][...]), to: &to) } }
        let s = Summary(mode: mode.rawValue, pairs: pairs, size: size, seconds: seconds, sent: sent, received: received,
                        receivedPerSecond: Double(received) / seconds, payloadGbps: Double(received * size * 8) / seconds / 1e9,
                        lossPercent: sent > 0 ? 100 * Double(sent - received) / Double(sent) : 0)
        print(String(decoding: try JSONEncoder().encode(s), as: UTF8.self))
    }

    /// Sends as fast as the socket takes them for `seconds`, 32 datagrams per sendmmsg, the pairs in
    /// turn. Blocking sends: a full socket buffer waits instead of counting a datagram that never left.
    func blast(_ senders: [Client], to: inout sockaddr_in) throws -> Int {
        let batch = 32
        let frameSize = mode == .relay ? RelayMessage.frameOverhead + 4 + size : 4 + size
        var buffers = [UInt8](repeating: 0x5a, count: batch * frameSize)
        let lens = [Int32](repeating: Int32(frameSize), count: batch)
        // Each destination slot is a sockaddr_in6's room holding our sockaddr_in.
        var destinations = [sockaddr_in6](repeating: sockaddr_in6(), count: batch)
        destinations.withUnsafeMutableBytes { d in
            for i in 0..<batch { withUnsafeBytes(of: to) { (d.baseAddress! + i * MemoryLayout<sockaddr_in6>.stride).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        }
        for c in senders { let f = fcntl(c.node.fd, F_GETFL); _ = fcntl(c.node.fd, F_SETFL, f & ~O_NONBLOCK) }
        var sent = 0
        let deadline = Date().addingTimeInterval(seconds)
        var turn = 0
        while Date() < deadline {
            let c = senders[turn % senders.count]; turn += 1
            buffers.withUnsafeMutableBytes { raw in
                let base = raw.baseAddress!
                for i in 0..<batch {
                    let p = base + i * frameSize
                    switch mode {
                    case .relay:
                        RelayMessage.writeHeader(.forward, session: c.node.id, counter: c.node.counter, into: p)
                        p.storeBytes(of: c.peerID.littleEndian, toByteOffset: RelayMessage.frameHeader, as: UInt32.self)
                        RelayMessage.tag(key: c.node.send!, UnsafeRawBufferPointer(start: p, count: frameSize - RelayMessage.tagSize),
                                         into: p + frameSize - RelayMessage.tagSize)
                        c.node.counter += 1
                    case .turn:
                        p.storeBytes(of: UInt16(0x4000).bigEndian, as: UInt16.self)
                        p.storeBytes(of: UInt16(size).bigEndian, toByteOffset: 2, as: UInt16.self)
                    }
                }
                var off = 0
                while off < batch {
                    let n = CRelayShim_send_batch(c.node.fd, base.assumingMemoryBound(to: UInt8.self) + off * frameSize, frameSize, Int32(batch - off), lens, destinations)
                    if n == -EINTR || n == -ENOBUFS { continue }
                    if n <= 0 { break }
                    off += Int(n)
                }
                sent += off
            }
        }
        return sent
    }

    /// Counts datagrams of `expected` length on the receivers' sockets (recvmmsg, 64 at a time)
    /// until `stop`; relay receivers ping once a second (their registrations stay alive).
    static func receive(_ receivers: [Client], expected: Int, stop: ManagedAtomicFlag, mode: Mode, to: sockaddr_in) -> Int {
        var dest = to
        let batch = 64, slot = 2048
        var buf = [UInt8](repeating: 0, count: batch * slot)
        var lens = [Int32](repeating: 0, count: batch), sources = [sockaddr_in6](repeating: sockaddr_in6(), count: batch)
        var count = 0
        var fds = receivers.map { pollfd(fd: $0.node.fd, events: Int16(POLLIN), revents: 0) }
        var lastPing = Date()
        while !stop.isSet {
            if mode == .relay && Date().timeIntervalSince(lastPing) > 1 {
                lastPing = Date()
                for r in receivers { _ = r.node.send(r.node.frame(.ping, [][...]), to: &dest) }
            }
            guard poll(&fds, nfds_t(fds.count), 50) > 0 else { continue }
            for (i, r) in receivers.enumerated() where fds[i].revents & Int16(POLLIN) != 0 {
                while true {
                    let n = CRelayShim_recv_batch(r.node.fd, &buf, slot, Int32(batch), &lens, &sources)
                    if n <= 0 { break }
                    for j in 0..<Int(n) where Int(lens[j]) == expected { count += 1 }
                }
            }
        }
        return count
    }

    // MARK: setup

    /// Waits up to `timeout` for a datagram on `n`'s socket that `accept` takes.
    func awaitDatagram(_ n: SimulatedNode, timeout: Double, _ accept: (ArraySlice<UInt8>) -> Bool) -> Bool {
        var buf = [UInt8](repeating: 0, count: 2048)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            var p = pollfd(fd: n.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 50) > 0 else { continue }
            let k = recv(n.fd, &buf, buf.count, Int32(MSG_DONTWAIT))
            if k > 0 && accept(buf[0..<k]) { return true }
        }
        return false
    }

    /// Register, activate (ping answered by pong); three tries.
    func registerAtRelay(_ n: SimulatedNode, pub: [UInt8], to: inout sockaddr_in) throws {
        for _ in 0..<3 {
            _ = n.send(try n.register(relayKey: pub, token: token), to: &to)
            var ping: [UInt8]?
            _ = awaitDatagram(n, timeout: 1) {
                if case .registered(let s, let r, let noise)? = RelayMessage.parse($0) { ping = n.registered(sender: s, receiver: r, noise: noise) }
                if case .cookie(let r, let nonce, let sealed)? = RelayMessage.parse($0), let again = n.cookie(receiver: r, nonce: nonce, sealed: sealed) { _ = n.send(again, to: &to) }
                if case .refused(_, let why)? = RelayMessage.parse($0) { print("relay-blast: the relay refused a node: \(why)", to: &standardError) }
                return ping != nil
            }
            guard let ping else { continue }
            _ = n.send(ping, to: &to)
            if awaitDatagram(n, timeout: 1, { if case .frame(.pong, _, _, _)? = RelayMessage.parse($0) { return true }; return false }) { return }
        }
        throw LabToolError("relay-blast: a node could not register at \(server) (is the relay enabled, the key its key, the token admitted?)")
    }

    static let allocate: UInt16 = 0x0003, createPermission: UInt16 = 0x0008, channelBind: UInt16 = 0x0009
    static let requestedTransport: UInt16 = 0x0019, xorRelayedAddress: UInt16 = 0x0016, xorPeerAddress: UInt16 = 0x0012, channelNumber: UInt16 = 0x000C

    /// One TURN request and its success answer (class bits 0x0100), three tries.
    func turnExchange(_ n: SimulatedNode, _ type: UInt16, _ attrs: (_ tid: [UInt8]) -> [(UInt16, [UInt8])], to: inout sockaddr_in) throws -> STUN.Message {
        for _ in 0..<3 {
            let tid = (0..<12).map { _ in UInt8.random(in: 0...255) }
            _ = n.send(STUN.encode(type: type, transactionID: tid, attributes: attrs(tid), fingerprint: false), to: &to)
            var answer: STUN.Message?
            _ = awaitDatagram(n, timeout: 1) {
                guard let m = try? STUN.parse($0), m.transactionID == tid else { return false }
                answer = m
                return true
            }
            guard let m = answer else { continue }
            guard m.type == type | 0x0100 else {
                let e = m.attribute(STUN.Attr.errorCode).map { String(decoding: $0.dropFirst(4), as: UTF8.self) } ?? "?"
                throw LabToolError("relay-blast: the TURN server answered 0x\(String(type, radix: 16)) with an error: \(e) (run it with --no-auth)")
            }
            return m
        }
        throw LabToolError("relay-blast: no answer from the TURN server at \(server)")
    }

    func turnAllocate(_ n: SimulatedNode, to: inout sockaddr_in) throws -> Endpoint {
        let m = try turnExchange(n, Self.allocate, { _ in [(Self.requestedTransport, [17, 0, 0, 0])] }, to: &to)
        guard let v = m.attribute(Self.xorRelayedAddress), let e = STUN.decodeAddress(v, xor: true, transactionID: m.transactionID) else {
            throw LabToolError("relay-blast: the TURN server's Allocate answer has no XOR-RELAYED-ADDRESS")
        }
        return e
    }

    /// ChannelBind 0x4000 to `peer` (it installs the permission too).
    func turnBind(_ n: SimulatedNode, peer: Endpoint, to: inout sockaddr_in) throws {
        _ = try turnExchange(n, Self.channelBind, { tid in
            [(Self.channelNumber, [0x40, 0x00, 0, 0]), (Self.xorPeerAddress, STUN.addressValue(peer, xor: true, transactionID: tid))]
        }, to: &to)
    }
}

/// The receiving thread's count, read after it signalled.
final class ResultBox: @unchecked Sendable { var value = 0 }

/// A flag one thread sets and another polls.
final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}

struct StandardError: TextOutputStream { mutating func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) } }
nonisolated(unsafe) var standardError = StandardError()

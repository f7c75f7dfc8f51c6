import Crypto
import Foundation
import RelayCore
import RelayTunnel
#if canImport(Glibc)
import Glibc
#endif

/// Handshake messages waiting for the handshake thread: bounded (a full queue drops, it never
/// blocks the data path that fills it), with a small priority lane for initiations whose mac2
/// proved a cookie. It also holds what both threads need of the cookie mechanism: whether the node
/// is under load, and the secret cookies are made from (new every two minutes).
final class HandshakeQueue: @unchecked Sendable {
    private let cond = NSCondition()
    private var items: [([UInt8], Route)] = []
    private var priority: [([UInt8], Route)] = []
    private var drops = 0
    private var loaded = false
    private var secret = SymmetricKey(size: .bits256)
    /// Peers' endpoints (address and port): their messages take the priority lane.
    private var known = Set<[UInt8]>()
    let capacity: Int
    static let priorityCapacity = 64
    init(capacity: Int) { self.capacity = capacity }

    /// False when the lane is full (the message is dropped). Messages from a peer's known endpoint
    /// take the priority lane too (spoofing one only competes with that peer, in a lane of 64).
    func push(_ b: [UInt8], from: Route, priority: Bool = false) -> Bool {
        // `known` is read under the lock only: setKnown replaces it from the handshake thread
        // (reading it outside the lock crashed relayd under a flood once).
        let source = HandshakeQueue.sourceBytes(from)
        cond.lock(); defer { cond.unlock() }
        if priority || known.contains(source) {
            if self.priority.count >= HandshakeQueue.priorityCapacity { return false }
            self.priority.append((b, from))
        } else {
            if items.count >= capacity { return false }
            items.append((b, from))
        }
        cond.signal()
        return true
    }

    /// A drop counted here, reported by the handshake thread (the data path takes no other lock).
    func countDrop() { cond.lock(); drops += 1; cond.unlock() }

    /// Everything queued (the priority lane first; how many of those), and the drops since.
    func popAll(timeout: Double) -> (batch: [([UInt8], Route)], prioritised: Int, drops: Int) {
        cond.lock(); defer { cond.unlock() }
        if items.isEmpty && priority.isEmpty { _ = cond.wait(until: Date().addingTimeInterval(timeout)) }
        let p = priority.count
        var taken: [([UInt8], Route)] = []
        swap(&taken, &items)
        items.reserveCapacity(capacity)
        let batch = p == 0 ? taken : priority + taken
        priority.removeAll(keepingCapacity: true)
        let d = drops
        drops = 0
        return (batch, p, d)
    }

    var underLoad: Bool {
        get { cond.lock(); defer { cond.unlock() }; return loaded }
        set { cond.lock(); loaded = newValue; cond.unlock() }
    }

    func rotateSecret() { cond.lock(); secret = SymmetricKey(size: .bits256); cond.unlock() }

    func setKnown(_ routes: [Route]) {
        let set = Set(routes.map(HandshakeQueue.sourceBytes))
        cond.lock(); known = set; cond.unlock()
    }

    /// The cookie for a source: bound to its address and port, from the current secret.
    func cookie(for from: Route) -> [UInt8] {
        cond.lock(); let k = secret; cond.unlock()
        return HandshakeMAC.cookie(secret: k, source: HandshakeQueue.sourceBytes(from))
    }

    func validMac2(_ b: ArraySlice<UInt8>, from: Route) -> Bool { HandshakeMAC.validMac2(b, cookie: cookie(for: from)) }

    /// What a cookie binds: the source's 16 address bytes (IPv4 v4-mapped) and port; through a
    /// relay, the relay's and the sender's id there.
    static func sourceBytes(_ r: Route) -> [UInt8] {
        func bytes(_ e: Endpoint) -> [UInt8] {
            var sa = TunnelService.socketAddress(e)
            var out: [UInt8] = withUnsafeBytes(of: &sa.sin6_addr) { Array($0) }
            out.append(UInt8(e.port >> 8)); out.append(UInt8(e.port & 0xff))
            return out
        }
        switch r {
        case .direct(let e): return bytes(e)
        case .relay(let e, let id):
            var out = bytes(e)
            withUnsafeBytes(of: id.littleEndian) { out.append(contentsOf: $0) }
            return out
        }
    }
}

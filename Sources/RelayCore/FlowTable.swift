import Foundation

/// Idle timeouts per protocol (seconds) and the table's cap.
public struct FlowLimits: Codable, Equatable, Sendable {
    public var tcp: Double = 7440   // conntrack's established TCP timeout is 5 days; 2 h 4 min as RFC 5382 asks of NATs
    public var udp: Double = 120
    public var icmp: Double = 30
    public var other: Double = 120
    public var maxFlows: Int = 65536
    public init() {}
    public func timeout(_ proto: UInt8) -> Double {
        switch proto { case 6: return tcp; case 17: return udp; case 1, 58: return icmp; default: return other }
    }
}

/// One flow carried through the tunnel, seen from this gateway: the local side is this site.
public struct FlowView: Codable, Equatable, Sendable {
    public var proto: String
    public var localVirtual: String
    public var localPort: UInt16?
    public var remoteVirtual: String
    public var remotePort: UInt16?
    public var peer: String
    public var packetsOut: UInt64, bytesOut: UInt64, packetsIn: UInt64, bytesIn: UInt64
    public var firstSeen: Date
    public var lastSeen: Date
}

public struct FlowStats: Codable, Equatable, Sendable {
    public var active: Int
    public var created: UInt64
    public var expired: UInt64
    public var evicted: UInt64
    public var maxFlows: Int
}

/// Packets counted but not yet recorded (see FlowTable.add).
public struct FlowBatch {
    var key: FlowTable.Key?
    var outbound = false, peer = "", now = 0.0, packets = 0, bytes = 0
    public init() {}
}

/// Session bookkeeping: flows with counters, expired by protocol idle timeouts on a timing wheel
/// (1-second slots, lazy re-arming), capped in size: at the cap the flow closest to expiry is evicted
/// and counted, so a flood cannot grow memory. Time is injected (tests drive it).
public final class FlowTable: @unchecked Sendable {
    struct Key: Hashable { var proto: UInt8; var local: IPAddress; var remote: IPAddress; var lport: UInt16; var rport: UInt16 }
    final class Flow {
        var peer: String
        var first: Double, last: Double
        var pOut: UInt64 = 0, bOut: UInt64 = 0, pIn: UInt64 = 0, bIn: UInt64 = 0
        var deadline: Double
        init(peer: String, now: Double, deadline: Double) { self.peer = peer; first = now; last = now; self.deadline = deadline }
    }

    static let slots = 1024
    private let lock = NSLock()
    private var flows: [Key: Flow] = [:]
    private var wheel = [[Key]](repeating: [], count: FlowTable.slots)
    private var cursor: Int64?
    public var limits: FlowLimits { didSet { } }
    private var created: UInt64 = 0, expiredCount: UInt64 = 0, evicted: UInt64 = 0

    public init(limits: FlowLimits = FlowLimits()) { self.limits = limits }

    public func setLimits(_ l: FlowLimits) { lock.lock(); limits = l; lock.unlock() }

    /// Parses protocol and ports of an IPv4/IPv6 packet (first header only).
    static func key(_ p: ArraySlice<UInt8>, outbound: Bool) -> (Key, Int)? {
        guard let first = p.first else { return nil }
        let s = p.startIndex
        var proto: UInt8, src: IPAddress, dst: IPAddress, l4: Int
        switch first >> 4 {
        case 4:
            guard p.count >= 20 else { return nil }
            proto = p[s + 9]; l4 = Int(first & 0x0f) * 4
            src = .v4(IPv4Address(p[s + 12], p[s + 13], p[s + 14], p[s + 15])); dst = .v4(IPv4Address(p[s + 16], p[s + 17], p[s + 18], p[s + 19]))
        case 6:
            guard p.count >= 40 else { return nil }
            let (a, b) = p.withUnsafeBytes { (SIIT.load6($0, 8), SIIT.load6($0, 24)) }  // no allocation per packet
            proto = p[s + 6]; l4 = 40; src = .v6(a); dst = .v6(b)
        default: return nil
        }
        var sport: UInt16 = 0, dport: UInt16 = 0
        if p.count >= l4 + 4 {
            switch proto {
            case 6, 17:
                sport = UInt16(p[s + l4]) << 8 | UInt16(p[s + l4 + 1]); dport = UInt16(p[s + l4 + 2]) << 8 | UInt16(p[s + l4 + 3])
            case 1, 58:
                if p.count >= l4 + 6 { let id = UInt16(p[s + l4 + 4]) << 8 | UInt16(p[s + l4 + 5]); sport = id; dport = id }
            default: break
            }
        }
        let k = outbound ? Key(proto: proto, local: src, remote: dst, lport: sport, rport: dport)
                         : Key(proto: proto, local: dst, remote: src, lport: dport, rport: sport)
        return (k, p.count)
    }

    /// Counts one packet (outbound: TUN to peer; inbound: peer to TUN).
    public func record(_ p: ArraySlice<UInt8>, outbound: Bool, peer: String, now: Double, packets: Int = 1, bytes: Int? = nil) {
        guard let (k, one) = FlowTable.key(p, outbound: outbound) else { return }
        record(k, outbound: outbound, peer: peer, now: now, packets: packets, len: bytes ?? one)
    }

    /// Counts a packet into `batch`: consecutive packets of one flow are recorded once, when a
    /// packet of another flow comes or the batch is flushed (one lock and lookup per run of a flow).
    public func add(_ p: ArraySlice<UInt8>, outbound: Bool, peer: String, now: Double, to batch: inout FlowBatch) {
        guard let (k, len) = FlowTable.key(p, outbound: outbound) else { return }
        if batch.key == k && batch.outbound == outbound && batch.peer == peer {
            batch.packets += 1; batch.bytes += len; batch.now = now
            return
        }
        flush(&batch)
        batch.key = k; batch.outbound = outbound; batch.peer = peer; batch.now = now; batch.packets = 1; batch.bytes = len
    }

    public func flush(_ batch: inout FlowBatch) {
        guard let k = batch.key else { return }
        record(k, outbound: batch.outbound, peer: batch.peer, now: batch.now, packets: batch.packets, len: batch.bytes)
        batch.key = nil
    }

    func record(_ k: Key, outbound: Bool, peer: String, now: Double, packets: Int, len: Int) {
        lock.lock(); defer { lock.unlock() }
        if cursor == nil { cursor = Int64(now) }
        let f: Flow
        if let existing = flows[k] { f = existing } else {
            if flows.count >= limits.maxFlows { evictOne() }
            f = Flow(peer: peer, now: now, deadline: now + limits.timeout(k.proto))
            flows[k] = f
            arm(k, f.deadline)
            created += 1
        }
        f.last = now
        f.deadline = now + limits.timeout(k.proto)
        if outbound { f.pOut += UInt64(packets); f.bOut += UInt64(len) } else { f.pIn += UInt64(packets); f.bIn += UInt64(len) }
    }

    private func arm(_ k: Key, _ deadline: Double) {
        let slot = Int(Int64(deadline.rounded(.up)) % Int64(FlowTable.slots))
        wheel[slot].append(k)
    }

    /// The flow closest to its deadline goes (lock held).
    private func evictOne() {
        guard let c = cursor else { return }
        for step in 0..<FlowTable.slots {
            let slot = Int((c + Int64(step)) % Int64(FlowTable.slots))
            while let k = wheel[slot].popLast() {
                if flows.removeValue(forKey: k) != nil { evicted += 1; return }
            }
        }
        // Nothing armed (cannot happen while flows exist): drop an arbitrary one.
        if let k = flows.keys.first { flows[k] = nil; evicted += 1 }
    }

    /// Advances the wheel to `now`, removing flows idle past their timeout.
    public func expire(now: Double) {
        lock.lock(); defer { lock.unlock() }
        guard var c = cursor else { return }
        let target = Int64(now)
        var steps = 0
        while c <= target && steps <= FlowTable.slots {
            let slot = Int(c % Int64(FlowTable.slots))
            let keys = wheel[slot]
            wheel[slot] = []
            for k in keys {
                guard let f = flows[k] else { continue }
                if f.deadline <= now { flows[k] = nil; expiredCount += 1 } else { arm(k, f.deadline) }
            }
            c += 1; steps += 1
        }
        cursor = max(c, target)
    }

    public func stats() -> FlowStats {
        lock.lock(); defer { lock.unlock() }
        return FlowStats(active: flows.count, created: created, expired: expiredCount, evicted: evicted, maxFlows: limits.maxFlows)
    }

    public func snapshot() -> ([FlowView], FlowStats) {
        lock.lock(); defer { lock.unlock() }
        func name(_ p: UInt8) -> String { [1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"][p] ?? "ip/\(p)" }
        let views = flows.map { k, f in
            FlowView(proto: name(k.proto), localVirtual: "\(k.local)", localPort: k.lport == 0 ? nil : k.lport,
                     remoteVirtual: "\(k.remote)", remotePort: k.rport == 0 ? nil : k.rport, peer: f.peer,
                     packetsOut: f.pOut, bytesOut: f.bOut, packetsIn: f.pIn, bytesIn: f.bIn,
                     firstSeen: Date(timeIntervalSince1970: f.first), lastSeen: Date(timeIntervalSince1970: f.last))
        }.sorted { $0.lastSeen > $1.lastSeen }
        return (views, FlowStats(active: flows.count, created: created, expired: expiredCount, evicted: evicted, maxFlows: limits.maxFlows))
    }
}

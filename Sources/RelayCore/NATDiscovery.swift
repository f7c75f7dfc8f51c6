import Foundation

/// RFC 8489 section 6.2.1: a client retransmits a request after RTO, then doubling (0, RTO, 3 RTO,
/// 7 RTO, ...), Rc requests in all, and gives up Rm (16) RTOs after the last one.
public struct STUNSchedule: Equatable, Sendable {
    public var rto: Double
    public var count: Int
    public init(rto: Double = 0.5, count: Int = 7) { self.rto = rto; self.count = max(1, count) }
    /// When request number `n` (0-based) goes out, after the first.
    public func offset(_ n: Int) -> Double { rto * Double((1 << n) - 1) }
    /// When the transaction has failed, after the first request.
    public var giveUp: Double { offset(count - 1) + 16 * rto }
}

/// Outstanding STUN client transactions, retransmitted on the schedule (pure: the caller sends).
public struct STUNTransactions<Tag: Sendable>: Sendable {
    public struct Entry: Sendable {
        public var tag: Tag
        public var message: [UInt8]
        public var to: Endpoint
        public var started: Double
        public var sent: Int
    }
    public let schedule: STUNSchedule
    public private(set) var entries: [[UInt8]: Entry] = [:]
    public init(schedule: STUNSchedule) { self.schedule = schedule }

    /// A new Binding request (random transaction id); returns the bytes to send now.
    public mutating func begin(_ tag: Tag, to: Endpoint, attributes: [(UInt16, [UInt8])] = [], now: Double) -> (tid: [UInt8], message: [UInt8]) {
        var tid = [UInt8](repeating: 0, count: 12)
        repeat { for i in 0..<12 { tid[i] = UInt8.random(in: 0...255) } } while entries[tid] != nil
        let m = STUN.encode(type: STUN.bindingRequest, transactionID: tid, attributes: attributes + [(STUN.Attr.software, Array(Reflector.software.utf8))])
        entries[tid] = Entry(tag: tag, message: m, to: to, started: now, sent: 1)
        return (tid, m)
    }

    /// Ends the transaction a message belongs to, if it is ours.
    public mutating func finish(_ tid: [UInt8]) -> Entry? { entries.removeValue(forKey: tid) }
    public func contains(_ tid: [UInt8]) -> Bool { entries[tid] != nil }
    public var isEmpty: Bool { entries.isEmpty }

    /// Retransmissions due now, and the transactions that have given up (removed).
    public mutating func tick(now: Double) -> (resend: [(message: [UInt8], to: Endpoint)], failed: [Entry]) {
        var resend: [(message: [UInt8], to: Endpoint)] = [], failed: [Entry] = []
        for (tid, var e) in entries {
            let age = now - e.started
            if age >= schedule.giveUp { failed.append(e); entries[tid] = nil; continue }
            if e.sent < schedule.count, age >= schedule.offset(e.sent) {
                resend.append((e.message, e.to)); e.sent += 1; entries[tid] = e
            }
        }
        return (resend, failed)
    }
}

/// A NAT's behaviour in RFC 4787 terms, as RFC 5780's tests found it.
public struct NATBehaviour: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable {
        case noNAT = "no NAT"
        case endpointIndependent = "endpoint-independent"
        case addressDependent = "address-dependent"
        case addressAndPortDependent = "address-and-port-dependent"
        case unknown
    }
    /// One test: what was sent where, and what came back (nil mapped = no answer).
    public struct Test: Codable, Equatable, Sendable {
        public var name: String
        public var to: Endpoint
        public var answered: Bool
        public var mapped: Endpoint?
        public var from: Endpoint?
    }
    public var mapping: Kind
    public var filtering: Kind
    /// nil: not measured (no NAT, or no mapped address to aim at).
    public var hairpinning: Bool?
    /// The RFC 5780 reflector the tests ran against, and its other address.
    public var server: Endpoint
    public var otherAddress: Endpoint
    public var mapped: Endpoint
    public var measuredAt: Date
    public var tests: [Test]
    public var explanation: String
}

/// RFC 5780 section 4 behaviour discovery against one reflector that answered test I with
/// OTHER-ADDRESS, from the same socket: filtering tests II/III and hairpinning first (so that the
/// mapping tests' packets to the other address cannot open the filter they are meant to test),
/// then mapping tests II/III. A state machine: it returns what to send; the caller does the I/O.
public struct NATDiscovery: Sendable {
    public enum Step: String, Sendable, CaseIterable {
        case filteringChangeAddressAndPort = "filtering II (change address and port)"
        case filteringChangePort = "filtering III (change port)"
        case hairpinning = "hairpinning (to our own mapped address)"
        case mappingOtherAddress = "mapping II (other address, same port)"
        case mappingOtherAddressAndPort = "mapping III (other address and port)"
    }
    public let server: Endpoint, other: Endpoint, mapped: Endpoint
    public let behindNAT: Bool
    var transactions: STUNTransactions<Step>
    var results: [Step: NATBehaviour.Test] = [:]
    var phase = 0
    public private(set) var result: NATBehaviour?

    /// `mapped` is test I's answer; `behindNAT` false when it equals the socket's own address.
    public init(server: Endpoint, other: Endpoint, mapped: Endpoint, behindNAT: Bool, schedule: STUNSchedule) {
        self.server = server; self.other = other; self.mapped = mapped; self.behindNAT = behindNAT
        transactions = STUNTransactions(schedule: schedule)
    }

    public var finished: Bool { result != nil }
    public func owns(_ tid: [UInt8]) -> Bool { transactions.contains(tid) }

    /// The first requests.
    public mutating func start(now: Double) -> [(message: [UInt8], to: Endpoint)] {
        phase = 1
        var out: [(message: [UInt8], to: Endpoint)] = []
        let a = transactions.begin(.filteringChangeAddressAndPort, to: server, attributes: [(STUN.Attr.changeRequest, STUN.changeRequestValue(address: true, port: true))], now: now)
        out.append((a.message, server))
        let b = transactions.begin(.filteringChangePort, to: server, attributes: [(STUN.Attr.changeRequest, STUN.changeRequestValue(address: false, port: true))], now: now)
        out.append((b.message, server))
        if behindNAT {
            let c = transactions.begin(.hairpinning, to: mapped, now: now)
            out.append((c.message, mapped))
        }
        return out
    }

    /// A STUN message whose transaction is ours: a Binding response, or (hairpinning) our own
    /// request coming back through the NAT. Returns what to send next.
    public mutating func receive(_ m: STUN.Message, from: Endpoint, now: Double) -> [(message: [UInt8], to: Endpoint)] {
        guard let e = transactions.finish(m.transactionID) else { return [] }
        var mappedAddress: Endpoint?
        if m.type == STUN.bindingSuccess, let v = m.attribute(STUN.Attr.xorMappedAddress) {
            mappedAddress = STUN.decodeAddress(v, xor: true, transactionID: m.transactionID)
        }
        let answered = e.tag == .hairpinning ? (m.type == STUN.bindingRequest || m.type == STUN.bindingSuccess) : m.type == STUN.bindingSuccess
        results[e.tag] = NATBehaviour.Test(name: e.tag.rawValue, to: e.to, answered: answered, mapped: mappedAddress, from: from)
        return advance(now: now)
    }

    /// Retransmissions and timeouts.
    public mutating func tick(now: Double) -> [(message: [UInt8], to: Endpoint)] {
        let (resend, failed) = transactions.tick(now: now)
        for e in failed { results[e.tag] = NATBehaviour.Test(name: e.tag.rawValue, to: e.to, answered: false, mapped: nil, from: nil) }
        return resend + advance(now: now)
    }

    mutating func advance(now: Double) -> [(message: [UInt8], to: Endpoint)] {
        guard transactions.isEmpty else { return [] }
        if phase == 1 {
            phase = 2
            let a = transactions.begin(.mappingOtherAddress, to: Endpoint(other.address, port: server.port), now: now)
            let b = transactions.begin(.mappingOtherAddressAndPort, to: other, now: now)
            return [(a.message, Endpoint(other.address, port: server.port)), (b.message, other)]
        }
        if phase == 2 { phase = 3; result = classify() }
        return []
    }

    func classify() -> NATBehaviour {
        let m2 = results[.mappingOtherAddress]?.mapped, m3 = results[.mappingOtherAddressAndPort]?.mapped
        let mapping: NATBehaviour.Kind
        var why: [String] = []
        if !behindNAT { mapping = .noNAT; why.append("the mapped address is this node's own: no NAT") }
        else if let m2, let m3 {
            if m2 == mapped { mapping = .endpointIndependent; why.append("same mapping towards the other address (\(m2))") }
            else if m3 == m2 { mapping = .addressDependent; why.append("a new mapping per destination address (\(mapped), \(m2))") }
            else { mapping = .addressAndPortDependent; why.append("a new mapping per destination address and port (\(mapped), \(m2), \(m3))") }
        } else { mapping = .unknown; why.append("mapping tests went unanswered") }
        let filtering: NATBehaviour.Kind
        if results[.filteringChangeAddressAndPort]?.answered == true { filtering = .endpointIndependent; why.append("answers from another address and port get in") }
        else if results[.filteringChangePort]?.answered == true { filtering = .addressDependent; why.append("answers from another port of the same address get in, from another address not") }
        else { filtering = .addressAndPortDependent; why.append("only answers from the address and port we sent to get in") }
        let hair: Bool? = behindNAT ? results[.hairpinning]?.answered : nil
        if let hair { why.append(hair ? "hairpinning works" : "no hairpinning") }
        return NATBehaviour(mapping: mapping, filtering: filtering, hairpinning: hair, server: server, otherAddress: other, mapped: mapped,
                            measuredAt: Date(), tests: Step.allCases.compactMap { results[$0] }, explanation: why.joined(separator: "; "))
    }
}

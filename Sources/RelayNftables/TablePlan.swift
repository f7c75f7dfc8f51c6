import RelayCore

/// Where the helper's table lives and how its base chains hook in (from the helper's policy).
public struct TableSpec: Sendable, Equatable, Codable {
    /// Always `inet`: one table for both families.
    public var family: String { "inet" }
    public var name: String
    public var dnatPriority: Int32
    public var snatPriority: Int32
    /// The helper's device names start with this: inbound translation (DNAT) applies only to
    /// packets that came out of them (`iifname "relay*"`), never to what arrives on the LAN or the
    /// underlay.
    public var devicePrefix: String
    public init(name: String = "relay", dnatPriority: Int32 = -100, snatPriority: Int32 = 100, devicePrefix: String = "relay") {
        self.name = name; self.dnatPriority = dnatPriority; self.snatPriority = snatPriority; self.devicePrefix = devicePrefix
    }
}

/// The concrete objects a `NATState` becomes: sets/maps, two NAT base chains, their rules. Both the
/// `nft -f` renderer and the libnftnl encoder are driven from this one plan, so they cannot drift.
public struct TablePlan: Sendable, Equatable {
    public enum SetKind: Sendable, Equatable { case prefixMap, exactMap, prefixSet }

    public struct PlannedSet: Sendable, Equatable {
        public var name: String
        public var family: IPFamily
        public var kind: SetKind
        /// prefixMap: (match, translate); prefixSet: (prefix, nil).
        public var prefixes: [(IPPrefix, IPPrefix?)]
        public var addresses: [(IPAddress, IPAddress)]
        public var count: Int { kind == .exactMap ? addresses.count : prefixes.count }
        public static func == (l: Self, r: Self) -> Bool {
            l.name == r.name && l.family == r.family && l.kind == r.kind
                && l.prefixes.map { "\($0.0)\($0.1.map { "\($0)" } ?? "")" } == r.prefixes.map { "\($0.0)\($0.1.map { "\($0)" } ?? "")" }
                && l.addresses.map { "\($0.0)\($0.1)" } == r.addresses.map { "\($0.0)\($0.1)" }
        }
    }

    public enum Hook: String, Sendable, Equatable { case prerouting, postrouting }

    public enum Rule: Sendable, Equatable {
        /// `iifname "relay*" ip daddr @map counter dnat ip prefix to ip daddr map @map`
        case dnatPrefix(IPFamily, map: String, from: String)
        /// `iifname "relay*" ip daddr @map counter dnat ip to ip daddr map @map`
        case dnatExact(IPFamily, map: String, from: String)
        /// `ip daddr @remote ip saddr @map counter snat ip prefix to ip saddr map @map`
        case snatPrefix(IPFamily, map: String, remote: String)
        /// `ip daddr @remote ip saddr @map counter snat ip to ip saddr map @map`
        case snatExact(IPFamily, map: String, remote: String)

        /// The rule in `nft` syntax, without its comment.
        public var text: String {
            func ipk(_ f: IPFamily) -> String { f == .ipv4 ? "ip" : "ip6" }
            switch self {
            case .dnatPrefix(let f, let m, let dev):
                return "iifname \"\(dev)*\" \(ipk(f)) daddr @\(m) counter dnat \(ipk(f)) prefix to \(ipk(f)) daddr map @\(m)"
            case .dnatExact(let f, let m, let dev):
                return "iifname \"\(dev)*\" \(ipk(f)) daddr @\(m) counter dnat \(ipk(f)) to \(ipk(f)) daddr map @\(m)"
            case .snatPrefix(let f, let m, let r):
                return "\(ipk(f)) daddr @\(r) \(ipk(f)) saddr @\(m) counter snat \(ipk(f)) prefix to \(ipk(f)) saddr map @\(m)"
            case .snatExact(let f, let m, let r):
                return "\(ipk(f)) daddr @\(r) \(ipk(f)) saddr @\(m) counter snat \(ipk(f)) to \(ipk(f)) saddr map @\(m)"
            }
        }

        /// Comment that identifies the rule (FNV-1a of its text): lets a re-apply see that a chain
        /// already holds exactly the wanted rules and leave them (and their counters) alone.
        public var tag: String {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in text.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
            let hex = String(h, radix: 16)
            return "relay:" + String(repeating: "0", count: 16 - hex.count) + hex
        }
    }

    public struct Chain: Sendable, Equatable {
        public var name: String
        public var hook: Hook
        public var priority: Int32
        public var rules: [Rule]
    }

    public var spec: TableSpec
    public var sets: [PlannedSet]
    public var chains: [Chain]

    public init(_ state: NATState, spec: TableSpec) {
        self.spec = spec
        var sets: [PlannedSet] = []
        var pre: [Rule] = [], post: [Rule] = []
        for f in [IPFamily.ipv4, .ipv6] {
            let n = f == .ipv4 ? "4" : "6"
            let remote = state.remote.filter { $0.family == f }.sorted()
            if !remote.isEmpty {
                sets.append(PlannedSet(name: "remote\(n)", family: f, kind: .prefixSet, prefixes: remote.map { ($0, nil) }, addresses: []))
            }
            let dx = state.dnatExact.filter { $0.match.family == f }.sorted { $0.match < $1.match }
            if !dx.isEmpty {
                sets.append(PlannedSet(name: "dnatx\(n)", family: f, kind: .exactMap, prefixes: [], addresses: dx.map { ($0.match, $0.translate) }))
                pre.append(.dnatExact(f, map: "dnatx\(n)", from: spec.devicePrefix))
            }
            let d = state.dnat.filter { $0.match.family == f }.sorted { $0.match < $1.match }
            if !d.isEmpty {
                sets.append(PlannedSet(name: "dnat\(n)", family: f, kind: .prefixMap, prefixes: d.map { ($0.match, $0.translate) }, addresses: []))
                pre.append(.dnatPrefix(f, map: "dnat\(n)", from: spec.devicePrefix))
            }
            let sx = state.snatExact.filter { $0.match.family == f }.sorted { $0.match < $1.match }
            if !sx.isEmpty {
                sets.append(PlannedSet(name: "snatx\(n)", family: f, kind: .exactMap, prefixes: [], addresses: sx.map { ($0.match, $0.translate) }))
                if !remote.isEmpty { post.append(.snatExact(f, map: "snatx\(n)", remote: "remote\(n)")) }
            }
            let s = state.snat.filter { $0.match.family == f }.sorted { $0.match < $1.match }
            if !s.isEmpty {
                sets.append(PlannedSet(name: "snat\(n)", family: f, kind: .prefixMap, prefixes: s.map { ($0.match, $0.translate) }, addresses: []))
                if !remote.isEmpty { post.append(.snatPrefix(f, map: "snat\(n)", remote: "remote\(n)")) }
            }
        }
        self.sets = sets
        chains = [
            Chain(name: "prerouting", hook: .prerouting, priority: spec.dnatPriority, rules: pre),
            Chain(name: "postrouting", hook: .postrouting, priority: spec.snatPriority, rules: post),
        ]
    }

    /// The same table in `nft -f` syntax. With `replacing`, the text first creates and deletes the
    /// table so that loading it replaces whatever was there (and nothing else).
    public func render(replacing: Bool = false) -> String {
        var s = ""
        if replacing { s += "table \(spec.family) \(spec.name)\ndelete table \(spec.family) \(spec.name)\n" }
        s += "table \(spec.family) \(spec.name) {\n"
        for set in sets {
            let t = set.family == .ipv4 ? "ipv4_addr" : "ipv6_addr"
            switch set.kind {
            case .prefixMap:
                s += "\tmap \(set.name) {\n\t\ttype \(t) : interval \(t)\n\t\tflags interval\n"
                s += "\t\telements = { " + set.prefixes.map { "\($0.0) : \($0.1!)" }.joined(separator: ",\n\t\t\t     ") + " }\n\t}\n"
            case .exactMap:
                s += "\tmap \(set.name) {\n\t\ttype \(t) : \(t)\n"
                s += "\t\telements = { " + set.addresses.map { "\($0.0) : \($0.1)" }.joined(separator: ",\n\t\t\t     ") + " }\n\t}\n"
            case .prefixSet:
                s += "\tset \(set.name) {\n\t\ttype \(t)\n\t\tflags interval\n"
                s += "\t\telements = { " + set.prefixes.map { "\($0.0)" }.joined(separator: ",\n\t\t\t     ") + " }\n\t}\n"
            }
        }
        for c in chains {
            s += "\tchain \(c.name) {\n\t\ttype nat hook \(c.hook.rawValue) priority \(c.priority); policy accept;\n"
            for r in c.rules { s += "\t\t\(r.text) comment \"\(r.tag)\"\n" }
            s += "\t}\n"
        }
        s += "}\n"
        return s
    }
}

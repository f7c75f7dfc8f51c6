import CNetfilter
import RelayCore
import RelayNetlink
#if canImport(Glibc)
import Glibc
#endif

/// The helper's own nftables table, programmed through libnftnl over one netlink socket.
/// It only ever addresses objects inside `spec.name` (family inet): it never flushes the ruleset.
public final class NftablesTable {
    public let spec: TableSpec
    let socket: NetlinkSocket

    public init(spec: TableSpec) throws {
        self.spec = spec
        socket = try NetlinkSocket(protocol: NL.NETLINK_NETFILTER)
    }

    // MARK: - Read back

    func dump(_ type: UInt32, family: UInt16 = NFT.NFPROTO_INET, build: ((UnsafeMutablePointer<nlmsghdr>) -> Void)? = nil) throws -> [NetlinkMessage] {
        let buf = MessageBuffer(capacity: 4096)
        let seq = socket.reserveSequence()
        let nlh = nftnl_nlmsg_build_hdr(buf.tail(room: 1024), UInt16(type), family, NL.NLM_F_DUMP | NL.NLM_F_ACK, seq)!
        build?(nlh)
        buf.commit(nlh)
        var attempts = 0
        while true {
            do { return try socket.dump(buf.bytes, seq: seq) } catch let e as NetlinkError where e.code == .interrupted && attempts < 5 {
                attempts += 1
            }
        }
    }

    private func isOurs(_ table: UnsafePointer<CChar>?, _ family: UInt32) -> Bool {
        guard let table else { return false }
        return family == UInt32(NFT.NFPROTO_INET) && String(cString: table) == spec.name
    }

    public func tableExists() throws -> Bool {
        for m in try dump(NFT_MSG_GETTABLE.rawValue) {
            let t = nftnl_table_alloc()!; defer { nftnl_table_free(t) }
            guard m.bytes.withUnsafeBytes({ nftnl_table_nlmsg_parse($0.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), t) }) >= 0 else { continue }
            if isOurs(nftnl_table_get_str(t, attr(NFTNL_TABLE_NAME)), nftnl_table_get_u32(t, attr(NFTNL_TABLE_FAMILY))) { return true }
        }
        return false
    }

    struct RawChain { var name: String; var hook: UInt32?; var prio: Int32? }

    func chains() throws -> [RawChain] {
        var out: [RawChain] = []
        let filterObj = NftBuild.chain(spec, nil, name: ""); let filter = filterObj.ptr; defer { filterObj.free(filter) }
        nftnl_chain_unset(filter, attr(NFTNL_CHAIN_NAME))
        for m in try dump(NFT_MSG_GETCHAIN.rawValue, build: { nftnl_chain_nlmsg_build_payload($0, filter) }) {
            let c = nftnl_chain_alloc()!; defer { nftnl_chain_free(c) }
            guard m.bytes.withUnsafeBytes({ nftnl_chain_nlmsg_parse($0.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), c) }) >= 0 else { continue }
            guard isOurs(nftnl_chain_get_str(c, attr(NFTNL_CHAIN_TABLE)), nftnl_chain_get_u32(c, attr(NFTNL_CHAIN_FAMILY))) else { continue }
            let hasHook = nftnl_chain_is_set(c, attr(NFTNL_CHAIN_HOOKNUM))
            out.append(RawChain(name: String(cString: nftnl_chain_get_str(c, attr(NFTNL_CHAIN_NAME))),
                                hook: hasHook ? nftnl_chain_get_u32(c, attr(NFTNL_CHAIN_HOOKNUM)) : nil,
                                prio: hasHook ? nftnl_chain_get_s32(c, attr(NFTNL_CHAIN_PRIO)) : nil))
        }
        return out
    }

    func rules() throws -> [(chain: String, rule: ObservedRule)] {
        var out: [(String, ObservedRule)] = []
        let filter = nftnl_rule_alloc()!; defer { nftnl_rule_free(filter) }
        nftnl_rule_set_str(filter, attr(NFTNL_RULE_TABLE), spec.name)
        nftnl_rule_set_u32(filter, attr(NFTNL_RULE_FAMILY), UInt32(NFT.NFPROTO_INET))
        for m in try dump(NFT_MSG_GETRULE.rawValue, build: { nftnl_rule_nlmsg_build_payload($0, filter) }) {
            let r = nftnl_rule_alloc()!; defer { nftnl_rule_free(r) }
            guard m.bytes.withUnsafeBytes({ nftnl_rule_nlmsg_parse($0.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), r) }) >= 0 else { continue }
            guard isOurs(nftnl_rule_get_str(r, attr(NFTNL_RULE_TABLE)), nftnl_rule_get_u32(r, attr(NFTNL_RULE_FAMILY))) else { continue }
            out.append((String(cString: nftnl_rule_get_str(r, attr(NFTNL_RULE_CHAIN))), NftablesTable.summary(r)))
        }
        return out
    }

    /// A parsed rule's handle, comment (its tag) and counter.
    static func summary(_ r: OpaquePointer) -> ObservedRule {
        var comment: String?
        var len: UInt32 = 0
        if nftnl_rule_is_set(r, attr(NFTNL_RULE_USERDATA)), let ud = nftnl_rule_get_data(r, attr(NFTNL_RULE_USERDATA), &len) {
            comment = commentFromUserdata(UnsafeRawBufferPointer(start: ud, count: Int(len)))
        }
        var packets: UInt64 = 0, bytes: UInt64 = 0
        let it = nftnl_expr_iter_create(r)
        while let e = nftnl_expr_iter_next(it) {
            if String(cString: nftnl_expr_get_str(e, attr(NFTNL_EXPR_NAME))) == "counter" {
                packets = nftnl_expr_get_u64(e, attr(NFTNL_EXPR_CTR_PACKETS))
                bytes = nftnl_expr_get_u64(e, attr(NFTNL_EXPR_CTR_BYTES))
            }
        }
        nftnl_expr_iter_destroy(it)
        return ObservedRule(handle: nftnl_rule_get_u64(r, attr(NFTNL_RULE_HANDLE)), comment: comment, packets: packets, bytes: bytes)
    }

    /// TLV userdata (type 0 = comment, NUL-terminated), parsed by hand with bounds checks.
    static func commentFromUserdata(_ b: UnsafeRawBufferPointer) -> String? {
        var off = 0
        while off + 2 <= b.count {
            let type = b[off], len = Int(b[off + 1])
            guard off + 2 + len <= b.count else { return nil }
            if type == UInt8(NFTNL_UDATA_RULE_COMMENT.rawValue) {
                return String(decoding: b[(off + 2)..<(off + 2 + len)].prefix { $0 != 0 }, as: UTF8.self)
            }
            off += 2 + len
        }
        return nil
    }

    struct RawSet { var name: String; var flags: UInt32 }

    func sets() throws -> [RawSet] {
        var out: [RawSet] = []
        let filterObj = NftBuild.set(spec, name: ""); let filter = filterObj.ptr; defer { filterObj.free(filter) }
        nftnl_set_unset(filter, attr(NFTNL_SET_NAME))
        for m in try dump(NFT_MSG_GETSET.rawValue, build: { nftnl_set_nlmsg_build_payload($0, filter) }) {
            let s = nftnl_set_alloc()!; defer { nftnl_set_free(s) }
            guard m.bytes.withUnsafeBytes({ nftnl_set_nlmsg_parse($0.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), s) }) >= 0 else { continue }
            guard isOurs(nftnl_set_get_str(s, attr(NFTNL_SET_TABLE)), nftnl_set_get_u32(s, attr(NFTNL_SET_FAMILY))) else { continue }
            out.append(RawSet(name: String(cString: nftnl_set_get_str(s, attr(NFTNL_SET_NAME))), flags: nftnl_set_get_u32(s, attr(NFTNL_SET_FLAGS))))
        }
        return out
    }

    /// Kernel elements of one set: (key, data, end flag), in kernel order.
    func elements(of name: String) throws -> [(key: [UInt8], data: [UInt8]?, end: Bool)] {
        var out: [(key: [UInt8], data: [UInt8]?, end: Bool)] = []
        let filterObj = NftBuild.set(spec, name: name); let filter = filterObj.ptr; defer { filterObj.free(filter) }
        for m in try dump(NFT_MSG_GETSETELEM.rawValue, build: { nftnl_set_elems_nlmsg_build_payload($0, filter) }) {
            let s = nftnl_set_alloc()!; defer { nftnl_set_free(s) }
            guard m.bytes.withUnsafeBytes({ nftnl_set_elems_nlmsg_parse($0.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), s) }) >= 0 else { continue }
            final class Sink { var out: [(key: [UInt8], data: [UInt8]?, end: Bool)] = [] }
            let sink = Sink()
            _ = nftnl_set_elem_foreach(s, { el, ctx in
                guard let el, let ctx else { return 0 }
                let sink = Unmanaged<Sink>.fromOpaque(ctx).takeUnretainedValue()
                var klen: UInt32 = 0, dlen: UInt32 = 0
                let k = nftnl_set_elem_get(el, attr(NFTNL_SET_ELEM_KEY), &klen)
                var data: [UInt8]?
                if nftnl_set_elem_is_set(el, attr(NFTNL_SET_ELEM_DATA)), let d = nftnl_set_elem_get(el, attr(NFTNL_SET_ELEM_DATA), &dlen) {
                    data = Array(UnsafeRawBufferPointer(start: d, count: Int(dlen)))
                }
                let flags = nftnl_set_elem_is_set(el, attr(NFTNL_SET_ELEM_FLAGS)) ? nftnl_set_elem_get_u32(el, attr(NFTNL_SET_ELEM_FLAGS)) : 0
                sink.out.append((k.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(klen))) } ?? [], data, flags & NFT.NFT_SET_ELEM_INTERVAL_END != 0))
                return 0
            }, Unmanaged.passUnretained(sink).toOpaque())
            withExtendedLifetime(sink) { out += sink.out }
        }
        return out
    }

    /// Entries of one set as an operator counts them (interval END elements not counted), without
    /// copying elements out.
    func entryCount(of name: String) throws -> Int {
        var count = 0
        let filterObj = NftBuild.set(spec, name: name); let filter = filterObj.ptr; defer { filterObj.free(filter) }
        for m in try dump(NFT_MSG_GETSETELEM.rawValue, build: { nftnl_set_elems_nlmsg_build_payload($0, filter) }) {
            let s = nftnl_set_alloc()!; defer { nftnl_set_free(s) }
            guard m.bytes.withUnsafeBytes({ nftnl_set_elems_nlmsg_parse($0.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), s) }) >= 0 else { continue }
            withUnsafeMutablePointer(to: &count) { ptr in
                _ = nftnl_set_elem_foreach(s, { el, ctx in
                    guard let el, let ctx else { return 0 }
                    let end = nftnl_set_elem_is_set(el, attr(NFTNL_SET_ELEM_FLAGS)) && nftnl_set_elem_get_u32(el, attr(NFTNL_SET_ELEM_FLAGS)) & NFT.NFT_SET_ELEM_INTERVAL_END != 0
                    if !end { ctx.assumingMemoryBound(to: Int.self).pointee += 1 }
                    return 0
                }, UnsafeMutableRawPointer(ptr))
            }
        }
        return count
    }

    /// The truth: table, chains with their rules and counters, sets with their entry counts.
    public func observe() throws -> ObservedTable {
        guard try tableExists() else { return ObservedTable(family: spec.family, name: spec.name, exists: false) }
        let rules = try rules()
        let chains = try chains().map { c in
            ObservedChain(name: c.name, hook: c.hook.map { $0 == NFT.NF_INET_PRE_ROUTING ? "prerouting" : $0 == NFT.NF_INET_POST_ROUTING ? "postrouting" : "hook\($0)" },
                          priority: c.prio, rules: rules.filter { $0.chain == c.name }.map(\.rule))
        }
        let sets = try sets().map { s in
            ObservedSet(name: s.name, isMap: s.flags & NFT.NFT_SET_MAP != 0, isInterval: s.flags & NFT.NFT_SET_INTERVAL != 0,
                        entries: try entryCount(of: s.name))
        }
        return ObservedTable(family: spec.family, name: spec.name, exists: true, chains: chains, sets: sets)
    }

    // MARK: - Apply

    /// Makes the table hold exactly `plan`, in one atomic batch. Parts that already match are left
    /// alone (rules keep their handles and counters; sets with the wanted elements are not
    /// touched); if everything matches, nothing is sent. A failing batch changes nothing.
    @discardableResult
    public func apply(_ plan: TablePlan) throws -> ApplyReport {
        precondition(plan.spec == spec)
        let exists = try tableExists()
        let haveChains = exists ? try chains() : []
        let haveRules = exists ? try rules() : []
        let haveSets = exists ? try sets() : []

        let batch = NftBatch(socket: socket)
        if !exists {
            batch.add(NFT_MSG_NEWTABLE.rawValue.asInt32, flags: NL.NLM_F_CREATE, context: "create table inet \(spec.name)") { nlh in
                NftBuild.table(spec).using { nftnl_table_nlmsg_build_payload(nlh, $0) }
            }
        }
        for c in plan.chains {
            if let have = haveChains.first(where: { $0.name == c.name }) {
                let wantHook = c.hook == .prerouting ? NFT.NF_INET_PRE_ROUTING : NFT.NF_INET_POST_ROUTING
                if have.hook != wantHook || have.prio != c.priority {
                    throw NetlinkError(.protocolViolation, "chain \(spec.name)/\(c.name) exists with hook \(have.hook.map(String.init) ?? "none") priority \(have.prio.map(String.init) ?? "none"), expected hook \(wantHook) priority \(c.priority): run relay-helper --cleanup, then apply again", context: "check chain \(c.name)")
                }
                continue
            }
            batch.add(NFT_MSG_NEWCHAIN.rawValue.asInt32, flags: NL.NLM_F_CREATE, context: "create chain \(c.name)") { nlh in
                NftBuild.chain(spec, c, name: c.name).using { nftnl_chain_nlmsg_build_payload(nlh, $0) }
            }
        }
        // Chains whose rules differ from the plan are flushed and rewritten (in this same batch).
        var rewrite: [TablePlan.Chain] = []
        for c in plan.chains {
            let have = haveRules.filter { $0.chain == c.name }.map { $0.rule.comment ?? "" }
            if have != c.rules.map(\.tag) { rewrite.append(c) }
        }
        let unwantedChains = haveChains.filter { h in !plan.chains.contains { $0.name == h.name } }
        for c in rewrite.map(\.name) + unwantedChains.map(\.name) where haveChains.contains(where: { $0.name == c }) {
            batch.add(NFT_MSG_DELRULE.rawValue.asInt32, flags: 0, context: "flush chain \(c)") { nlh in
                let r = nftnl_rule_alloc()!; defer { nftnl_rule_free(r) }
                nftnl_rule_set_str(r, attr(NFTNL_RULE_TABLE), spec.name)
                nftnl_rule_set_str(r, attr(NFTNL_RULE_CHAIN), c)
                nftnl_rule_set_u32(r, attr(NFTNL_RULE_FAMILY), UInt32(NFT.NFPROTO_INET))
                nftnl_rule_nlmsg_build_payload(nlh, r)
            }
        }
        var replaced: [String] = []
        var changedElements = 0
        for s in plan.sets {
            let want = NftBuild.elements(s)
            if let haveSet = haveSets.first(where: { $0.name == s.name }), haveSet.flags == NftBuild.setFlags(s.kind) {
                // Element-level diff: only what differs is deleted and added, in this same batch
                // (large maps with a few changes stay cheap; untouched elements never vanish).
                let have = try elements(of: s.name)
                let (del, add) = NftablesTable.elementDiff(have: have, want: want)
                if del.isEmpty && add.isEmpty { continue }
                NftBuild.elementMessages(batch, spec, name: s.name, del, delete: true)
                NftBuild.elementMessages(batch, spec, name: s.name, add, delete: false)
                changedElements += del.count + add.count
            } else {
                if haveSets.contains(where: { $0.name == s.name }) {
                    // Same name, other kind: only possible after a manual edit. Replace it.
                    batch.add(NFT_MSG_DELSET.rawValue.asInt32, flags: 0, context: "delete set \(s.name) of another kind") { nlh in
                        NftBuild.set(spec, name: s.name).using { nftnl_set_nlmsg_build_payload(nlh, $0) }
                    }
                }
                let id = batch.allocSetID()
                batch.add(NFT_MSG_NEWSET.rawValue.asInt32, flags: NL.NLM_F_CREATE, context: "create \(s.kind == .prefixSet ? "set" : "map") \(s.name)") { nlh in
                    NftBuild.set(spec, name: s.name, family: s.family, kind: s.kind, id: id).using { nftnl_set_nlmsg_build_payload(nlh, $0) }
                }
                NftBuild.elementMessages(batch, spec, name: s.name, want[...], delete: false)
                changedElements += want.count
            }
            replaced.append(s.name)
        }
        for c in rewrite {
            for r in c.rules {
                batch.add(NFT_MSG_NEWRULE.rawValue.asInt32, flags: NL.NLM_F_CREATE | 0x800 /* NLM_F_APPEND */, context: "add rule to \(c.name): \(r.text)") { nlh in
                    NftBuild.rule(spec, chain: c.name, r).using { nftnl_rule_nlmsg_build_payload(nlh, $0) }
                }
            }
        }
        let unwantedSets = haveSets.filter { h in !plan.sets.contains { $0.name == h.name } }
        for s in unwantedSets {
            batch.add(NFT_MSG_DELSET.rawValue.asInt32, flags: 0, context: "delete set \(s.name)") { nlh in
                NftBuild.set(spec, name: s.name).using { nftnl_set_nlmsg_build_payload(nlh, $0) }
            }
        }
        for c in unwantedChains {
            batch.add(NFT_MSG_DELCHAIN.rawValue.asInt32, flags: 0, context: "delete chain \(c.name)") { nlh in
                NftBuild.chain(spec, nil, name: c.name).using { nftnl_chain_nlmsg_build_payload(nlh, $0) }
            }
        }
        let report = ApplyReport(changed: batch.messageCount > 0, messages: batch.messageCount, bytes: batch.buffer.length,
                                 rewrittenChains: rewrite.map(\.name), replacedSets: replaced, removedSets: unwantedSets.map(\.name),
                                 changedElements: changedElements)
        try batch.commit()
        return report
    }

    typealias Element = (key: [UInt8], data: [UInt8]?, end: Bool)

    /// Elements to delete (in `have`, not wanted) and to add (wanted, not in `have`).
    static func elementDiff(have: [Element], want: [Element]) -> (delete: ArraySlice<Element>, add: ArraySlice<Element>) {
        func k(_ e: Element) -> [UInt8] { e.key + [e.end ? 1 : 0] + (e.data ?? []) }
        let haveKeys = Set(have.map(k)), wantKeys = Set(want.map(k))
        // In nft's order: ascending keys, an END before a start with the same key (the kernel's
        // interval tree finds elements to deactivate reliably only in this order).
        func ordered(_ x: [Element]) -> ArraySlice<Element> {
            x.sorted { $0.key.lexicographicallyPrecedes($1.key) || ($0.key == $1.key && $0.end && !$1.end) }[...]
        }
        return (ordered(have.filter { !wantKeys.contains(k($0)) }), ordered(want.filter { !haveKeys.contains(k($0)) }))
    }

    /// The NAT state the kernel holds in this table, decoded from its sets (the inverse of
    /// `TablePlan`). Elements that do not decode (a manual edit) are reported, not guessed.
    public func readNATState() throws -> (state: NATState, undecodable: [String]) {
        var st = NATState()
        var bad: [String] = []
        guard try tableExists() else { return (st, bad) }
        for set in try sets() {
            let fam: IPFamily = set.name.hasSuffix("6") ? .ipv6 : .ipv4
            let base = String(set.name.dropLast())
            func ip(_ b: [UInt8]) -> IPAddress? {
                if fam == .ipv4, b.count == 4 { return .v4(IPv4Address(b[0], b[1], b[2], b[3])) }
                if fam == .ipv6, b.count == 16 { return IPv6Address(bytes: b).map { .v6($0) } }
                return nil
            }
            let elems = try elements(of: set.name)
            switch base {
            case "dnatx", "snatx":
                for e in elems {
                    guard let k = ip(e.key), let d = e.data.flatMap(ip) else { bad.append("\(set.name): element of \(e.key.count) bytes"); continue }
                    if base == "dnatx" { st.dnatExact.append(AddressMapping(k, d)) } else { st.snatExact.append(AddressMapping(k, d)) }
                }
            case "dnat", "snat", "remote":
                // Sort by key, END before a start with the same key (adjacent intervals).
                let sorted = elems.sorted { $0.key.lexicographicallyPrecedes($1.key) || ($0.key == $1.key && $0.end && !$1.end) }
                for (i, e) in sorted.enumerated() where !e.end {
                    guard let start = ip(e.key) else { bad.append("\(set.name): bad key"); continue }
                    let end = sorted[(i + 1)...].first { $0.end }.flatMap { ip($0.key) }
                    guard let match = IPPrefix(start: start, endExclusive: end) else {
                        bad.append("\(set.name): \(start)-\(end.map { "\($0)" } ?? "top") is not a prefix"); continue
                    }
                    if base == "remote" { st.remote.append(match); continue }
                    guard let d = e.data, d.count == e.key.count * 2, let t = ip(Array(d.prefix(e.key.count))) else {
                        bad.append("\(set.name): \(match) has no translation"); continue
                    }
                    let translate = IPPrefix(network: t, length: match.length)
                    if base == "dnat" { st.dnat.append(PrefixMapping(match, translate)) } else { st.snat.append(PrefixMapping(match, translate)) }
                }
            default:
                bad.append("unknown set \(set.name)")
            }
        }
        return (st, bad)
    }

    /// Deletes the whole table (and only it). No-op when it does not exist.
    @discardableResult
    public func delete() throws -> Bool {
        guard try tableExists() else { return false }
        let batch = NftBatch(socket: socket)
        batch.add(NFT_MSG_DELTABLE.rawValue.asInt32, flags: 0, context: "delete table inet \(spec.name)") { nlh in
            NftBuild.table(spec).using { nftnl_table_nlmsg_build_payload(nlh, $0) }
        }
        try batch.commit()
        return true
    }
}

import CNetfilter
import RelayCore
import RelayNetlink
#if canImport(Glibc)
import Glibc
#endif

@inline(__always) func attr<T: RawRepresentable>(_ x: T) -> UInt16 where T.RawValue: BinaryInteger { UInt16(x.rawValue) }
@inline(__always) func attr(_ x: Int) -> UInt16 { UInt16(x) }
@inline(__always) func attr(_ x: Int32) -> UInt16 { UInt16(x) }

/// Kernel and nft constants under their own names (linux/netfilter/nf_tables.h, nft's datatype.h).
enum NFT {
    static let NFPROTO_INET: UInt16 = 1
    static let NFPROTO_IPV4: UInt32 = 2
    static let NFPROTO_IPV6: UInt32 = 10
    static let TYPE_IPADDR: UInt32 = 7      // nft datatype ipv4_addr
    static let TYPE_IP6ADDR: UInt32 = 8     // nft datatype ipv6_addr
    static let BYTEORDER_BIG_ENDIAN: UInt32 = 2
    static let NFT_SET_INTERVAL: UInt32 = 0x4
    static let NFT_SET_MAP: UInt32 = 0x8
    static let NFT_SET_ELEM_INTERVAL_END: UInt32 = 0x1
    static let NFT_REG_1: UInt32 = 1
    static let NFT_REG_2: UInt32 = 2
    static let NFT_REG32_01: UInt32 = 9
    static let NFT_META_NFPROTO: UInt32 = 15
    static let NFT_CMP_EQ: UInt32 = 0
    static let NFT_PAYLOAD_NETWORK_HEADER: UInt32 = 1
    static let NFT_NAT_SNAT: UInt32 = 0
    static let NFT_NAT_DNAT: UInt32 = 1
    static let NF_NAT_RANGE_NETMAP: UInt32 = 0x40
    static let NF_ACCEPT: UInt32 = 1
    static let NFT_JUMP: Int32 = -3
    static let NFT_REG_VERDICT: UInt32 = 0
    static let NFT_META_IIFNAME: UInt32 = 6
    static let NFT_CMP_NEQ: UInt32 = 1
    static let NFT_CT_STATUS: UInt32 = 2
    /// enum ip_conntrack_status: the connection's destination was translated (host byte order).
    static let IPS_DST_NAT: UInt32 = 1 << 5
    static let NFT_META_OIFNAME: UInt32 = 7
    static let NF_INET_PRE_ROUTING: UInt32 = 0
    static let NF_INET_POST_ROUTING: UInt32 = 4
}

/// Growable byte buffer holding consecutive netlink messages of one batch.
final class MessageBuffer {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    private(set) var length = 0

    init(capacity: Int = 1 << 16) {
        self.capacity = capacity
        base = .allocate(byteCount: capacity, alignment: 16)
    }
    deinit { base.deallocate() }

    /// Where the next message goes, with at least `room` bytes zeroed behind it.
    func tail(room: Int = 1 << 17) -> UnsafeMutablePointer<CChar> {
        if length + room > capacity {
            var newCap = capacity * 2
            while length + room > newCap { newCap *= 2 }
            let nb = UnsafeMutableRawPointer.allocate(byteCount: newCap, alignment: 16)
            nb.copyMemory(from: base, byteCount: length)
            base.deallocate()
            base = nb
            capacity = newCap
        }
        memset(base + length, 0, room)
        return (base + length).assumingMemoryBound(to: CChar.self)
    }

    /// Accepts the message just built at `tail()`.
    func commit(_ nlh: UnsafeMutablePointer<nlmsghdr>) {
        length += NL.align(Int(nlh.pointee.nlmsg_len))
    }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: length) }
}

/// One nftables transaction under construction: BEGIN, messages, END; every message asks for an
/// ack and remembers what it was doing so that a kernel error names the object it is about.
final class NftBatch {
    let buffer = MessageBuffer()
    let socket: NetlinkSocket
    private(set) var seq: UInt32
    private(set) var contexts: [UInt32: String] = [:]
    private(set) var messageCount = 0
    private var nextSetID: UInt32 = 1

    init(socket: NetlinkSocket) {
        self.socket = socket
        seq = socket.reserveSequence(1 << 20)
        let nlh = nftnl_batch_begin(buffer.tail(), seq)!
        buffer.commit(nlh)
        seq &+= 1
    }

    func allocSetID() -> UInt32 { defer { nextSetID += 1 }; return nextSetID }

    /// Builds one message: header via libnftnl, payload via `build`.
    func add(_ type: Int32, flags: UInt16, context: String, room: Int = 1 << 17, family: UInt16 = NFT.NFPROTO_INET,
             _ build: (UnsafeMutablePointer<nlmsghdr>) -> Void) {
        let nlh = nftnl_nlmsg_build_hdr(buffer.tail(room: room), UInt16(type), family,
                                        flags | NL.NLM_F_ACK, seq)!
        build(nlh)
        buffer.commit(nlh)
        contexts[seq] = context
        seq &+= 1
        messageCount += 1
    }

    /// Ends the batch, sends it in one sendto and waits for every ack. Throws the first error,
    /// with the failing message's context. The kernel applies all or nothing.
    func commit() throws {
        let nlh = nftnl_batch_end(buffer.tail(), seq)!
        buffer.commit(nlh)
        guard messageCount > 0 else { return }
        try socket.send(buffer.bytes)
        if let (failedSeq, err) = try socket.collectAcks(expected: Set(contexts.keys)) {
            var e = err
            e.context = contexts[failedSeq] ?? "nftables batch"
            throw e
        }
    }
}

/// A libnftnl object with the function that frees it. Used only inside `using`, so that its
/// lifetime visibly covers every C call made with it (a Swift object may otherwise be released
/// right after its last Swift use, before the C call that uses its pointer has finished).
struct NftObject {
    let ptr: OpaquePointer
    let free: (OpaquePointer) -> Void
    init(_ ptr: OpaquePointer, free: @escaping (OpaquePointer) -> Void) { self.ptr = ptr; self.free = free }
    func using<R>(_ body: (OpaquePointer) throws -> R) rethrows -> R {
        defer { free(ptr) }
        return try body(ptr)
    }
}

enum NftBuild {
    static func table(_ spec: TableSpec) -> NftObject {
        let t = NftObject(nftnl_table_alloc()!, free: nftnl_table_free)
        nftnl_table_set_str(t.ptr, attr(NFTNL_TABLE_NAME), spec.name)
        nftnl_table_set_u32(t.ptr, attr(NFTNL_TABLE_FAMILY), UInt32(NFT.NFPROTO_INET))
        return t
    }

    static func chain(_ spec: TableSpec, _ c: TablePlan.Chain?, name: String) -> NftObject {
        let ch = NftObject(nftnl_chain_alloc()!, free: nftnl_chain_free)
        nftnl_chain_set_str(ch.ptr, attr(NFTNL_CHAIN_TABLE), spec.name)
        nftnl_chain_set_str(ch.ptr, attr(NFTNL_CHAIN_NAME), name)
        nftnl_chain_set_u32(ch.ptr, attr(NFTNL_CHAIN_FAMILY), UInt32(NFT.NFPROTO_INET))
        if let c {
            nftnl_chain_set_u32(ch.ptr, attr(NFTNL_CHAIN_HOOKNUM), c.hook == .prerouting ? NFT.NF_INET_PRE_ROUTING : NFT.NF_INET_POST_ROUTING)
            nftnl_chain_set_s32(ch.ptr, attr(NFTNL_CHAIN_PRIO), c.priority)
            nftnl_chain_set_str(ch.ptr, attr(NFTNL_CHAIN_TYPE), "nat")
            nftnl_chain_set_u32(ch.ptr, attr(NFTNL_CHAIN_POLICY), NFT.NF_ACCEPT)
        }
        return ch
    }

    static func set(_ spec: TableSpec, name: String, family: IPFamily? = nil, kind: TablePlan.SetKind? = nil, id: UInt32? = nil) -> NftObject {
        let s = NftObject(nftnl_set_alloc()!, free: nftnl_set_free)
        nftnl_set_set_str(s.ptr, attr(NFTNL_SET_TABLE), spec.name)
        nftnl_set_set_str(s.ptr, attr(NFTNL_SET_NAME), name)
        nftnl_set_set_u32(s.ptr, attr(NFTNL_SET_FAMILY), UInt32(NFT.NFPROTO_INET))
        if let family, let kind {
            let (type, len): (UInt32, UInt32) = family == .ipv4 ? (NFT.TYPE_IPADDR, 4) : (NFT.TYPE_IP6ADDR, 16)
            nftnl_set_set_u32(s.ptr, attr(NFTNL_SET_KEY_TYPE), type)
            nftnl_set_set_u32(s.ptr, attr(NFTNL_SET_KEY_LEN), len)
            var flags: UInt32 = 0
            let udata = nftnl_udata_buf_alloc(64)!
            defer { nftnl_udata_buf_free(udata) }
            nftnl_udata_put_u32(udata, UInt8(NFTNL_UDATA_SET_KEYBYTEORDER.rawValue), NFT.BYTEORDER_BIG_ENDIAN)
            switch kind {
            case .prefixMap:
                flags = NFT.NFT_SET_MAP | NFT.NFT_SET_INTERVAL
                nftnl_set_set_u32(s.ptr, attr(NFTNL_SET_DATA_TYPE), type)
                nftnl_set_set_u32(s.ptr, attr(NFTNL_SET_DATA_LEN), len * 2)
                nftnl_udata_put_u32(udata, UInt8(NFTNL_UDATA_SET_DATABYTEORDER.rawValue), NFT.BYTEORDER_BIG_ENDIAN)
                nftnl_udata_put_u32(udata, UInt8(NFTNL_UDATA_SET_DATA_INTERVAL.rawValue), 1)
            case .exactMap:
                flags = NFT.NFT_SET_MAP
                nftnl_set_set_u32(s.ptr, attr(NFTNL_SET_DATA_TYPE), type)
                nftnl_set_set_u32(s.ptr, attr(NFTNL_SET_DATA_LEN), len)
                nftnl_udata_put_u32(udata, UInt8(NFTNL_UDATA_SET_DATABYTEORDER.rawValue), NFT.BYTEORDER_BIG_ENDIAN)
            case .prefixSet:
                flags = NFT.NFT_SET_INTERVAL
            }
            nftnl_set_set_u32(s.ptr, attr(NFTNL_SET_FLAGS), flags)
            nftnl_set_set_data(s.ptr, attr(NFTNL_SET_USERDATA), nftnl_udata_buf_data(udata), nftnl_udata_buf_len(udata))
        }
        if let id { nftnl_set_set_u32(s.ptr, attr(NFTNL_SET_ID), id) }
        return s
    }

    /// The kernel elements of one planned set, in nft's encoding: interval maps and sets as start
    /// elements plus INTERVAL_END elements (and a leading 0/END, like nft).
    static func elements(_ p: TablePlan.PlannedSet) -> [(key: [UInt8], data: [UInt8]?, end: Bool)] {
        var out: [(key: [UInt8], data: [UInt8]?, end: Bool)] = []
        switch p.kind {
        case .exactMap:
            out.reserveCapacity(p.addresses.count)
            for (k, v) in p.addresses { out.append((k.bytes, v.bytes, false)) }
        case .prefixMap, .prefixSet:
            out.reserveCapacity(p.prefixes.count * 2 + 1)
            let zero = [UInt8](repeating: 0, count: p.family == .ipv4 ? 4 : 16)
            if let first = p.prefixes.first, first.0.address.bytes != zero { out.append((zero, nil, true)) }
            for (match, translate) in p.prefixes {
                out.append((match.address.bytes, translate.map { $0.address.bytes + $0.lastAddress.bytes }, false))
                // Always an END element, also when the next interval starts there (nft does the same;
                // the kernel refuses two consecutive starts as an overlap).
                if let end = match.endExclusive { out.append((end.bytes, nil, true)) }
            }
        }
        return out
    }

    static func setFlags(_ kind: TablePlan.SetKind) -> UInt32 {
        switch kind {
        case .prefixMap: return NFT.NFT_SET_MAP | NFT.NFT_SET_INTERVAL
        case .exactMap: return NFT.NFT_SET_MAP
        case .prefixSet: return NFT.NFT_SET_INTERVAL
        }
    }

    /// NEWSETELEM (or DELSETELEM) messages for `elems`, `chunk` per message.
    static func elementMessages(_ batch: NftBatch, _ spec: TableSpec, name: String, _ elems: ArraySlice<(key: [UInt8], data: [UInt8]?, end: Bool)>,
                                delete: Bool, chunk: Int = 512) {
        var i = elems.startIndex
        while i < elems.endIndex {
            let upper = min(i + chunk, elems.endIndex)
            set(spec, name: name).using { sp in
                for e in elems[i..<upper] {
                    let el = nftnl_set_elem_alloc()!
                    e.key.withUnsafeBytes { _ = nftnl_set_elem_set(el, attr(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count)) }
                    if let d = e.data, !delete {
                        d.withUnsafeBytes { _ = nftnl_set_elem_set(el, attr(NFTNL_SET_ELEM_DATA), $0.baseAddress, UInt32($0.count)) }
                    }
                    if e.end { nftnl_set_elem_set_u32(el, attr(NFTNL_SET_ELEM_FLAGS), NFT.NFT_SET_ELEM_INTERVAL_END) }
                    nftnl_set_elem_add(sp, el)  // the set owns it now
                }
                let what = delete ? "delete" : "add"
                batch.add((delete ? NFT_MSG_DELSETELEM : NFT_MSG_NEWSETELEM).rawValue.asInt32, flags: delete ? 0 : NL.NLM_F_CREATE,
                          context: "\(what) elements \(i - elems.startIndex)..<\(upper - elems.startIndex) of \(name)") { nlh in
                    nftnl_set_elems_nlmsg_build_payload(nlh, sp)
                }
            }
            i = upper
        }
    }

    static func rule(_ spec: TableSpec, chain: String, _ r: TablePlan.Rule) -> NftObject {
        let rl = NftObject(nftnl_rule_alloc()!, free: nftnl_rule_free)
        nftnl_rule_set_str(rl.ptr, attr(NFTNL_RULE_TABLE), spec.name)
        nftnl_rule_set_str(rl.ptr, attr(NFTNL_RULE_CHAIN), chain)
        nftnl_rule_set_u32(rl.ptr, attr(NFTNL_RULE_FAMILY), UInt32(NFT.NFPROTO_INET))

        func add(_ name: String, _ configure: (OpaquePointer) -> Void) {
            let e = nftnl_expr_alloc(name)!
            configure(e)
            nftnl_rule_add_expr(rl.ptr, e)
        }
        func nfproto(_ f: IPFamily) {
            add("meta") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_KEY), NFT.NFT_META_NFPROTO)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_DREG), NFT.NFT_REG_1)
            }
            add("cmp") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_CMP_SREG), NFT.NFT_REG_1)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_CMP_OP), NFT.NFT_CMP_EQ)
                nftnl_expr_set_u8($0, attr(NFTNL_EXPR_CMP_DATA), UInt8(f == .ipv4 ? NFT.NFPROTO_IPV4 : NFT.NFPROTO_IPV6))
            }
        }
        func load(_ f: IPFamily, daddr: Bool) {
            add("payload") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_PAYLOAD_DREG), NFT.NFT_REG_1)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_PAYLOAD_BASE), NFT.NFT_PAYLOAD_NETWORK_HEADER)
                let off: UInt32 = f == .ipv4 ? (daddr ? 16 : 12) : (daddr ? 24 : 8)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_PAYLOAD_OFFSET), off)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_PAYLOAD_LEN), f == .ipv4 ? 4 : 16)
            }
        }
        func lookup(_ set: String, map: Bool) {
            add("lookup") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_LOOKUP_SREG), NFT.NFT_REG_1)
                nftnl_expr_set_str($0, attr(NFTNL_EXPR_LOOKUP_SET), set)
                if map { nftnl_expr_set_u32($0, attr(NFTNL_EXPR_LOOKUP_DREG), NFT.NFT_REG_1) }
            }
        }
        func nat(_ f: IPFamily, dnat: Bool, prefix: Bool) {
            add("nat") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_NAT_TYPE), dnat ? NFT.NFT_NAT_DNAT : NFT.NFT_NAT_SNAT)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_NAT_FAMILY), f == .ipv4 ? NFT.NFPROTO_IPV4 : NFT.NFPROTO_IPV6)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_NAT_REG_ADDR_MIN), NFT.NFT_REG_1)
                if prefix {
                    nftnl_expr_set_u32($0, attr(NFTNL_EXPR_NAT_REG_ADDR_MAX), f == .ipv4 ? NFT.NFT_REG32_01 : NFT.NFT_REG_2)
                    nftnl_expr_set_u32($0, attr(NFTNL_EXPR_NAT_FLAGS), NFT.NF_NAT_RANGE_NETMAP)
                }
            }
        }
        switch r {
        case .dnatPrefix(let f, let m, let dev), .dnatExact(let f, let m, let dev):
            let prefix: Bool = { if case .dnatPrefix = r { return true }; return false }()
            // iifname "dev*": a wildcard compares the name's first bytes (no NUL).
            add("meta") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_KEY), NFT.NFT_META_IIFNAME)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_DREG), NFT.NFT_REG_1)
            }
            add("cmp") { e in
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_CMP_SREG), NFT.NFT_REG_1)
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_CMP_OP), NFT.NFT_CMP_EQ)
                Array(dev.utf8).withUnsafeBytes { _ = nftnl_expr_set(e, attr(NFTNL_EXPR_CMP_DATA), $0.baseAddress, UInt32($0.count)) }
            }
            nfproto(f); load(f, daddr: true); lookup(m, map: false)
            add("counter") { _ in }
            load(f, daddr: true); lookup(m, map: true)
            nat(f, dnat: true, prefix: prefix)
        case .snatPrefix(let f, let m, let remote), .snatExact(let f, let m, let remote):
            let prefix: Bool = { if case .snatPrefix = r { return true }; return false }()
            nfproto(f); load(f, daddr: true); lookup(remote, map: false)
            load(f, daddr: false); lookup(m, map: false)
            add("counter") { _ in }
            load(f, daddr: false); lookup(m, map: true)
            nat(f, dnat: false, prefix: prefix)
        }
        let udata = nftnl_udata_buf_alloc(256)!
        defer { nftnl_udata_buf_free(udata) }
        nftnl_udata_put_strz(udata, UInt8(NFTNL_UDATA_RULE_COMMENT.rawValue), r.tag)
        nftnl_rule_set_data(rl.ptr, attr(NFTNL_RULE_USERDATA), nftnl_udata_buf_data(udata), nftnl_udata_buf_len(udata))
        return rl
    }
}

extension UInt32 { var asInt32: Int32 { Int32(bitPattern: self) } }

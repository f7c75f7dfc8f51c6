import CNetfilter
import RelayCore
import RelayNetlink
#if canImport(Glibc)
import Glibc
#endif

/// Opt-in integration with an operator's firewall (Tailscale linuxfw style): in each named existing
/// chain, ONE counted jump (tagged `relay:integration`, inserted first) into a chain the helper owns
/// in that same table, which accepts traffic in or out of the helper's devices. Cleanup removes
/// exactly that jump and that chain; nothing else in the operator's table is touched.
public struct IntegrationPoint: Sendable, Equatable, Codable, CustomStringConvertible {
    public var family: String   // inet, ip, ip6
    public var table: String
    public var chain: String
    public init(family: String, table: String, chain: String) { self.family = family; self.table = table; self.chain = chain }

    /// Parses "inet filter forward".
    public init?(_ text: String) {
        let parts = text.split(separator: " ").map(String.init)
        guard parts.count == 3, ["inet", "ip", "ip6"].contains(parts[0]),
              parts[1].count <= 64, parts[2].count <= 64,
              (parts[1] + parts[2]).unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" || $0 == ".") })
        else { return nil }
        family = parts[0]; table = parts[1]; chain = parts[2]
    }
    public var description: String { "\(family) \(table) \(chain)" }
    var nfproto: UInt16 { family == "inet" ? NFT.NFPROTO_INET : family == "ip" ? UInt16(NFT.NFPROTO_IPV4) : UInt16(NFT.NFPROTO_IPV6) }
}

public struct Integration: Sendable {
    public static let jumpTag = "relay:integration"
    public static let acceptTagPrefix = "relay:accept"
    public let point: IntegrationPoint
    /// The helper's chain inside the operator's table.
    public let ownChain: String
    /// Device-name prefix whose traffic the own chain accepts (iifname/oifname "<prefix>*").
    public let devicePrefix: String

    public init(point: IntegrationPoint, ownChain: String, devicePrefix: String) {
        self.point = point; self.ownChain = ownChain; self.devicePrefix = devicePrefix
    }

    /// The rules, as `nft` text (for `relayctl explain` and for operators who include it themselves).
    public func render() -> String {
        """
        table \(point.family) \(point.table) {
        \tchain \(ownChain) {
        \t\tiifname "\(devicePrefix)*" ct status dnat counter accept comment "\(Integration.acceptTagPrefix):in-dnat"
        \t\toifname "\(devicePrefix)*" counter accept comment "\(Integration.acceptTagPrefix):out"
        \t}
        }
        insert rule \(point.family) \(point.table) \(point.chain) counter jump \(ownChain) comment "\(Integration.jumpTag)"

        """
    }
}

extension NftablesTable {
    typealias ForeignRule = ObservedRule

    func foreignChainExists(_ p: IntegrationPoint, chain: String) throws -> Bool {
        let c = nftnl_chain_alloc()!; defer { nftnl_chain_free(c) }
        nftnl_chain_set_str(c, attr(NFTNL_CHAIN_TABLE), p.table)
        nftnl_chain_set_u32(c, attr(NFTNL_CHAIN_FAMILY), UInt32(p.nfproto))
        for m in try dump(NFT_MSG_GETCHAIN.rawValue, family: p.nfproto, build: { nftnl_chain_nlmsg_build_payload($0, c) }) {
            let r = nftnl_chain_alloc()!; defer { nftnl_chain_free(r) }
            guard m.bytes.withUnsafeBytes({ nftnl_chain_nlmsg_parse($0.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), r) }) >= 0 else { continue }
            if String(cString: nftnl_chain_get_str(r, attr(NFTNL_CHAIN_TABLE))) == p.table,
               String(cString: nftnl_chain_get_str(r, attr(NFTNL_CHAIN_NAME))) == chain,
               nftnl_chain_get_u32(r, attr(NFTNL_CHAIN_FAMILY)) == UInt32(p.nfproto) { return true }
        }
        return false
    }

    func foreignRules(_ p: IntegrationPoint, chain: String) throws -> [ForeignRule] {
        let f = nftnl_rule_alloc()!; defer { nftnl_rule_free(f) }
        nftnl_rule_set_str(f, attr(NFTNL_RULE_TABLE), p.table)
        nftnl_rule_set_str(f, attr(NFTNL_RULE_CHAIN), chain)
        nftnl_rule_set_u32(f, attr(NFTNL_RULE_FAMILY), UInt32(p.nfproto))
        var out: [ForeignRule] = []
        let msgs: [NetlinkMessage]
        do { msgs = try dump(NFT_MSG_GETRULE.rawValue, family: p.nfproto, build: { nftnl_rule_nlmsg_build_payload($0, f) }) } catch let e as NetlinkError where e.errno == ENOENT {
            return []
        }
        for m in msgs {
            let r = nftnl_rule_alloc()!; defer { nftnl_rule_free(r) }
            guard m.bytes.withUnsafeBytes({ nftnl_rule_nlmsg_parse($0.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), r) }) >= 0 else { continue }
            guard String(cString: nftnl_rule_get_str(r, attr(NFTNL_RULE_TABLE))) == p.table,
                  String(cString: nftnl_rule_get_str(r, attr(NFTNL_RULE_CHAIN))) == chain else { continue }
            out.append(NftablesTable.summary(r))
        }
        return out
    }

    func integrationRule(_ i: Integration, chain: String, comment: String, build: (OpaquePointer, (String, (OpaquePointer) -> Void) -> Void) -> Void) -> NftObject {
        let rl = NftObject(nftnl_rule_alloc()!, free: nftnl_rule_free)
        nftnl_rule_set_str(rl.ptr, attr(NFTNL_RULE_TABLE), i.point.table)
        nftnl_rule_set_str(rl.ptr, attr(NFTNL_RULE_CHAIN), chain)
        nftnl_rule_set_u32(rl.ptr, attr(NFTNL_RULE_FAMILY), UInt32(i.point.nfproto))
        build(rl.ptr) { name, configure in
            let e = nftnl_expr_alloc(name)!
            configure(e)
            nftnl_rule_add_expr(rl.ptr, e)
        }
        let udata = nftnl_udata_buf_alloc(256)!
        defer { nftnl_udata_buf_free(udata) }
        nftnl_udata_put_strz(udata, UInt8(NFTNL_UDATA_RULE_COMMENT.rawValue), comment)
        nftnl_rule_set_data(rl.ptr, attr(NFTNL_RULE_USERDATA), nftnl_udata_buf_data(udata), nftnl_udata_buf_len(udata))
        return rl
    }

    /// What the integration point holds now (the jump's counters), nil when the jump is absent.
    public func observeIntegration(_ i: Integration) throws -> ObservedJump? {
        guard let j = try foreignRules(i.point, chain: i.point.chain).first(where: { $0.comment == Integration.jumpTag }) else { return nil }
        return ObservedJump(from: i.point.description, target: i.ownChain, packets: j.packets, bytes: j.bytes)
    }

    /// Makes the integration point hold exactly one jump and the own chain its two rules.
    /// The operator's chain must exist (the helper never creates or edits the operator's chains).
    @discardableResult
    public func ensureIntegration(_ i: Integration) throws -> Bool {
        guard try foreignChainExists(i.point, chain: i.point.chain) else {
            throw NetlinkError(.kernel, errno: ENOENT, "chain \(i.point) does not exist: create it in your firewall, or remove it from [integration] chains in the helper's policy",
                               context: "integration")
        }
        let ownExists = try foreignChainExists(i.point, chain: i.ownChain)
        let ownRules = ownExists ? try foreignRules(i.point, chain: i.ownChain) : []
        let jumps = try foreignRules(i.point, chain: i.point.chain).filter { $0.comment == Integration.jumpTag }
        let wantTags = ["\(Integration.acceptTagPrefix):in-dnat", "\(Integration.acceptTagPrefix):out"]
        let ownOK = ownRules.map { $0.comment ?? "" } == wantTags
        if ownOK && jumps.count == 1 { return false }

        let batch = NftBatch(socket: socket)
        let p = i.point
        func chainObj(_ name: String) -> NftObject {
            let ch = NftObject(nftnl_chain_alloc()!, free: nftnl_chain_free)
            nftnl_chain_set_str(ch.ptr, attr(NFTNL_CHAIN_TABLE), p.table)
            nftnl_chain_set_str(ch.ptr, attr(NFTNL_CHAIN_NAME), name)
            nftnl_chain_set_u32(ch.ptr, attr(NFTNL_CHAIN_FAMILY), UInt32(p.nfproto))
            return ch
        }
        if !ownExists {
            batch.add(NFT_MSG_NEWCHAIN.rawValue.asInt32, flags: NL.NLM_F_CREATE, context: "create chain \(p.family) \(p.table) \(i.ownChain)", family: p.nfproto) { nlh in
                chainObj(i.ownChain).using { nftnl_chain_nlmsg_build_payload(nlh, $0) }
            }
        }
        if !ownOK {
            for r in ownRules {
                batch.add(NFT_MSG_DELRULE.rawValue.asInt32, flags: 0, context: "delete rule \(r.handle) of \(i.ownChain)", family: p.nfproto) { nlh in
                    let o = integrationRule(i, chain: i.ownChain, comment: "", build: { _, _ in }); o.using { ptr in
                        nftnl_rule_set_u64(ptr, attr(NFTNL_RULE_HANDLE), r.handle)
                        nftnl_rule_nlmsg_build_payload(nlh, ptr)
                    }
                }
            }
            for (key, tag) in zip([NFT.NFT_META_IIFNAME, NFT.NFT_META_OIFNAME], wantTags) {
                batch.add(NFT_MSG_NEWRULE.rawValue.asInt32, flags: NL.NLM_F_CREATE | 0x800, context: "add rule to \(i.ownChain)", family: p.nfproto) { nlh in
                    integrationRule(i, chain: i.ownChain, comment: tag) { _, add in
                        add("meta") { nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_KEY), key); nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_DREG), NFT.NFT_REG_1) }
                        add("cmp") { e in
                            nftnl_expr_set_u32(e, attr(NFTNL_EXPR_CMP_SREG), NFT.NFT_REG_1)
                            nftnl_expr_set_u32(e, attr(NFTNL_EXPR_CMP_OP), NFT.NFT_CMP_EQ)
                            Array(i.devicePrefix.utf8).withUnsafeBytes { _ = nftnl_expr_set(e, attr(NFTNL_EXPR_CMP_DATA), $0.baseAddress, UInt32($0.count)) }
                        }
                        if key == NFT.NFT_META_IIFNAME {
                            // ct status dnat: only what the helper's prefix maps translated, i.e. the
                            // site's exported hosts; never the gateway, the underlay or other networks.
                            add("ct") { nftnl_expr_set_u32($0, attr(NFTNL_EXPR_CT_KEY), NFT.NFT_CT_STATUS); nftnl_expr_set_u32($0, attr(NFTNL_EXPR_CT_DREG), NFT.NFT_REG_1) }
                            add("bitwise") { e in
                                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_BITWISE_SREG), NFT.NFT_REG_1)
                                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_BITWISE_DREG), NFT.NFT_REG_1)
                                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_BITWISE_LEN), 4)
                                withUnsafeBytes(of: NFT.IPS_DST_NAT) { _ = nftnl_expr_set(e, attr(NFTNL_EXPR_BITWISE_MASK), $0.baseAddress, 4) }
                                withUnsafeBytes(of: UInt32(0)) { _ = nftnl_expr_set(e, attr(NFTNL_EXPR_BITWISE_XOR), $0.baseAddress, 4) }
                            }
                            add("cmp") { e in
                                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_CMP_SREG), NFT.NFT_REG_1)
                                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_CMP_OP), NFT.NFT_CMP_NEQ)
                                withUnsafeBytes(of: UInt32(0)) { _ = nftnl_expr_set(e, attr(NFTNL_EXPR_CMP_DATA), $0.baseAddress, 4) }
                            }
                        }
                        add("counter") { _ in }
                        add("immediate") {
                            nftnl_expr_set_u32($0, attr(NFTNL_EXPR_IMM_DREG), NFT.NFT_REG_VERDICT)
                            nftnl_expr_set_u32($0, attr(NFTNL_EXPR_IMM_VERDICT), NFT.NF_ACCEPT)
                        }
                    }.using { nftnl_rule_nlmsg_build_payload(nlh, $0) }
                }
            }
        }
        for extra in jumps.dropFirst() {  // more than one jump (a copy): keep one
            batch.add(NFT_MSG_DELRULE.rawValue.asInt32, flags: 0, context: "delete duplicate jump in \(p)", family: p.nfproto) { nlh in
                integrationRule(i, chain: p.chain, comment: "", build: { _, _ in }).using { ptr in
                    nftnl_rule_set_u64(ptr, attr(NFTNL_RULE_HANDLE), extra.handle)
                    nftnl_rule_nlmsg_build_payload(nlh, ptr)
                }
            }
        }
        if jumps.isEmpty {
            // No NLM_F_APPEND and no position: the kernel inserts it first in the chain.
            batch.add(NFT_MSG_NEWRULE.rawValue.asInt32, flags: NL.NLM_F_CREATE, context: "insert jump into \(p)", family: p.nfproto) { nlh in
                integrationRule(i, chain: p.chain, comment: Integration.jumpTag) { _, add in
                    add("counter") { _ in }
                    add("immediate") {
                        nftnl_expr_set_u32($0, attr(NFTNL_EXPR_IMM_DREG), NFT.NFT_REG_VERDICT)
                        nftnl_expr_set_u32($0, attr(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: NFT.NFT_JUMP))
                        nftnl_expr_set_str($0, attr(NFTNL_EXPR_IMM_CHAIN), i.ownChain)
                    }
                }.using { nftnl_rule_nlmsg_build_payload(nlh, $0) }
            }
        }
        try batch.commit()
        return true
    }

    /// Removes exactly the jump(s) tagged `relay:integration` and the own chain. True when something went.
    @discardableResult
    public func removeIntegration(_ i: Integration) throws -> Bool {
        let p = i.point
        guard try foreignChainExists(p, chain: p.chain) || foreignChainExists(p, chain: i.ownChain) else { return false }
        let jumps = try foreignRules(p, chain: p.chain).filter { $0.comment == Integration.jumpTag }
        let ownExists = try foreignChainExists(p, chain: i.ownChain)
        guard !jumps.isEmpty || ownExists else { return false }
        let batch = NftBatch(socket: socket)
        for j in jumps {
            batch.add(NFT_MSG_DELRULE.rawValue.asInt32, flags: 0, context: "delete jump in \(p)", family: p.nfproto) { nlh in
                integrationRule(i, chain: p.chain, comment: "", build: { _, _ in }).using { ptr in
                    nftnl_rule_set_u64(ptr, attr(NFTNL_RULE_HANDLE), j.handle)
                    nftnl_rule_nlmsg_build_payload(nlh, ptr)
                }
            }
        }
        if ownExists {
            batch.add(NFT_MSG_DELRULE.rawValue.asInt32, flags: 0, context: "flush chain \(i.ownChain)", family: p.nfproto) { nlh in
                let r = nftnl_rule_alloc()!; defer { nftnl_rule_free(r) }
                nftnl_rule_set_str(r, attr(NFTNL_RULE_TABLE), p.table)
                nftnl_rule_set_str(r, attr(NFTNL_RULE_CHAIN), i.ownChain)
                nftnl_rule_set_u32(r, attr(NFTNL_RULE_FAMILY), UInt32(p.nfproto))
                nftnl_rule_nlmsg_build_payload(nlh, r)
            }
            batch.add(NFT_MSG_DELCHAIN.rawValue.asInt32, flags: 0, context: "delete chain \(i.ownChain)", family: p.nfproto) { nlh in
                chainObj(p, i.ownChain).using { nftnl_chain_nlmsg_build_payload(nlh, $0) }
            }
        }
        try batch.commit()
        return true
    }

    private func chainObj(_ p: IntegrationPoint, _ name: String) -> NftObject {
        let ch = NftObject(nftnl_chain_alloc()!, free: nftnl_chain_free)
        nftnl_chain_set_str(ch.ptr, attr(NFTNL_CHAIN_TABLE), p.table)
        nftnl_chain_set_str(ch.ptr, attr(NFTNL_CHAIN_NAME), name)
        nftnl_chain_set_u32(ch.ptr, attr(NFTNL_CHAIN_FAMILY), UInt32(p.nfproto))
        return ch
    }
}

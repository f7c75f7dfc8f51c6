import CNetfilter
import RelayCore

/// The plan's netlink objects as `nft --debug=netlink` prints them (both use libnftnl's printers):
/// lets a test compare this library's batch with what nft itself would send for the same ruleset.
public enum NftDebug {
    static func print(_ body: (UnsafeMutablePointer<CChar>, Int) -> Int32) -> String {
        var buf = [CChar](repeating: 0, count: 1 << 20)
        let n = buf.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
        guard n > 0 else { return "" }
        return String(cString: buf)
    }

    /// Blocks in nft's order and format: each set ("NAME TABLE FLAGS"), its elements
    /// ("NAME TABLE 0" + element line), then each rule ("inet TABLE CHAIN" + expressions).
    public static func describe(_ plan: TablePlan) -> [String] {
        var out: [String] = []
        for s in plan.sets {
            out.append(NftBuild.set(plan.spec, name: s.name, family: s.family, kind: s.kind).using { ptr in
                print { nftnl_set_snprintf($0, $1, ptr, UInt32(NFTNL_OUTPUT_DEFAULT.rawValue), 0) }
            })
            let elems = NftBuild.set(plan.spec, name: s.name)
            out.append(elems.using { sp in
                for e in NftBuild.elements(s) {
                    let el = nftnl_set_elem_alloc()!
                    e.key.withUnsafeBytes { _ = nftnl_set_elem_set(el, attr(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count)) }
                    if let d = e.data { d.withUnsafeBytes { _ = nftnl_set_elem_set(el, attr(NFTNL_SET_ELEM_DATA), $0.baseAddress, UInt32($0.count)) } }
                    if e.end { nftnl_set_elem_set_u32(el, attr(NFTNL_SET_ELEM_FLAGS), NFT.NFT_SET_ELEM_INTERVAL_END) }
                    nftnl_set_elem_add(sp, el)
                }
                return print { nftnl_set_snprintf($0, $1, sp, UInt32(NFTNL_OUTPUT_DEFAULT.rawValue), 0) }
            })
        }
        for c in plan.chains {
            for r in c.rules {
                out.append(NftBuild.rule(plan.spec, chain: c.name, r).using { ptr in
                    print { nftnl_rule_snprintf($0, $1, ptr, UInt32(NFTNL_OUTPUT_DEFAULT.rawValue), 0) }
                })
            }
        }
        return out
    }
}

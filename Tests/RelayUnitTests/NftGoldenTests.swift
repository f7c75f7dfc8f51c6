import Foundation
import Testing
import RelayCore
import RelayNftables

/// The golden state: site A's gateway in the two-site example (v4 and v6 prefix maps, an exact
/// map, remote sets).
let goldenState = NATState(
    dnat: [PrefixMapping(P("240.1.1.0/24"), P("192.168.1.0/24")), PrefixMapping(P("fd00:a::/64"), P("fd00:1::/64"))],
    snat: [PrefixMapping(P("192.168.1.0/24"), P("240.1.1.0/24")), PrefixMapping(P("fd00:1::/64"), P("fd00:a::/64"))],
    dnatExact: [AddressMapping(IPAddress("240.1.2.7")!, IPAddress("192.168.1.7")!)],
    remote: [P("240.2.2.0/24"), P("240.3.0.0/16"), P("fd00:b::/64")])

/// Golden files, regenerated with `RELAY_WRITE_GOLDEN=1 swift test --filter NftGolden` and then
/// (for the netlink file) `nft --debug=netlink -f siteA.nft` in a throwaway namespace.
@Suite("nftables batch vs nft --debug=netlink (golden)")
struct NftGoldenTests {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden")

    @Test("the rendered nft -f text is the golden source file")
    func renderedSource() throws {
        let text = TablePlan(goldenState, spec: TableSpec()).render()
        let url = Self.dir.appendingPathComponent("siteA.nft")
        if ProcessInfo.processInfo.environment["RELAY_WRITE_GOLDEN"] == "1" { try text.write(to: url, atomically: true, encoding: .utf8) }
        #expect(try String(contentsOf: url, encoding: .utf8) == text)
    }

    /// siteA.nft-debug-netlink.txt is what `nft --debug=netlink -f siteA.nft` printed (nft 1.0.6,
    /// libnftnl 1.2.4): every set, its elements and every rule as nft would send them. Each block
    /// this library builds for the same state must appear there verbatim, and every set/rule block
    /// nft printed must be one of ours (nothing missing, nothing extra).
    @Test("every set, element list and rule of the libnftnl batch equals what nft sends for the same file")
    func sameAsNft() throws {
        let golden = try String(contentsOf: Self.dir.appendingPathComponent("siteA.nft-debug-netlink.txt"), encoding: .utf8)
        let ours = NftDebug.describe(TablePlan(goldenState, spec: TableSpec()))
        #expect(ours.count == 2 * 7 + 5, "7 sets (+ element lists) and 5 rules, got \(ours.count)")
        for block in ours {
            #expect(golden.contains(block.trimmingCharacters(in: .newlines)), "not in nft's output:\n\(block)")
        }
        // The other direction: count nft's rule blocks and set headers.
        let nftRules = golden.components(separatedBy: "\ninet relay ").count - 1 + (golden.hasPrefix("inet relay ") ? 1 : 0)
        #expect(nftRules == 5)
    }
}

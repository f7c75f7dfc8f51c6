import ArgumentParser
import RelayControlAPI
import RelayCore

struct Nat: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the helper's nftables table as the kernel reports it (rules with counters, map sizes).")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let st = try connection.client.get(.kernel, as: ObservedState.self)
            if connection.json { printJSON(st.table); return }
            let t = st.table
            guard t.exists else { print("table \(t.family) \(t.name) does not exist (nothing applied yet)"); return }
            print("table \(t.family) \(t.name)")
            print(table(["SET/MAP", "KIND", "ENTRIES"], t.sets.map { [$0.name, $0.isMap ? ($0.isInterval ? "prefix map" : "exact map") : "prefix set", String($0.entries)] }))
            print("")
            print(table(["CHAIN", "HOOK", "RULE", "PACKETS", "BYTES"], t.chains.flatMap { c in
                c.rules.map { [c.name, c.hook ?? "-", $0.comment ?? "#\($0.handle)", String($0.packets), String($0.bytes)] }
            }))
            for j in st.integration { print("integration: jump from \(j.from) into \(j.target): \(j.packets) packets") }
        }
    }
}

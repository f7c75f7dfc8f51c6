import ArgumentParser
import RelayControlAPI
import RelayCore

struct Routes: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the helper's routes and TUN devices as the kernel reports them.")
    @OptionGroup var connection: ConnectionOptions

    struct Output: Codable { var routes: [ObservedRoute]; var devices: [ObservedDevice] }

    func run() throws {
        try runCtl {
            let st = try connection.client.get(.kernel, as: ObservedState.self)
            if connection.json { printJSON(Output(routes: st.routes, devices: st.devices)); return }
            print(table(["DESTINATION", "DEVICE", "TABLE", "PROTO", "METRIC"], st.routes.map {
                ["\($0.destination)", $0.device, String($0.table), String($0.protocolNumber), $0.metric.map(String.init) ?? "-"]
            }))
            print("")
            print(table(["DEVICE", "MTU", "STATE", "ADDRESSES", "RX PKTS", "TX PKTS"], st.devices.map {
                [$0.name, String($0.mtu), $0.up ? "up" : "down", $0.addresses.map(\.description).joined(separator: " "), String($0.rxPackets), String($0.txPackets)]
            }))
        }
    }
}

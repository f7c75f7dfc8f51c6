import ArgumentParser
import Foundation
import RelayConfig
import RelayControlAPI
import RelayCore
import RelayNftables

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the nftables ruleset (nft -f syntax) and routes a configuration implies, without applying anything.",
        discussion: "Include the output in your own firewall if you prefer to manage it yourself.")
    @Option(help: "Configuration file.") var config = RelayPaths.defaultConfig
    @Option(help: "Table name (the helper policy's table.name).") var table = "relay"
    @Option(help: "Route protocol number (the helper policy's routes.protocol).") var routeProtocol = 196
    @Option(help: "Device name prefix (the helper policy's devices.prefix): inbound translation applies only to packets from these devices.") var devicePrefix = "relay"
    @Flag(help: "Print JSON.") var json = false

    struct Output: Codable { var nft: String; var routes: [String]; var device: DeviceSpec?; var warnings: [ConfigIssue] }

    func run() throws {
        try runCtl {
            let (cfg, warnings) = try loadConfigFile(config)
            let d = cfg.desiredKernelState
            let nft = TablePlan(d.nat, spec: TableSpec(name: table, devicePrefix: devicePrefix)).render()
            let routes = d.routes.map { "ip route replace \($0.destination) dev \($0.device) proto \(routeProtocol)" }
            if json { printJSON(Output(nft: nft, routes: routes, device: d.device, warnings: warnings)); return }
            print("# nftables (load with: nft -f FILE)")
            print(nft)
            if let dev = d.device { print("# TUN device \(dev.name), mtu \(dev.mtu)\(dev.offload ? ", offloads (IFF_VNET_HDR, TSO)" : "") (created by relay-helper, handed to relayd)") }
            print("# routes")
            print(routes.joined(separator: "\n"))
            for w in warnings { FileHandle.standardError.write(Data("warning: \(w.key): \(w.message)\n".utf8)) }
        }
    }
}

/// Reads and validates a config file with the same errors relayd gives.
func loadConfigFile(_ path: String) throws -> (RelayConfiguration, [ConfigIssue]) {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw CtlFailure(code: RelayCtlExit.invalidConfig, description: "cannot read \(path): \(FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file")")
    }
    do { return try ConfigFile.parse(text, file: path) } catch let e as ConfigError {
        throw CtlFailure(code: RelayCtlExit.invalidConfig, description: e.description)
    }
}

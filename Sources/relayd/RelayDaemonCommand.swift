import ArgumentParser
import RelayCore
import RelayDaemonKit

@main
struct RelayDaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relayd",
        abstract: "The unprivileged Relay daemon: tunnels, bridging, reflection, relaying, sessions.",
        version: RelayVersion.string
    )
    func run() async throws {
        throw ValidationError("relayd has no services yet in this version; see CHANGELOG.md")
    }
}

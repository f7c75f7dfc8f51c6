import ArgumentParser
import RelayCore

/// The `relayctl` command tree. One file per verb (see Commands/).
public struct RelayCtl: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "relayctl",
        abstract: "Manage Relay: the relayd daemon and the relay-helper it drives.",
        discussion: """
        relayctl talks to relayd over its control socket (default /run/relay/relayd.sock). \
        Every command accepts --json for machine-readable output.
        """,
        version: RelayVersion.string,
        subcommands: [Version.self]
    )
    public init() {}
}

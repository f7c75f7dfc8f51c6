import ArgumentParser
import RelayCore

/// The `relayctl` command tree. One file per verb (see Commands/).
public struct RelayCtl: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "relayctl",
        abstract: "Manage Relay: the relayd daemon and the relay-helper it drives.",
        discussion: """
        relayctl talks to relayd over its control socket (default /run/relay/relayd.sock as root, \
        $XDG_RUNTIME_DIR/relay/relayd.sock otherwise, or $RELAYD_SOCKET). Every command accepts --json.

        Exit codes: 0 success, 1 failure, 3 relayd is not running, 4 permission denied, \
        5 invalid configuration, 6 relay-helper unreachable, 64 usage error.
        """,
        version: RelayVersion.string,
        subcommands: [Status.self, Sites.self, MapHost.self, Peers.self, Paths.self, Sessions.self, Reflect.self, Relay.self, Nat.self, Routes.self, Explain.self, Config.self, Reload.self,
                      Keygen.self, Identity.self, Version.self]
    )
    public init() {}
}

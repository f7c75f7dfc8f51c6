import ArgumentParser
import CRelayShim
import Foundation
import Logging
import RelayCore
import RelayHelperKit
import RelayIPC
import RelayNftables

@main
struct RelayHelperCommand: ParsableCommand {
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as HelperExit {
            FileHandle.standardError.write(Data("relay-helper: \(e.description)\n".utf8))
            Foundation.exit(e.code)
        } catch {
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "relay-helper",
        abstract: "Relay's privileged helper: programs its own nftables table, routes and TUN devices for relayd.",
        discussion: """
        Runs with CAP_NET_ADMIN only (setcap cap_net_admin+ep, or systemd AmbientCapabilities=CAP_NET_ADMIN). \
        It serves only the uids/gids its policy names, re-checks every request against the policy, and \
        touches only what it owns: the table named in the policy (default inet relay).
        """,
        version: RelayVersion.string
    )

    @Option(help: "Unix socket to listen on.") var socket = "/run/relay/helper.sock"
    @Option(help: "Policy file.") var policy = "/etc/relay/helper.toml"
    @Option(name: .customLong("check-policy"), help: ArgumentHelp("Validate a policy file and exit.", valueName: "path"))
    var checkPolicy: String?
    @Flag(help: "Remove everything the helper owns (its table, routes, devices, integration jumps) and exit.") var cleanup = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"

    func run() throws {
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = Logger.Level(rawValue: logLevel) ?? .info
            return h
        }
        let logger = Logger(label: "relay-helper")
        if let path = checkPolicy {
            let p = try loadPolicy(path)
            func l(_ x: [IPPrefix]) -> String { x.isEmpty ? "none" : x.map(\.description).joined(separator: " ") }
            print("\(path): ok")
            print("  table inet \(p.table.name); clients uids \(p.clientUIDs) gids \(p.clientGIDs) users \(p.clientUserNames) groups \(p.clientGroupNames)")
            print("  may translate:        \(l(p.translate))")
            print("  may route to devices: \(l(p.routeDestinations))")
            print("  devices may carry:    \(l(p.deviceAddresses))")
            print("  exit default route: \(p.exitDefaultRoute ? "granted" : "no"); masquerade: \(p.masqueradeInterfaces.isEmpty ? "no" : p.masqueradeInterfaces.joined(separator: " ")); filter rules: \(p.maxFilterRules == 0 ? "no" : "up to \(p.maxFilterRules)")")
            for w in p.warnings { print("warning: \(w)") }
            return
        }
        try dropPrivileges()
        let pol = try loadPolicy(policy)
        // Fail early and clearly if netlink is not usable (no CAP_NET_ADMIN in this namespace).
        let table = try NftablesTable(spec: pol.table)
        do { _ = try table.tableExists() } catch {
            throw HelperExit("cannot read nftables over netlink (\(error)): relay-helper needs CAP_NET_ADMIN", code: 77)
        }
        if cleanup {
            let removed = try KernelOwner(policy: pol).cleanup()
            print(removed.isEmpty ? "nothing to remove: the helper owns nothing here" : "removed: " + removed.joined(separator: ", "))
            return
        }
        for w in pol.warnings { logger.warning("policy: \(w)") }

        let dir = (socket as NSString).deletingLastPathComponent
        if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        let listener = try UnixListener(path: socket, mode: 0o666)
        logger.info("relay-helper \(RelayVersion.string) listening on \(socket); table inet \(pol.table.name); clients uids \(pol.clientUIDs) gids \(pol.clientGIDs)")
        let server = HelperServer(policy: pol, logger: logger)
        signal(SIGPIPE, SIG_IGN)
        for sig in [SIGTERM, SIGINT] {
            signal(sig) { _ in
                // Leave the kernel state in place (relayd re-applies idempotently); just exit.
                _exit(0)
            }
        }
        try server.serve(listener)
    }

    func loadPolicy(_ path: String) throws -> HelperPolicy {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw HelperExit("cannot read policy \(path): install one (make install puts policies/helper.toml at /etc/relay/helper.toml) or pass --policy", code: 78)
        }
        do { return try HelperPolicy.parse(text, file: path) } catch let e as PolicyError {
            throw HelperExit(e.description, code: 78)
        }
    }

    /// Keeps CAP_NET_ADMIN and nothing else; refuses to run without it.
    func dropPrivileges() throws {
        let cap = CRelayShim_CAP_NET_ADMIN()
        guard CRelayShim_cap_effective(cap) == 1 else {
            throw HelperExit("relay-helper needs CAP_NET_ADMIN: run 'setcap cap_net_admin+ep \(CommandLine.arguments[0])' or start it from the systemd unit (AmbientCapabilities=CAP_NET_ADMIN)", code: 77)
        }
        let rc = CRelayShim_keep_only_cap(cap)
        guard rc == 0 else { throw HelperExit("cannot drop capabilities other than CAP_NET_ADMIN (errno \(-rc))", code: 71) }
        _ = CRelayShim_set_no_new_privs()
    }
}

/// A runtime failure: its message on stderr and an exit code from sysexits.h (no usage text: the
/// command line was fine).
struct HelperExit: Error, CustomStringConvertible {
    var description: String
    var code: Int32
    init(_ message: String, code: Int32) { description = message; self.code = code }
}

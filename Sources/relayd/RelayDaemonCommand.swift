import ArgumentParser
import Foundation
import Logging
import RelayConfig
import RelayControlAPI
import RelayCore
import RelayDaemonKit

@main
struct RelayDaemonCommand: ParsableCommand {
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as RelaydExit {
            FileHandle.standardError.write(Data("relayd: \(e.description)\n".utf8))
            Foundation.exit(e.code)
        } catch {
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "relayd",
        abstract: "The unprivileged Relay daemon: configuration, identity, the helper link and the control API.",
        discussion: """
        Starts with no arguments: reads /etc/relay/relayd.toml if it exists (else runs on an embedded \
        default with no sites or peers), keeps its node identity (an X25519 key) in the state directory, \
        drives relay-helper, and serves relayctl on its control socket. SIGHUP reloads the configuration \
        (an invalid one is refused and the running one stays in force); SIGTERM stops it.
        """,
        version: RelayVersion.string
    )

    @Option(help: "Configuration file (default /etc/relay/relayd.toml; absent = embedded default).") var config: String?
    @Option(help: ArgumentHelp("State directory for the node identity.", valueName: "dir")) var stateDir = RelayPaths.defaultStateDirectory
    @Option(help: "Control socket (relayctl talks to it).") var socket = RelayPaths.defaultControlSocket
    @Option(help: "relay-helper's socket.") var helperSocket = RelayPaths.defaultHelperSocket
    @Option(help: "Group whose members may read status (changing needs root or relayd's own user).") var readGroup = "relay"
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"
    @Option(help: ArgumentHelp("Seconds a control connection may stay without a complete request.", valueName: "seconds"))
    var controlIdleTimeout = 30

    func run() throws {
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error") }
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "relayd")
        if getuid() == 0 {
            logger.warning("relayd is running as root: it needs no privileges; run it as its own user (the systemd unit does)")
        }
        guard (1...3600).contains(controlIdleTimeout) else { throw ValidationError("--control-idle-timeout must be 1...3600 seconds") }
        let options = DaemonOptions(configPath: config ?? RelayPaths.defaultConfig, configExplicit: config != nil, stateDirectory: stateDir,
                                    controlSocket: socket, helperSocket: helperSocket, readGroup: readGroup)
        let daemon: Daemon
        do { daemon = try Daemon(options: options, logger: logger) } catch let e as ConfigError {
            throw RelaydExit(e.description, code: 78)
        } catch {
            throw RelaydExit("\(error)", code: 1)
        }
        var limits = ControlLimits()
        limits.idleSeconds = Int64(controlIdleTimeout)
        let control: ControlServer
        do { control = try ControlServer(daemon: daemon, logger: logger, limits: limits) } catch {
            throw RelaydExit("cannot serve the control socket \(socket): \(error)", code: 1)
        }
        signal(SIGPIPE, SIG_IGN)
        // The services run under swift-service-lifecycle (ordered start, SIGTERM/SIGINT shut them
        // down in reverse order, SIGHUP reloads); this thread waits for them.
        let result = Outcome()
        let done = DispatchSemaphore(value: 0)
        Task {
            do { try await daemon.run(control: control) } catch { result.set(error) }
            done.signal()
        }
        done.wait()
        if let error = result.error { throw RelaydExit("\(error)", code: 1) }
    }
}

/// How the services ended (set once by the task that ran them).
final class Outcome: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Error?
    func set(_ e: Error) { lock.lock(); stored = e; lock.unlock() }
    var error: Error? { lock.lock(); defer { lock.unlock() }; return stored }
}

/// A runtime failure: its message on stderr and an exit code (78 for a bad configuration, as in
/// sysexits.h), without the usage text a command-line error gets.
struct RelaydExit: Error, CustomStringConvertible {
    var description: String
    var code: Int32
    init(_ message: String, code: Int32) { description = message; self.code = code }
}

import Foundation
import Logging
import RelayCore
import ServiceLifecycle
import UnixSignals

/// Opens once a service has started: the next one waits for it, so relayd's services start in
/// order (ServiceGroup runs them concurrently and shuts them down in reverse order).
final class StartGate: Sendable {
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    init() { (stream, continuation) = AsyncStream.makeStream() }
    func open() { continuation.finish() }
    /// Returns when the gate opened, or when the waiting task is cancelled.
    func wait() async { for await _ in stream {} }
}

/// One of relayd's components (their loops are threads of their own) as a Service: waits for the
/// one before it, starts, opens its gate, runs until graceful shutdown reaches it, stops.
struct StagedService: Service, CustomStringConvertible {
    let description: String
    let after: StartGate?
    let gate = StartGate()
    let start: @Sendable () throws -> Void
    let stop: @Sendable () -> Void

    func run() async throws {
        await after?.wait()
        guard !Task.isCancelled else { return }
        try start()
        gate.open()
        try? await gracefulShutdown()
        stop()
    }
}

/// SIGHUP reloads the configuration. It traps the signal before anything else starts (an early
/// SIGHUP is kept, never fatal) and reloads once everything has started.
struct ReloadOnHangup: Service, CustomStringConvertible {
    let description = "reload on SIGHUP"
    let daemon: Daemon
    let trapped = StartGate()
    let ready: StartGate

    func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        trapped.open()
        await ready.wait()
        for await _ in hangups.cancelOnGracefulShutdown() { _ = daemon.reload(trigger: "SIGHUP") }
    }
}

/// Why relayd could not start: one of its services failed (its message says which and why).
public struct StartFailure: Error, CustomStringConvertible {
    public var description: String
}

extension Daemon {
    /// relayd's services in start order: the SIGHUP trap, the control socket, the STUN reflector,
    /// the relay role (when on), the TLS front door (when on), the peer tunnels (with the reflection client), the helper link. SIGTERM and SIGINT shut
    /// them down gracefully in reverse order; kernel state stays (the next start re-applies it).
    /// Returns when they have stopped; throws StartFailure when one could not start.
    public func run(control: ControlServer) async throws {
        let ready = StartGate()
        let reload = ReloadOnHangup(daemon: self, ready: ready)
        let controlService = StagedService(description: "control socket", after: reload.trapped, start: {
            do { try control.start() } catch { throw StartFailure(description: "cannot serve the control socket \(self.options.controlSocket): \(error)") }
        }, stop: { control.stop() })
        let reflectorService = StagedService(description: "STUN reflector", after: controlService.gate, start: { try self.startReflector() }, stop: { self.reflector?.stop() })
        let relayService = StagedService(description: "relay", after: reflectorService.gate, start: { try self.startRelay() }, stop: { self.relayServer?.stop() })
        let frontDoorService = StagedService(description: "front door", after: relayService.gate, start: { try self.startFrontDoor() }, stop: { self.frontDoor?.stop() })
        let tunnelService = StagedService(description: "peer tunnels", after: frontDoorService.gate, start: { try self.startTunnel() }, stop: { self.tunnel.stop() })
        let logger = self.logger
        let helperService = StagedService(description: "helper link", after: tunnelService.gate, start: {
            self.startHelper()
            let cfg = self.currentConfig
            logger.notice("relayd \(RelayVersion.string) node \(cfg.node.name) id \(self.identity.publicKeyBase64); config \(self.options.configPath)\(FileManager.default.fileExists(atPath: self.options.configPath) ? "" : " (absent: embedded default)"); \(cfg.peers.count) peers")
            ready.open()
        }, stop: {
            logger.notice("shutting down (kernel state stays; the next start re-applies it)")
            self.helper.stop()
        })
        let group = ServiceGroup(configuration: .init(services: [reload, controlService, reflectorService, relayService, frontDoorService, tunnelService, helperService],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.notice("stopped")
    }
}

import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOWebSocket
import RelayControlAPI
import RelayCore
import X509

/// relayd's TLS front door: one TCP listener (a socket systemd passes, or `listen`), TLS 1.3 with
/// ALPN `h2` and `http/1.1`, HTTP/2 with extended CONNECT (RFC 8441) and raised windows, HTTP/1.1
/// with WebSocket Upgrade; every request goes to a route (`FrontDoorRoutes`). Bounds: connections
/// per address, a deadline for the first request, an idle timeout, WebSocket message caps, HTTP/2
/// stream limits and swift-nio-http2's reset-flood defence. The certificate is reread on reload;
/// open connections keep theirs.
public final class FrontDoor: @unchecked Sendable {
    public let config: FrontDoorConfig
    let routes: FrontDoorRoutes
    let logger: Logger
    let stats = FrontDoorStats()
    private let group: MultiThreadedEventLoopGroup
    private var channel: Channel?
    private let tls: NIOLockedValueBox<(context: NIOSSLContext, subject: String?, notAfter: String?)?>
    public private(set) var port = 0
    public private(set) var listenDescription = ""

    /// Loads the certificate (when TLS is on); throws with a message that names the file and what
    /// to do.
    public init(config: FrontDoorConfig, routes: FrontDoorRoutes, logger: Logger) throws {
        self.config = config
        self.routes = routes
        self.logger = logger
        tls = NIOLockedValueBox(config.tls ? try FrontDoor.loadTLS(config) : nil)
        group = MultiThreadedEventLoopGroup(numberOfThreads: min(2, System.coreCount))
    }

    /// The TLS context for new connections: TLS 1.3 only, ALPN h2 then http/1.1.
    static func loadTLS(_ c: FrontDoorConfig) throws -> (context: NIOSSLContext, subject: String?, notAfter: String?) {
        guard !c.certificate.isEmpty, !c.privateKey.isEmpty else {
            throw FrontDoorError("front_door.certificate and front_door.private_key are required with TLS on: point them at PEM files (relayctl relay cert --self-signed NAME makes a pair), or set front_door.tls = false on a trusted LAN")
        }
        let chain: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(c.certificate) } catch {
            throw FrontDoorError("front_door.certificate: cannot read a PEM certificate from \(c.certificate) (\(error)); check the path and that relayd's user may read it")
        }
        guard let leaf = chain.first else { throw FrontDoorError("front_door.certificate: \(c.certificate) holds no certificate") }
        let key: NIOSSLPrivateKey
        do { key = try NIOSSLPrivateKey(file: c.privateKey, format: .pem) } catch {
            throw FrontDoorError("front_door.private_key: cannot read a PEM private key from \(c.privateKey) (\(error)); check the path and that relayd's user may read it")
        }
        var conf = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        conf.minimumTLSVersion = .tlsv13
        conf.applicationProtocols = ["h2", "http/1.1"]
        let context: NIOSSLContext
        do { context = try NIOSSLContext(configuration: conf) } catch {
            throw FrontDoorError("front_door: the certificate in \(c.certificate) and the key in \(c.privateKey) do not make a TLS context (\(error)); do they belong together?")
        }
        let notAfter = Date(timeIntervalSince1970: TimeInterval(leaf.notValidAfter))
        return (context, describe(leaf), ISO8601DateFormatter().string(from: notAfter))
    }

    static func describe(_ cert: NIOSSLCertificate) -> String? {
        guard let der = try? cert.toDERBytes(), let c = try? Certificate(derEncoded: der) else { return nil }
        return c.subject.description
    }

    /// Binds (or adopts systemd's socket: LISTEN_FDS, fd 3) and starts accepting.
    public func start() throws {
        if config.listen.port != 443 && SocketActivation.passed {
            logger.notice("front door: systemd passed a listening socket (relayd.socket); front_door.listen \(config.listen) is not used")
        }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            // Room for a burst of relayed datagrams written before one flush.
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 1 << 20, high: 4 << 20))
            .childChannelInitializer { [self] channel in initialize(channel) }
        let ch: Channel
        if let fd = SocketActivation.listeningSocket() {
            do { ch = try bootstrap.withBoundSocket(fd).wait() } catch {
                throw FrontDoorError("front_door: cannot use the socket systemd passed (fd \(fd)): \(error)")
            }
            listenDescription = "socket activation (fd \(fd))"
        } else {
            let host = config.listen.address.description
            do { ch = try bootstrap.bind(host: host, port: Int(config.listen.port)).wait() } catch {
                let hint = config.listen.port < 1024 ? " (a port below 1024 needs systemd socket activation: contrib/systemd/relayd.socket; relayd keeps no capabilities)" : ""
                throw FrontDoorError("front_door.listen: cannot listen on \(config.listen): \(error)\(hint)")
            }
            listenDescription = "\(config.listen)"
        }
        channel = ch
        port = ch.localAddress?.port ?? 0
        let t = tls.withLockedValue { $0 }
        if t == nil { logger.warning("front door on \(listenDescription) without TLS (front_door.tls = false): everything on it, tokens included, crosses the network in the clear; use it only on a trusted LAN") }
        logger.info("front door on \(listenDescription) port \(port)\(t.map { " with TLS 1.3 (\($0.subject ?? "certificate"), until \($0.notAfter ?? "?"))" } ?? ""); routes \((Array(routes.plain.keys) + Array(routes.webSockets.keys)).sorted().joined(separator: " "))")
    }

    /// Rereads the certificate and key: new connections get them, open ones keep theirs. On an
    /// error the old ones stay and the error says why.
    public func reloadCertificate() throws {
        guard config.tls else { return }
        let next = try FrontDoor.loadTLS(config)
        tls.withLockedValue { $0 = next }
        logger.info("front door: certificate reloaded (\(next.subject ?? "certificate"), until \(next.notAfter ?? "?")); open connections keep the old one")
    }

    public func stop() {
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
    }

    public var status: FrontDoorStatus {
        let (c, open) = stats.snapshot
        let t = tls.withLockedValue { $0 }
        return FrontDoorStatus(listen: listenDescription, port: port, tls: config.tls, certificateSubject: t?.subject, certificateNotAfter: t?.notAfter,
                               connectionsOpen: open, counters: c)
    }

    // MARK: pipeline

    private func initialize(_ channel: Channel) -> EventLoopFuture<Void> {
        let remoteIP = channel.remoteAddress?.ipAddress ?? "?"
        guard stats.admit(remoteIP, limit: config.maxConnectionsPerAddress) else {
            return channel.close()
        }
        let stats = self.stats
        channel.closeFuture.whenComplete { _ in stats.release(remoteIP) }
        let connection = ConnectionState(remote: channel.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?", stats: stats)
        let sync = channel.pipeline.syncOperations
        do {
            try sync.addHandler(IdleStateHandler(readTimeout: .seconds(Int64(config.idleSeconds))))
            try sync.addHandler(ConnectionGuard(connection: connection, headerSeconds: config.headerSeconds))
            if let t = tls.withLockedValue({ $0 }) {
                try sync.addHandler(NIOSSLServerHandler(context: t.context))
                return channel.configureHTTP2SecureUpgrade(
                    h2ChannelConfigurator: { [self] ch in configureHTTP2(ch, connection) },
                    http1ChannelConfigurator: { [self] ch in configureHTTP1(ch, connection) })
            }
            return configureHTTP1(channel, connection)
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
    }

    private func configureHTTP1(_ channel: Channel, _ connection: ConnectionState) -> EventLoopFuture<Void> {
        let routes = self.routes, maxMessage = config.maxMessageBytes
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: maxMessage,
            shouldUpgrade: { ch, head in
                connection.requestSeen()
                return ch.eventLoop.makeSucceededFuture(routes.webSocketRoute(head.uri) != nil ? HTTPHeaders() : nil)
            },
            upgradePipelineHandler: { ch, head in
                guard let endpoint = routes.webSocketRoute(head.uri) else { return ch.close() }
                // The request router goes: what follows the upgrade is WebSocket frames.
                return ch.pipeline.removeHandler(name: HTTP1Router.name).flatMapThrowing {
                    try ch.pipeline.syncOperations.addHandlers([
                        NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 1, maxAccumulatedFrameCount: 64, maxAccumulatedFrameSize: maxMessage),
                        WebSocketBridge(endpoint: endpoint, remote: connection.remote, counters: connection.stats)])
                }
            })
        return channel.pipeline.configureHTTPServerPipeline(withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in })).flatMapThrowing {
            try channel.pipeline.syncOperations.addHandler(HTTP1Router(routes: routes, connection: connection), name: HTTP1Router.name)
        }
    }

    private func configureHTTP2(_ channel: Channel, _ connection: ConnectionState) -> EventLoopFuture<Void> {
        let routes = self.routes, maxMessage = config.maxMessageBytes
        // Extended CONNECT on; windows raised from 65,535 bytes (a relay's bulk traffic); bounded
        // streams; swift-nio-http2's defaults bound resets (rapid reset) and other glitches.
        let settings: [HTTP2Setting] = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: config.maxStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: 1 << 20),
            HTTP2Setting(parameter: .maxHeaderListSize, value: HPACKDecoderDefaults.maxHeaderListSize),
            HTTP2Setting(parameter: .enableConnectProtocol, value: 1),
        ]
        return channel.configureHTTP2Pipeline(mode: .server, initialLocalSettings: settings, targetWindowSize: 4 << 20) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(HTTP2Router(routes: routes, connection: connection, maxMessage: maxMessage))
            }
        }.flatMapThrowing { _ in
            // A connection error (the HTTP/2 handler has written its GOAWAY, e.g. ENHANCE_YOUR_CALM
            // for a reset flood) ends the connection.
            try channel.pipeline.syncOperations.addHandler(CloseOnError(stats: connection.stats))
        }
    }
}

enum HPACKDecoderDefaults { static let maxHeaderListSize = 16384 }

public struct FrontDoorError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

/// What the handlers of one connection share: who it is, and whether a request came yet.
final class ConnectionState: @unchecked Sendable {
    let remote: String
    let stats: FrontDoorStats
    private let seen = NIOLockedValueBox(false)
    init(remote: String, stats: FrontDoorStats) { self.remote = remote; self.stats = stats }
    func requestSeen() { seen.withLockedValue { $0 = true } }
    var hasRequest: Bool { seen.withLockedValue { $0 } }
}

/// First in a connection's pipeline: closes it when no request came within `headerSeconds` (slow
/// clients: a TLS handshake or headers dribbled in), or when it stayed silent past the idle
/// timeout; counts failed TLS handshakes.
final class ConnectionGuard: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny
    let connection: ConnectionState
    let headerSeconds: Int
    private var deadline: Scheduled<Void>?

    init(connection: ConnectionState, headerSeconds: Int) { self.connection = connection; self.headerSeconds = headerSeconds }

    func handlerAdded(context: ChannelHandlerContext) {
        let connection = self.connection
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: .seconds(Int64(headerSeconds))) {
            if !connection.hasRequest { connection.stats.bump(\.headerTimeouts); channel.close(promise: nil) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? IdleStateHandler.IdleStateEvent, e == .read {
            connection.stats.bump(\.idleTimeouts)
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is NIOSSLError || error is BoringSSLError { connection.stats.bump(\.tlsFailures) }
        context.close(promise: nil)
    }
}

/// Last in an HTTP/2 connection's pipeline: an error that reaches it (the HTTP/2 handler's
/// connection errors, after its GOAWAY) flushes what is written and closes the connection.
final class CloseOnError: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    let stats: FrontDoorStats
    private var closing = false
    init(stats: FrontDoorStats) { self.stats = stats }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard !closing else { return }
        closing = true
        stats.bump(\.http2ConnectionErrors)
        context.flush()
        context.close(promise: nil)
    }
}

import Crypto
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import RelayCore
import SwiftASN1
import X509

/// A node's WebSocket transport to a relay whose UDP it cannot reach: a TLS WebSocket to the
/// relay's front door (`wss://HOST:PORT/relay`, the certificate checked against a CA bundle or a
/// pinned SPKI hash; `ws://` for a LAN relay without TLS) and a UDP socket on 127.0.0.1 that stands
/// for the relay locally. relayd's tunnel sends the relay's messages to that socket as it would to
/// the relay (the packet path does not change); what one read brings (GSO trains taken whole with
/// GRO) goes out in bundles (`WebSocketBundle`), and messages from the relay go back to the tunnel's
/// port as GSO trains. Only datagrams from the tunnel's port are taken.
public final class WebSocketUDPBridge: @unchecked Sendable {
    public struct Target: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var path: String
        /// PEM CA bundle (nil: the system's), and/or the leaf's SPKI SHA-256 (base64) to pin.
        public var caFile: String?
        public var spkiSHA256: String?
        /// False for `ws://` (a LAN relay with `front_door.tls = false`).
        public var tls: Bool
        public init(host: String, port: Int, path: String, caFile: String?, spkiSHA256: String?, tls: Bool = true) {
            self.host = host; self.port = port; self.path = path; self.caFile = caFile; self.spkiSHA256 = spkiSHA256; self.tls = tls
        }

        /// `wss://HOST[:PORT]/PATH`, or `ws://` (no TLS).
        public init?(url: String, caFile: String?, spkiSHA256: String?) {
            guard let u = URLComponents(string: url), let scheme = u.scheme, scheme == "wss" || scheme == "ws", let host = u.host, !host.isEmpty else { return nil }
            let tls = scheme == "wss"
            self.init(host: host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port: u.port ?? (tls ? 443 : 80), path: u.path.isEmpty ? "/relay" : u.path,
                      caFile: caFile, spkiSHA256: spkiSHA256, tls: tls)
        }

        /// What the URL was (for log lines).
        public var url: String { "\(tls ? "wss" : "ws")://\(host.contains(":") ? "[\(host)]" : host):\(port)\(path)" }
    }

    public let target: Target
    let tunnelPort: UInt16
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    private let state = NIOLockedValueBox<(ws: Channel?, udp: Channel?, closed: Bool)>((nil, nil, false))
    private let onReady: @Sendable (Endpoint) -> Void
    private let onClosed: @Sendable (String) -> Void

    public init(target: Target, tunnelPort: UInt16, logger: Logger, onReady: @escaping @Sendable (Endpoint) -> Void, onClosed: @escaping @Sendable (String) -> Void) {
        self.target = target; self.tunnelPort = tunnelPort; self.logger = logger; self.onReady = onReady; self.onClosed = onClosed
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    /// Connects (asynchronously): `onReady` with the local endpoint that stands for the relay, or
    /// `onClosed` with the reason.
    public func start() {
        var tlsContext: NIOSSLContext?
        if target.tls { do {
            var conf = TLSConfiguration.makeClientConfiguration()
            conf.minimumTLSVersion = .tlsv13
            conf.applicationProtocols = ["http/1.1"]
            if let ca = target.caFile { conf.trustRoots = .file(ca) }
            // With a pin, the verification callback below replaces the chain of trust (a
            // self-signed relay): the leaf's key must be the pinned one.
            tlsContext = try NIOSSLContext(configuration: conf)
        } catch {
            finish("TLS settings for \(target.host): \(error)")
            return
        } }
        let target = self.target, pin = target.spkiSHA256
        let upgraded = group.next().makePromise(of: Channel.self)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(.seconds(10))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: .init(low: 1 << 20, high: 4 << 20))
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        let sslHandler: NIOSSLClientHandler
                        let serverName = IPAddress(target.host) == nil ? target.host : nil
                        if let pin {
                            sslHandler = try NIOSSLClientHandler(context: tlsContext, serverHostname: serverName) { chain, promise in
                                promise.succeed(WebSocketUDPBridge.spki(chain.first) == pin ? .certificateVerified : .failed)
                            }
                        } else {
                            sslHandler = try NIOSSLClientHandler(context: tlsContext, serverHostname: serverName)
                        }
                        try channel.pipeline.syncOperations.addHandler(sslHandler)
                    }
                    try channel.pipeline.syncOperations.addHandler(RawFrameWriter(), name: RawFrameWriter.name)
                    let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 16) { ch, _ in
                        // The requester goes: what follows the upgrade is WebSocket frames.
                        ch.pipeline.removeHandler(name: UpgradeRequester.name).flatMapThrowing {
                            try ch.pipeline.syncOperations.addHandlers([
                                NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 1, maxAccumulatedFrameCount: 64, maxAccumulatedFrameSize: 1 << 16),
                                BridgeWebSocketHandler(bridge: self)])
                            upgraded.succeed(ch)
                        }
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                    try channel.pipeline.syncOperations.addHandler(UpgradeRequester(target: target, failed: upgraded), name: UpgradeRequester.name)
                }
            }
        bootstrap.connect(host: target.host, port: target.port).whenFailure { e in
            upgraded.fail(e)
        }
        upgraded.futureResult.flatMap { [self] ws -> EventLoopFuture<(Channel, Channel)> in
            // The local stand-in for the relay.
            DatagramBootstrap(group: ws.eventLoop)
                .channelOption(.socketOption(.so_rcvbuf), value: 4 << 20)
                .channelOption(.socketOption(.so_sndbuf), value: 4 << 20)
                // UDP GRO: the tunnel's GSO trains arrive whole (one buffer and its segment size);
                // 8 per read, each with room for 64 KiB.
                .channelOption(.datagramReceiveOffload, value: System.supportsUDPReceiveOffload)
                .channelOption(.datagramReceiveSegmentSize, value: System.supportsUDPReceiveOffload)
                .channelOption(.datagramVectorReadMessageCount, value: 8)
                .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 8 * 65536))
                .channelInitializer { udp in udp.eventLoop.makeCompletedFuture { try udp.pipeline.syncOperations.addHandler(BridgeUDPHandler(bridge: self)) } }
                .bind(host: "127.0.0.1", port: 0).map { (ws, $0) }
        }.whenComplete { [self] result in
            switch result {
            case .success(let (ws, udp)):
                let stop = state.withLockedValue { s -> Bool in
                    if s.closed { return true }
                    s.ws = ws; s.udp = udp
                    return false
                }
                if stop { ws.close(promise: nil); udp.close(promise: nil); return }
                ws.closeFuture.whenComplete { [self] _ in finish("the WebSocket to \(target.host):\(target.port) closed") }
                let port = UInt16(udp.localAddress?.port ?? 0)
                logger.info("relay \(target.host):\(target.port): WebSocket transport up (\(target.url)); local stand-in 127.0.0.1:\(port)")
                onReady(Endpoint(.v4(IPv4Address(127, 0, 0, 1)), port: port))
            case .failure(let e):
                finish("cannot open \(target.url): \(e)")
            }
        }
    }

    /// The leaf certificate's SubjectPublicKeyInfo, SHA-256, base64 (what `relayctl relay cert` prints).
    static func spki(_ cert: NIOSSLCertificate?) -> String? {
        guard let der = try? cert?.toDERBytes(), let c = try? Certificate(derEncoded: der) else { return nil }
        var s = DER.Serializer()
        guard (try? s.serialize(c.publicKey)) != nil else { return nil }
        return Data(SHA256.hash(data: s.serializedBytes)).base64EncodedString()
    }

    public func stop() {
        let (ws, udp) = state.withLockedValue { s -> (Channel?, Channel?) in s.closed = true; return (s.ws, s.udp) }
        ws?.close(promise: nil); udp?.close(promise: nil)
        try? group.syncShutdownGracefully()
    }

    private func finish(_ reason: String) {
        let first = state.withLockedValue { s -> Bool in
            defer { s.closed = true }
            return !s.closed
        }
        let (ws, udp) = state.withLockedValue { ($0.ws, $0.udp) }
        ws?.close(promise: nil); udp?.close(promise: nil)
        if first { onClosed(reason) }
    }

    // MARK: the two directions (on the bridge's event loop)

    // Both channels run on the bridge's one event loop: each direction writes what one read brought
    // and flushes once when the read is complete (one TLS write, one sendmmsg per burst).
    private lazy var tunnelAddress = try? SocketAddress(ipAddress: "127.0.0.1", port: Int(tunnelPort))

    /// Messages from the relay go to the tunnel as UDP GSO trains: consecutive messages of one
    /// size (the last of a train may be shorter) leave in one send, which the tunnel's socket takes
    /// whole with UDP GRO (one datagram per send cost the bridge most of its time, in the kernel).
    func fromRelay(_ message: ByteBuffer) {
        let n = message.readableBytes
        guard n > 0 else { return }
        if trainCount > 0, !(trainOpen && n <= trainSize && trainCount < 64 && trainBytes.readableBytes + n <= 65000) { sendTrain() }
        if trainCount == 0 { trainSize = n; trainOpen = true }
        if n < trainSize { trainOpen = false }
        trainBytes.writeImmutableBuffer(message)
        trainCount += 1
    }

    func fromRelayDone() {
        sendTrain()
        state.withLockedValue { $0.udp }?.flush()
    }

    private func sendTrain() {
        defer { trainCount = 0; trainBytes = ByteBuffer() }
        guard trainCount > 0, let udp = state.withLockedValue({ $0.udp }), let to = tunnelAddress else { return }
        let segment = trainCount > 1 && gso ? trainSize : nil
        if trainCount > 1 && !gso {
            // No UDP GSO here: one datagram per message.
            var all = trainBytes
            while all.readableBytes > 0, let one = all.readSlice(length: min(trainSize, all.readableBytes)) {
                udp.write(AddressedEnvelope(remoteAddress: to, data: one), promise: nil)
            }
            return
        }
        udp.write(AddressedEnvelope(remoteAddress: to, data: trainBytes, metadata: .init(ecnState: .transportNotCapable, packetInfo: nil, segmentSize: segment)), promise: nil)
    }

    // On the bridge's event loop only (fromRelay): the train being built.
    private var trainCount = 0
    private var trainSize = 0, trainOpen = false
    private var trainBytes = ByteBuffer()
    private let gso = System.supportsUDPSegmentationOffload

    func fromTunnel(_ datagram: AddressedEnvelope<ByteBuffer>) {
        guard datagram.remoteAddress.port == Int(tunnelPort), let ws = state.withLockedValue({ $0.ws }), ws.isWritable else { return }
        // What one read of the tunnel's socket brought goes out as bundles (a 1.4 KB datagram per
        // WebSocket message cost swift-nio and TLS their per-message work each time).
        // A GRO train is split back into its datagrams.
        let step = datagram.metadata?.segmentSize ?? datagram.data.readableBytes
        var all = datagram.data
        while all.readableBytes > 0, let one = all.readSlice(length: min(max(step, 1), all.readableBytes)) {
            if outBundle.readableBytes + WebSocketBundle.cost(one.readableBytes) > WebSocketBundle.maxBytes { sendBundle(ws) }
            WebSocketBundle.append(one, to: &outBundle)
        }
    }

    /// The bundle so far, framed and masked here (a word at a time; swift-nio's encoder masks byte
    /// by byte) and written from just above TLS.
    private func sendBundle(_ ws: Channel) {
        guard outBundle.readableBytes > 0 else { return }
        if rawWriter == nil { rawWriter = try? ws.pipeline.syncOperations.context(name: RawFrameWriter.name) }
        if let raw = rawWriter {
            raw.write(NIOAny(MaskedBinaryFrame.encode(outBundle, key: maskingKeys.take(), allocator: ws.allocator)), promise: nil)
        }
        outBundle.clear()
    }

    // On the bridge's event loop only (fromTunnel).
    private var rawWriter: ChannelHandlerContext?
    private var maskingKeys = MaskingKeys()
    private var outBundle = ByteBuffer()

    func fromTunnelDone() {
        guard let ws = state.withLockedValue({ $0.ws }) else { return }
        sendBundle(ws)
        ws.flush()
    }
}

/// Sends the upgrade request once the connection is up (the upgrade handler adds its headers).
final class UpgradeRequester: ChannelInboundHandler, RemovableChannelHandler {
    static let name = "relay-upgrade-requester"
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    let target: WebSocketUDPBridge.Target
    let failed: EventLoopPromise<Channel>
    init(target: WebSocketUDPBridge.Target, failed: EventLoopPromise<Channel>) { self.target = target; self.failed = failed }

    func channelActive(context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        let host = target.host.contains(":") ? "[\(target.host)]" : target.host
        headers.add(name: "Host", value: target.port == 443 ? host : "\(host):\(target.port)")
        headers.add(name: "Content-Length", value: "0")
        context.write(wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: target.path, headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Reached only when the server did not upgrade.
        if case .head(let h) = unwrapInboundIn(data) {
            failed.fail(FrontDoorError("the relay answered \(h.status.code) instead of upgrading to a WebSocket (is its front door on, and the path \(target.path)?)"))
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failed.fail(error)
        context.close(promise: nil)
    }
}

final class BridgeWebSocketHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    let bridge: WebSocketUDPBridge
    init(bridge: WebSocketUDPBridge) { self.bridge = bridge }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .binary:  // frames from a server are not masked
            if WebSocketBundle.isBundle(frame.data) {
                if !WebSocketBundle.forEach(frame.data, { bridge.fromRelay($0) }) { context.close(promise: nil) }
            } else {
                bridge.fromRelay(frame.data)
            }
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)), promise: nil)
        case .connectionClose: context.close(promise: nil)
        default: break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) { bridge.fromRelayDone(); context.fireChannelReadComplete() }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

final class BridgeUDPHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let bridge: WebSocketUDPBridge
    init(bridge: WebSocketUDPBridge) { self.bridge = bridge }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { bridge.fromTunnel(unwrapInboundIn(data)) }
    func channelReadComplete(context: ChannelHandlerContext) { bridge.fromTunnelDone(); context.fireChannelReadComplete() }
}

import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOWebSocket

/// One HTTP/2 stream on the front door: a GET goes to its plain route; an extended CONNECT with
/// `:protocol websocket` (RFC 8441) to a WebSocket route turns the stream into that WebSocket
/// (its DATA frames carry WebSocket frames both ways).
final class HTTP2Router: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    let routes: FrontDoorRoutes
    let connection: ConnectionState
    let maxMessage: Int
    private var answered = false

    init(routes: FrontDoorRoutes, connection: ConnectionState, maxMessage: Int) {
        self.routes = routes; self.connection = connection; self.maxMessage = maxMessage
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .headers(let payload) = unwrapInboundIn(data), !answered else { return }
        let h = payload.headers
        answered = true
        connection.requestSeen()
        let method = h.first(name: ":method") ?? "", path = h.first(name: ":path") ?? "/"
        if method == "CONNECT" {
            guard h.first(name: ":protocol") == "websocket", let endpoint = routes.webSocketRoute(path) else {
                respond(context, .error(h.first(name: ":protocol") == nil ? 405 : 404, "not_found", "CONNECT: only `:protocol websocket` to a WebSocket route is served"), end: true)
                return
            }
            // RFC 8441 §5: 200 answers the CONNECT, the stream stays open for WebSocket frames.
            var headers = HPACKHeaders()
            headers.add(name: ":status", value: "200")
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
            let remote = connection.remote, stats = connection.stats
            let sync = context.pipeline.syncOperations
            do {
                try sync.addHandlers([HTTP2WebSocketData(),
                                      ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: maxMessage)),
                                      WebSocketFrameEncoder(),
                                      NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 1, maxAccumulatedFrameCount: 64, maxAccumulatedFrameSize: maxMessage),
                                      WebSocketBridge(endpoint: endpoint, remote: remote, counters: stats)])
                sync.removeHandler(context: context, promise: nil)
            } catch {
                context.close(promise: nil)
            }
            return
        }
        let request = FrontDoorRequest(method: method, path: path, headers: h.map { ($0.name, $0.value) }, remote: connection.remote, httpVersion: "h2")
        connection.stats.bump(\.requestsHTTP2)
        if let r = routes.plainRoute(path) {
            respond(context, method == "GET" || method == "HEAD" ? r(request) : .error(405, "method_not_allowed", "\(method) \(path): only GET is served here"),
                    end: true, head: method == "HEAD")
        } else if routes.webSocketRoute(path) != nil {
            respond(context, .error(400, "websocket_route", "\(path) is a WebSocket: open it with an extended CONNECT (:protocol websocket)"), end: true)
        } else {
            connection.stats.bump(\.notFound)
            respond(context, .error(404, "not_found", "no route for \(path)"), end: true)
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ r: FrontDoorResponse, end: Bool, head: Bool = false) {
        var headers = HPACKHeaders()
        headers.add(name: ":status", value: String(r.status))
        headers.add(name: "content-type", value: r.contentType)
        headers.add(name: "content-length", value: String(r.body.count))
        headers.add(name: "server", value: "relayd")
        if head || r.body.isEmpty {
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers, endStream: true))), promise: nil)
            return
        }
        context.write(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        var buf = context.channel.allocator.buffer(capacity: r.body.count)
        buf.writeBytes(r.body)
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(buf), endStream: end))), promise: nil)
    }
}

/// An HTTP/2 stream's DATA frames as a byte stream (for the WebSocket codec above it), and bytes
/// written back as DATA frames; the peer ending the stream closes it.
final class HTTP2WebSocketData: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .data(let d):
            if case .byteBuffer(let b) = d.data, b.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(b)) }
            if d.endStream { context.close(promise: nil) }
        case .headers(let h):
            if h.endStream { context.close(promise: nil) }
        case .rstStream:
            context.close(promise: nil)
        default:
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(unwrapOutboundIn(data))))), promise: promise)
    }
}

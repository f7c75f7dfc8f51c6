import NIOCore
import NIOHTTP1

/// HTTP/1.1 requests on the front door: each goes to its plain route (WebSocket routes are taken
/// by the upgrader before this handler sees them); anything else gets a JSON 404.
final class HTTP1Router: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let name = "relay-http1-router"
    let routes: FrontDoorRoutes
    let connection: ConnectionState
    private var head: HTTPRequestHead?

    init(routes: FrontDoorRoutes, connection: ConnectionState) { self.routes = routes; self.connection = connection }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            connection.requestSeen()
        case .body:
            break  // no route takes a body yet
        case .end:
            guard let h = head else { return }
            head = nil
            let request = FrontDoorRequest(method: h.method.rawValue, path: h.uri, headers: h.headers.map { ($0.name, $0.value) },
                                           remote: connection.remote, httpVersion: "http/1.1")
            let response: FrontDoorResponse
            connection.stats.bump(\.requestsHTTP1)
            if let r = routes.plainRoute(h.uri) {
                response = h.method == .GET || h.method == .HEAD ? r(request)
                    : .error(405, "method_not_allowed", "\(h.method.rawValue) \(h.uri): only GET is served here")
            } else if routes.webSocketRoute(h.uri) != nil {
                response = .error(426, "upgrade_required", "\(h.uri) is a WebSocket: send Upgrade: websocket (HTTP/1.1) or an extended CONNECT (HTTP/2)")
            } else {
                connection.stats.bump(\.notFound)
                response = .error(404, "not_found", "no route for \(h.uri)")
            }
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: response.contentType)
            headers.add(name: "content-length", value: String(response.body.count))
            headers.add(name: "server", value: "relayd")
            if !h.isKeepAlive { headers.add(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: .init(statusCode: response.status), headers: headers))), promise: nil)
            if h.method != .HEAD {
                var buf = context.channel.allocator.buffer(capacity: response.body.count)
                buf.writeBytes(response.body)
                context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
            }
            let keep = h.isKeepAlive, channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in if !keep { channel.close(promise: nil) } }
        }
    }
}

import NIOCore
import NIOWebSocket

/// One WebSocket connection (after an HTTP/1.1 Upgrade or an RFC 8441 CONNECT) bridged to its
/// route's session: binary messages in, pings answered, unmasked client frames and text refused,
/// close echoed. Messages arrive whole (NIOWebSocketFrameAggregator sits below, with the caps).
final class WebSocketBridge: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let endpoint: any WebSocketEndpoint
    let remote: String
    let counters: FrontDoorStats
    private var session: (any WebSocketSession)?
    private var sender: WebSocketSender?
    private var closing = false

    init(endpoint: any WebSocketEndpoint, remote: String, counters: FrontDoorStats) {
        self.endpoint = endpoint; self.remote = remote; self.counters = counters
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        start(context)
    }

    func channelActive(context: ChannelHandlerContext) {
        if session == nil && !closing { start(context) }
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard session == nil else { return }
        let out = WebSocketSender(channel: context.channel)
        if let s = endpoint.open(remote: remote, sender: out) {
            session = s
            sender = out
            counters.bump(\.webSocketsOpened)
        } else {
            counters.bump(\.webSocketsRefused)
            close(context, .policyViolation)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        // RFC 6455 §5.1: a client masks every frame; a server closes on an unmasked one.
        guard frame.maskKey != nil else { counters.bump(\.webSocketProtocolErrors); close(context, .protocolError); return }
        switch frame.opcode {
        case .binary:
            guard let s = session else { return }
            var data = WebSocketMasking.unmasked(frame)
            counters.bump(\.webSocketMessagesIn)
            guard WebSocketBundle.isBundle(data) else { s.received(data.readBytes(length: data.readableBytes) ?? []); return }
            // Several messages: the client takes bundles back from now on.
            sender?.bundles = true
            let whole = WebSocketBundle.forEach(data) { m in s.received(Array(m.readableBytesView)) }
            if !whole { counters.bump(\.webSocketProtocolErrors); close(context, .dataInconsistentWithMessage) }
        case .ping:
            var data = frame.unmaskedData
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: data.readSlice(length: data.readableBytes) ?? context.channel.allocator.buffer(capacity: 0))
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .pong:
            break
        case .connectionClose:
            if closing { context.close(promise: nil); return }
            closing = true
            var data = frame.unmaskedData
            let code = data.readWebSocketErrorCode() ?? .normalClosure
            var buf = context.channel.allocator.buffer(capacity: 2)
            buf.write(webSocketErrorCode: code)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: buf))).whenComplete { _ in channel.close(promise: nil) }
        case .text:
            counters.bump(\.webSocketProtocolErrors)
            close(context, .unacceptableData)
        default:
            counters.bump(\.webSocketProtocolErrors)
            close(context, .protocolError)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        session?.closed()
        session = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Oversized or malformed frames (the decoder and the aggregator throw); anything else (a
        // reset connection) just ends it.
        if let e = error as? NIOWebSocketError {
            counters.bump(\.webSocketProtocolErrors)
            close(context, e == .invalidFrameLength ? .messageTooLarge : .protocolError)
        } else {
            context.close(promise: nil)
        }
    }

    private func close(_ context: ChannelHandlerContext, _ code: WebSocketErrorCode) {
        guard !closing else { return }
        closing = true
        var buf = context.channel.allocator.buffer(capacity: 2)
        buf.write(webSocketErrorCode: code)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: buf))).whenComplete { _ in channel.close(promise: nil) }
    }
}

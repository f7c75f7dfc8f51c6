import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOWebSocket

/// What the front door serves: plain request/response routes and WebSocket routes, by path. Each
/// route is its own handler; adding one touches no other. HTTP/1.1 and HTTP/2 reach the same
/// routes (a WebSocket route by HTTP/1.1 Upgrade or by RFC 8441 extended CONNECT).
public struct FrontDoorRoutes: Sendable {
    /// Exact paths ("/") or prefixes ending in "/" ("/devices/").
    public var plain: [String: @Sendable (FrontDoorRequest) -> FrontDoorResponse] = [:]
    public var webSockets: [String: any WebSocketEndpoint] = [:]
    public init() {}

    func plainRoute(_ path: String) -> (@Sendable (FrontDoorRequest) -> FrontDoorResponse)? {
        let p = path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? path
        if let r = plain[p] { return r }
        return plain.first { $0.key.hasSuffix("/") && $0.key.count > 1 && p.hasPrefix($0.key) }?.value
    }

    func webSocketRoute(_ path: String) -> (any WebSocketEndpoint)? {
        webSockets[path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? path]
    }
}

public struct FrontDoorRequest: Sendable {
    public var method: String
    public var path: String
    public var headers: [(String, String)]
    /// The client's address (IP and port), as the TCP connection shows it.
    public var remote: String
    /// "h2" or "http/1.1".
    public var httpVersion: String
}

public struct FrontDoorResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    public init(status: Int, contentType: String = "application/json", body: [UInt8]) {
        self.status = status; self.contentType = contentType; self.body = body
    }
    public static func json<T: Encodable>(_ value: T, status: Int = 200) -> FrontDoorResponse {
        let e = JSONEncoder(); e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]; e.dateEncodingStrategy = .iso8601
        return FrontDoorResponse(status: status, body: Array((try? e.encode(value)) ?? Data("{}".utf8)) + [0x0a])
    }
    /// An error as JSON: `{"error": {"code": ..., "message": ...}}`.
    public static func error(_ status: Int, _ code: String, _ message: String) -> FrontDoorResponse {
        json(["error": ["code": code, "message": message]], status: status)
    }
}

/// A WebSocket route: decides whether to take a connection, then gets its binary messages.
public protocol WebSocketEndpoint: AnyObject, Sendable {
    /// A client asks to open a WebSocket: a session, or nil to refuse (the reason is logged by the
    /// endpoint and the connection closed with 1008 "policy violation").
    func open(remote: String, sender: WebSocketSender) -> (any WebSocketSession)?
}

public protocol WebSocketSession: AnyObject, Sendable {
    /// One whole binary message (fragments joined; at most the front door's message cap).
    func received(_ message: [UInt8])
    /// The connection is gone (either side closed it, or it failed).
    func closed()
}

/// Sends binary messages on one WebSocket from any thread, without waiting: messages queue on the
/// connection's event loop up to `limit`; beyond that, or while the connection cannot take more
/// (a slow client), a message is dropped and counted, so a slow client never holds up its sender.
public final class WebSocketSender: @unchecked Sendable {
    let channel: Channel
    let limit: Int
    private let droppedBox = NIOLockedValueBox(0)

    init(channel: Channel, limit: Int = 512) { self.channel = channel; self.limit = limit }

    /// Messages dropped because the client did not keep up.
    public var dropped: Int { droppedBox.withLockedValue { $0 } }

    /// Queues one binary message; false when it was dropped.
    /// Messages waiting for the event loop; one task drains them all and flushes once (a burst
    /// becomes one TLS write, not one per message).
    private let pending = NIOLockedValueBox<(messages: [[UInt8]], scheduled: Bool)>(([], false))
    private let bundlesBox = NIOLockedValueBox(false)

    /// Whether the client takes bundles (it sent one): then a burst goes in as few binary messages
    /// as fit (`WebSocketBundle`), not one per message.
    public var bundles: Bool {
        get { bundlesBox.withLockedValue { $0 } }
        set { bundlesBox.withLockedValue { $0 = newValue } }
    }

    @discardableResult
    public func send(_ message: [UInt8]) -> Bool {
        let (ok, schedule) = pending.withLockedValue { p -> (Bool, Bool) in
            guard p.messages.count < limit else { return (false, false) }
            p.messages.append(message)
            defer { p.scheduled = true }
            return (true, !p.scheduled)
        }
        guard ok else { droppedBox.withLockedValue { $0 += 1 }; return false }
        guard schedule else { return true }
        let channel = self.channel, pending = self.pending, droppedBox = self.droppedBox, bundlesBox = self.bundlesBox
        channel.eventLoop.execute {
            let batch = pending.withLockedValue { p -> [[UInt8]] in
                defer { p.messages.removeAll(keepingCapacity: true); p.scheduled = false }
                return p.messages
            }
            guard channel.isActive else { return }
            var wrote = 0
            if bundlesBox.withLockedValue({ $0 }) {
                var bundle = channel.allocator.buffer(capacity: WebSocketBundle.maxBytes)
                func emit() {
                    guard bundle.readableBytes > 0 else { return }
                    channel.write(WebSocketFrame(fin: true, opcode: .binary, data: bundle), promise: nil)
                    bundle = channel.allocator.buffer(capacity: WebSocketBundle.maxBytes)
                }
                for m in batch {
                    guard channel.isWritable else { droppedBox.withLockedValue { $0 += batch.count - wrote }; break }
                    if bundle.readableBytes + WebSocketBundle.cost(m.count) > WebSocketBundle.maxBytes { emit() }
                    if WebSocketBundle.cost(m.count) + 1 > WebSocketBundle.maxBytes {
                        // Too big for a bundle: a message of its own.
                        var buf = channel.allocator.buffer(capacity: m.count)
                        buf.writeBytes(m)
                        channel.write(WebSocketFrame(fin: true, opcode: .binary, data: buf), promise: nil)
                        wrote += 1
                        continue
                    }
                    if bundle.readableBytes == 0 { bundle.writeInteger(WebSocketBundle.type) }
                    bundle.writeInteger(UInt16(m.count), endianness: .little)
                    bundle.writeBytes(m)
                    wrote += 1
                }
                emit()
                channel.flush()
                return
            }
            for m in batch {
                guard channel.isWritable else { droppedBox.withLockedValue { $0 += batch.count - wrote }; break }
                var buf = channel.allocator.buffer(capacity: m.count)
                buf.writeBytes(m)
                channel.write(WebSocketFrame(fin: true, opcode: .binary, data: buf), promise: nil)
                wrote += 1
            }
            channel.flush()
        }
        return true
    }

    /// Closes the WebSocket (status 1000, or `code`).
    public func close(code: WebSocketErrorCode = .normalClosure) {
        let channel = self.channel
        channel.eventLoop.execute {
            var buf = channel.allocator.buffer(capacity: 2)
            buf.write(webSocketErrorCode: code)
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, data: buf)).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

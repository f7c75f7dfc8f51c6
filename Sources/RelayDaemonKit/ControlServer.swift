import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import RelayControlAPI
import RelayStore
import RelayCore
import RelayIPC
import RelayWire

/// struct ucred (linux/socket.h), which Glibc hides behind _GNU_SOURCE: same layout.
struct LinuxUcred: Sendable { var pid: Int32 = 0; var uid: UInt32 = 0; var gid: UInt32 = 0 }

/// Who is asking, and what they may do (from SO_PEERCRED; groups from /proc/PID/status).
struct ControlPeer {
    var uid: UInt32
    var gid: UInt32
    var pid: Int32
    var canWrite: Bool
    var canRead: Bool
}

/// Bounds on the control socket: connections at once (and per uid), how long a connection may
/// stay silent or take to send a request, and how large a request body may be.
public struct ControlLimits: Sendable {
    public var maxConnections = 64
    public var maxConnectionsPerUID = 16
    public var idleSeconds: Int64 = 30
    public var maxBody = 64 * 1024
    public init() {}
}

/// Open control connections per uid (all of them counted on the server's one event loop thread,
/// but guarded anyway: the initializer may run elsewhere in tests).
final class ControlConnections: @unchecked Sendable {
    private let lock = NSLock()
    private var total = 0
    private var perUID: [UInt32: Int] = [:]
    func take(_ uid: UInt32, _ l: ControlLimits) -> String? {
        lock.lock(); defer { lock.unlock() }
        if perUID[uid, default: 0] >= l.maxConnectionsPerUID { return "uid \(uid) already has \(l.maxConnectionsPerUID) control connections open; close some and retry" }
        if total >= l.maxConnections { return "\(l.maxConnections) control connections are open; retry later" }
        total += 1; perUID[uid, default: 0] += 1
        return nil
    }
    func give(_ uid: UInt32) {
        lock.lock(); defer { lock.unlock() }
        total -= 1; perUID[uid, default: 1] -= 1
        if perUID[uid] == 0 { perUID[uid] = nil }
    }
}

/// relayd's control API: HTTP/1.1 + JSON on a Unix socket, served by SwiftNIO.
public final class ControlServer: @unchecked Sendable {
    let daemon: Daemon
    let logger: Logger
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let work = DispatchQueue(label: "relayd.control", attributes: .concurrent)
    var channel: Channel?
    let listener: UnixListener
    let readGID: UInt32?
    let limits: ControlLimits
    let connections = ControlConnections()

    public init(daemon: Daemon, logger: Logger, limits: ControlLimits = ControlLimits()) throws {
        self.daemon = daemon
        self.logger = logger
        self.limits = limits
        let path = daemon.options.controlSocket
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        // Mode 0666: the permission decision is made per request from SO_PEERCRED, so that a stranger
        // gets a clear "permission denied: ..." instead of EACCES.
        listener = try UnixListener(path: path, mode: 0o666)
        readGID = getgrnam(daemon.options.readGroup).map { $0.pointee.gr_gid }
    }

    public func start() throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .childChannelInitializer { [self] ch in
                self.identify(ch).flatMap { peer in
                    // Bounded per uid and in all: over the bound, a clear 503 and the connection closes.
                    var refusal: String? = "cannot identify the peer (SO_PEERCRED)"
                    if let peer {
                        refusal = self.connections.take(peer.uid, self.limits)
                        if refusal == nil { ch.closeFuture.whenComplete { _ in self.connections.give(peer.uid) } }
                    }
                    return ch.eventLoop.makeCompletedFuture {
                        let ops = ch.pipeline.syncOperations
                        // No pipelining assistance: this handler answers unasked (busy, timeout) and
                        // takes one request at a time itself.
                        try ops.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
                        try ops.addHandler(IdleStateHandler(readTimeout: .seconds(self.limits.idleSeconds)))
                        try ops.addHandler(ControlHTTPHandler(server: self, peer: peer, refusal: refusal, maxBody: self.limits.maxBody))
                    }
                }
            }
        // NIO owns the descriptor from here on (and closes it); the listener must not close it too.
        channel = try bootstrap.withBoundSocket(listener.releaseDescriptor()).wait()
        logger.info("control API on \(listener.path) (read: group \(daemon.options.readGroup)\(readGID == nil ? " (no such group)" : ""); change: root and uid \(getuid()))")
    }

    public func stop() {
        try? channel?.close().wait()
        listener.removeSocketFile()
        try? group.syncShutdownGracefully()
    }

    func identify(_ ch: Channel) -> EventLoopFuture<ControlPeer?> {
        guard let provider = ch as? SocketOptionProvider else { return ch.eventLoop.makeSucceededFuture(nil) }
        let readGID = self.readGID
        return provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
            .map { (cred: LinuxUcred) -> ControlPeer? in
                let canWrite = cred.uid == 0 || cred.uid == getuid()
                var canRead = canWrite
                if !canRead, let g = readGID {
                    canRead = cred.gid == g || ControlServer.supplementaryGroups(pid: cred.pid).contains(g)
                }
                return ControlPeer(uid: cred.uid, gid: cred.gid, pid: cred.pid, canWrite: canWrite, canRead: canRead)
            }
            .recover { _ in nil }
    }

    static func supplementaryGroups(pid: Int32) -> [UInt32] {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Groups:") }) else { return [] }
        return line.dropFirst(7).split(separator: " ").compactMap { UInt32($0.trimmingCharacters(in: .whitespaces)) }
    }

    /// The query of a request URI as a dictionary (percent-decoded, '+' kept as is: base64 keys;
    /// the last value of a name wins).
    static func query(_ uri: String) -> [String: String] {
        guard let q = uri.split(separator: "?", maxSplits: 1).dropFirst().first else { return [:] }
        var out: [String: String] = [:]
        for pair in q.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard let k = kv.first?.removingPercentEncoding else { continue }
            out[k] = kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? "") : ""
        }
        return out
    }

    /// Routes one request; runs off the event loop (some requests wait for the helper).
    func handle(method: HTTPMethod, uri: String, peer: ControlPeer?) -> (HTTPResponseStatus, Data) {
        let enc = ControlJSON.encoder()
        func fail(_ s: HTTPResponseStatus, _ e: WireError) -> (HTTPResponseStatus, Data) { (s, (try? enc.encode(ControlErrorBody(e))) ?? Data()) }
        func ok<T: Encodable>(_ v: T) -> (HTTPResponseStatus, Data) {
            do { return (.ok, try enc.encode(v)) } catch { return fail(.internalServerError, WireError("control.internal", "\(error)")) }
        }
        let path = String(uri.split(separator: "?", maxSplits: 1).first ?? "")
        guard let route = ControlRoute(rawValue: path) else {
            return fail(.notFound, WireError("control.not_found", "no such endpoint \(path.prefix(100)); known: \(ControlRoute.allCases.map(\.rawValue).joined(separator: ", "))"))
        }
        guard method.rawValue == route.method else {
            return fail(.methodNotAllowed, WireError("control.method", "\(route.rawValue) takes \(route.method)"))
        }
        guard let peer else { return fail(.forbidden, WireError(WireError.permissionDenied, "cannot identify the peer (SO_PEERCRED)")) }
        if route.needsWrite ? !peer.canWrite : !peer.canRead {
            let what = route.needsWrite
                ? "permission denied: \(route.rawValue) needs root or relayd's own user (uid \(getuid())): use sudo"
                : "permission denied: add yourself to group \(daemon.options.readGroup) (usermod -aG \(daemon.options.readGroup) $USER, then log in again), or use sudo"
            logger.notice("refused \(method.rawValue) \(route.rawValue) from uid \(peer.uid) pid \(peer.pid)")
            return fail(.forbidden, WireError(WireError.permissionDenied, what, context: ["uid": String(peer.uid)]))
        }
        switch route {
        case .status: return ok(daemon.status())
        case .sites: return ok(daemon.sites())
        case .peers: return ok(daemon.peers())
        case .paths:
            let name = ControlServer.query(uri)["peer"] ?? ""
            guard let v = daemon.tunnel.pathsView(peer: name) else {
                return fail(.notFound, WireError("paths.no_peer", "no peer named '\(name.prefix(80))': `relayctl peers` lists them"))
            }
            return ok(v)
        case .config: return ok(daemon.currentConfig)
        case .sessions: return ok(daemon.sessions())
        case .reflect: return ok(daemon.reflect())
        case .relay:
            guard let r = daemon.relayStatus() else {
                return fail(.serviceUnavailable, WireError("relay.off", "this node is not a relay: set [relay] enabled = true (with allowed_keys or tokens) in its configuration"))
            }
            return ok(r)
        case .relayDevices, .relayRelease, .relayAdmission:
            guard let r = daemon.relayServer else {
                return fail(.serviceUnavailable, WireError("relay.off", "this node is not a relay: set [relay] enabled = true (with allowed_keys or tokens) in its configuration"))
            }
            let q = ControlServer.query(uri)
            switch route {
            case .relayRelease:
                guard let name = q["callsign"], !name.isEmpty else { return fail(.badRequest, WireError("relay.usage", "release needs ?callsign=NAME")) }
                guard let store = r.store else { return fail(.serviceUnavailable, WireError("relay.store", r.storeProblem ?? "no relay store")) }
                do {
                    guard try store.release(name) else { return fail(.notFound, WireError("relay.no_callsign", "nobody holds the callsign \(name.uppercased())")) }
                } catch { return fail(.internalServerError, WireError("relay.store", "\(error)")) }
                logger.notice("relay event=callsign_released callsign=\(name.uppercased()) by=uid_\(peer.uid)")
                return ok(r.devices())
            case .relayAdmission:
                guard let list = q["list"].flatMap(RelayStore.Admission.init(rawValue:)), let subject = q["subject"], !subject.isEmpty else {
                    return fail(.badRequest, WireError("relay.usage", "admission needs ?list=allow|block&subject=KEY-OR-CALLSIGN[&on=false]"))
                }
                let isKey = Data(base64Encoded: subject)?.count == 32
                if !isKey, case .failure(let p) = Callsign.normalize(subject) {
                    return fail(.badRequest, WireError("relay.usage", "\(subject.prefix(60)) is neither a node key (44 characters of base64) nor a callsign: \(p)"))
                }
                guard let store = r.store else { return fail(.serviceUnavailable, WireError("relay.store", r.storeProblem ?? "no relay store")) }
                let on = q["on"] != "false"
                do { try store.setAdmission(list, subject, on: on, now: Date().timeIntervalSince1970) } catch { return fail(.internalServerError, WireError("relay.store", "\(error)")) }
                r.refreshAdmission()
                logger.notice("relay event=admission list=\(list.rawValue) subject=\(subject) \(on ? "added" : "removed") by=uid_\(peer.uid)")
                return ok(r.devices())
            default:
                return ok(r.devices())
            }
        case .kernel:
            do { return ok(try daemon.helper.observe()) } catch let e as WireError {
                return fail(.serviceUnavailable, e)
            } catch { return fail(.serviceUnavailable, WireError("helper.unreachable", "\(error)")) }
        case .reload:
            logger.info("reload requested by uid \(peer.uid) pid \(peer.pid)")
            switch daemon.reload(trigger: "relayctl reload by uid \(peer.uid)") {
            case .success(let r):
                // Report whether the helper took it (it applies asynchronously; wait briefly).
                if daemon.helper.snapshot.connected, let err = daemon.helper.waitApplied(timeout: 5), daemon.helper.snapshot.connected {
                    return fail(.badGateway, WireError("helper.apply_failed", "the new configuration is in force but relay-helper did not apply it: \(err)"))
                }
                return ok(r)
            case .failure(let e): return fail(.unprocessableEntity, e)
            }
        }
    }
}

/// One control connection. Its state changes in one place per event: waiting for a request,
/// refusing one (too large, busy: the answer goes out and the connection closes without reading
/// further), or closed.
final class ControlHTTPHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart
    let server: ControlServer
    let peer: ControlPeer?
    let refusal: String?
    let maxBody: Int
    var head: HTTPRequestHead?
    var bodyBytes = 0
    var refused = false
    var inFlight = false

    init(server: ControlServer, peer: ControlPeer?, refusal: String? = nil, maxBody: Int = 64 * 1024) {
        self.server = server; self.peer = peer; self.refusal = refusal; self.maxBody = maxBody
    }

    static func errorBody(_ code: String, _ message: String) -> Data {
        (try? ControlJSON.encoder().encode(ControlErrorBody(WireError(code, message)))) ?? Data()
    }

    func channelActive(context: ChannelHandlerContext) {
        if let refusal {
            refused = true
            respond(context, .serviceUnavailable, Self.errorBody("control.busy", refusal), keepAlive: false)
        }
        context.fireChannelActive()
    }

    /// No request (or no whole one) within the idle time: a 408 and close.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent, !refused, !inFlight {
            refused = true
            respond(context, .requestTimeout, Self.errorBody("control.timeout", "no complete request within \(server.limits.idleSeconds) s"), keepAlive: false)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }  // the answer is out; what the client still sends is dropped
        switch unwrapInboundIn(data) {
        case .head(let h):
            if inFlight {
                refused = true
                respond(context, .badRequest, Self.errorBody("control.pipelined", "one request at a time: wait for the answer before the next request"), keepAlive: false)
                return
            }
            head = h; bodyBytes = 0
            if let declared = h.headers.first(name: "Content-Length").flatMap(Int.init), declared > maxBody { tooLarge(context) }
        case .body(let b):
            bodyBytes += b.readableBytes
            if bodyBytes > maxBody { tooLarge(context) }
        case .end:
            guard let h = head else { return }
            head = nil
            let keepAlive = h.isKeepAlive
            let loop = context.eventLoop
            let ctx = NIOLoopBound(context, eventLoop: loop)
            inFlight = true
            server.work.async { [self] in
                let (status, body) = server.handle(method: h.method, uri: h.uri, peer: peer)
                loop.execute {
                    self.inFlight = false
                    if !self.refused { self.respond(ctx.value, status, body, keepAlive: keepAlive) }
                }
            }
        }
    }

    /// Refuses as soon as the body passes the bound: the rest is never read.
    func tooLarge(_ context: ChannelHandlerContext) {
        refused = true
        head = nil
        respond(context, .payloadTooLarge, Self.errorBody("control.too_large", "request body over \(maxBody / 1024) KiB: the control API takes no large bodies"), keepAlive: false)
    }

    func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ body: Data, keepAlive: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.count + 1))
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        var buf = context.channel.allocator.buffer(capacity: body.count + 1)
        buf.writeBytes(body)
        buf.writeString("\n")
        context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive { done.whenComplete { _ in context.close(promise: nil) } }
    }
}

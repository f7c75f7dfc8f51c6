import CRelayShim
import RelayWire
#if canImport(Glibc)
import Glibc
#endif

public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    /// Supplementary groups (SO_PEERGROUPS), as the kernel recorded them when the peer connected.
    public var groups: [UInt32]
    public init(pid: Int32, uid: UInt32, gid: UInt32, groups: [UInt32] = []) {
        self.pid = pid; self.uid = uid; self.gid = gid; self.groups = groups
    }
}

public struct IPCError: Error, CustomStringConvertible {
    public var errno: Int32
    public var message: String
    public init(_ message: String, errno: Int32 = 0) { self.message = message; self.errno = errno }
    public var description: String { errno == 0 ? message : "\(message): \(String(cString: strerror(errno)))" }
}

/// A connected AF_UNIX stream socket carrying length-prefixed frames, optionally with one file
/// descriptor attached to a frame (SCM_RIGHTS).
public final class UnixConnection: @unchecked Sendable {  // used by one thread at a time
    public private(set) var fd: Int32
    private var decoder: FrameDecoder
    private var pendingFD: Int32 = -1
    private var chunk = [UInt8](repeating: 0, count: 64 * 1024)

    public init(fd: Int32, maxFrame: Int) {
        self.fd = fd
        decoder = FrameDecoder(maxFrame: maxFrame)
    }
    deinit { close() }

    /// Ends a conversation the server refuses without losing its answer: stops sending, then reads
    /// and discards what the client still sends (bounded in bytes and time) before closing, so a
    /// client that is still writing is not cut off before it reads the refusal.
    public func lingerClose(seconds: Int = 1, maxBytes: Int = 1 << 20) {
        guard fd >= 0 else { return }
        shutdown(fd, Int32(SHUT_WR))
        setReceiveTimeout(seconds: seconds)
        var total = 0
        let deadline = time(nil) + seconds
        while total < maxBytes && time(nil) <= deadline {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 { break }
            total += n
        }
        close()
    }

    public func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
        if pendingFD >= 0 { Glibc.close(pendingFD); pendingFD = -1 }
    }

    /// Connects to `path`. The error says whether the socket is missing or refused.
    public static func connect(path: String, maxFrame: Int = 64 << 20) throws -> UnixConnection {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw IPCError("socket", errno: errno) }
        var addr = try sockaddrUn(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { let e = errno; Glibc.close(s); throw IPCError("cannot connect to \(path)", errno: e) }
        return UnixConnection(fd: s, maxFrame: maxFrame)
    }

    /// The kernel's record of the peer (taken at connect, not claimed by it): SO_PEERCRED and
    /// SO_PEERGROUPS.
    public func peerCredentials() throws -> PeerCredentials {
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        let rc = CRelayShim_peer_credentials(fd, &pid, &uid, &gid)
        guard rc == 0 else { throw IPCError("SO_PEERCRED", errno: -rc) }
        var groups = [UInt32](repeating: 0, count: 64)
        var n = CRelayShim_peer_groups(fd, &groups, Int32(groups.count))
        if n == -ERANGE {  // NGROUPS_MAX is 65536
            groups = [UInt32](repeating: 0, count: 65536)
            n = CRelayShim_peer_groups(fd, &groups, Int32(groups.count))
        }
        guard n >= 0 else { throw IPCError("SO_PEERGROUPS", errno: -n) }
        return PeerCredentials(pid: pid, uid: uid, gid: gid, groups: Array(groups.prefix(Int(n))))
    }

    /// Seconds after which a blocked read gives up (a client that sends half a frame cannot hold a
    /// server thread forever).
    public func setReceiveTimeout(seconds: Int) { setReceiveTimeout(milliseconds: seconds * 1000) }

    public func setReceiveTimeout(milliseconds ms: Int) {
        var tv = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends without ever waiting (a refusal to a client that does not read must not hold the
    /// server): what does not fit now is dropped with the connection.
    public func sendNow(_ payload: [UInt8]) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        try? send(payload)
        _ = fcntl(fd, F_SETFL, flags)
    }

    /// Next frame, with deadlines: `idle` for the first byte of a frame (a client that sends
    /// nothing), `frame` from the first byte to the last (a client that sends half a frame, or
    /// one byte at a time). nil at a clean end of stream; a timeout throws with errno ETIMEDOUT.
    public func receive(idleMilliseconds idle: Int, frameMilliseconds frame: Int) throws -> (payload: [UInt8], descriptor: Int32)? {
        var frameDeadline: UInt64?
        while true {
            if case .frame(let f) = try decoder.next() {
                let d = pendingFD
                pendingFD = -1
                return (f, d)
            }
            let now = UnixConnection.monotonicMilliseconds()
            if decoder.buffered > 0 && frameDeadline == nil { frameDeadline = now + UInt64(frame) }
            let wait: Int
            if let dl = frameDeadline {
                guard dl > now else { throw IPCError("a frame did not arrive whole within \(frame) ms", errno: ETIMEDOUT) }
                wait = Int(dl - now)
            } else { wait = idle }
            setReceiveTimeout(milliseconds: max(wait, 1))
            guard try readChunk() else { return nil }
            if frameDeadline == nil && decoder.buffered == 0 { continue }
        }
    }

    static func monotonicMilliseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    /// One read into the decoder. False at a clean end of stream.
    private func readChunk() throws -> Bool {
        var got: Int32 = -1, truncated: Int32 = 0
        let n = chunk.withUnsafeMutableBytes { CRelayShim_recv_with_fd(fd, $0.baseAddress, $0.count, &got, &truncated) }
        if got >= 0 {
            if pendingFD >= 0 { Glibc.close(pendingFD) }
            pendingFD = got
        }
        if n < 0 {
            if Int32(-n) == EAGAIN { throw IPCError(decoder.buffered > 0 ? "timed out waiting for the rest of a frame" : "timed out waiting for a request", errno: ETIMEDOUT) }
            throw IPCError("receive", errno: Int32(-n))
        }
        if n == 0 {
            if decoder.buffered > 0 { throw IPCError("connection closed in the middle of a frame") }
            return false
        }
        decoder.feed(chunk[0..<n])
        return true
    }

    /// Sends one frame; `passing` attaches a descriptor to its first byte.
    public func send(_ payload: [UInt8], passing descriptor: Int32 = -1) throws {
        let bytes = FrameEncoder.frame(payload)
        var off = 0
        var attach = descriptor
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { CRelayShim_send_with_fd(fd, $0.baseAddress, $0.count, attach) }
            if n < 0 { throw IPCError("send", errno: Int32(-n)) }
            off += n
            attach = -1
        }
    }

    /// Next frame and any descriptor that came with it; nil at a clean end of stream. Waits as long
    /// as the socket's receive timeout allows.
    public func receive() throws -> (payload: [UInt8], descriptor: Int32)? {
        while true {
            if case .frame(let f) = try decoder.next() {
                let d = pendingFD
                pendingFD = -1
                return (f, d)
            }
            guard try readChunk() else { return nil }
        }
    }
}

func sockaddrUn(_ path: String) throws -> sockaddr_un {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw IPCError("socket path too long: \(path)") }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        for (i, b) in bytes.enumerated() { raw[i] = b }
    }
    return addr
}

/// A listening AF_UNIX stream socket. The file is created with its final mode by bind itself (the
/// umask is set to the complement of `mode` around it): no window in which it has another mode,
/// and no chmod on a path someone could have replaced. A group, if given, only narrows who may
/// connect (the file is first owned by the process's own group).
public final class UnixListener {
    public private(set) var fd: Int32
    public let path: String

    public init(path: String, mode: mode_t = 0o660, group: gid_t? = nil, backlog: Int32 = 16) throws {
        self.path = path
        if access(path, F_OK) == 0 {
            // Refuse to steal a live socket; replace a stale one.
            if let probe = try? UnixConnection.connect(path: path) {
                probe.close()
                throw IPCError("\(path) is in use by another process: stop it first or choose --socket")
            }
            unlink(path)
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw IPCError("socket", errno: errno) }
        var addr = try sockaddrUn(path)
        let old = umask(~mode & 0o777)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        umask(old)
        guard rc == 0 else { let e = errno; Glibc.close(s); throw IPCError("cannot bind \(path)", errno: e) }
        if let group { _ = chown(path, UInt32.max, group) }
        guard listen(s, backlog) == 0 else { let e = errno; Glibc.close(s); throw IPCError("listen on \(path)", errno: e) }
        fd = s
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    /// Hands the descriptor to a new owner (e.g. SwiftNIO, which closes it): this listener no
    /// longer closes it.
    public func releaseDescriptor() -> Int32 {
        let d = fd
        fd = -1
        return d
    }

    public func accept(maxFrame: Int) throws -> UnixConnection {
        while true {
            let c = Glibc.accept(fd, nil, nil)
            if c >= 0 { _ = fcntl(c, F_SETFD, FD_CLOEXEC) }
            if c >= 0 { return UnixConnection(fd: c, maxFrame: maxFrame) }
            if errno == EINTR || errno == ECONNABORTED { continue }
            throw IPCError("accept", errno: errno)
        }
    }

    public func removeSocketFile() { unlink(path) }
}

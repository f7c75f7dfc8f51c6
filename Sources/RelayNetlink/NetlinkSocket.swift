#if canImport(Glibc)
import Glibc
#endif
import CRelayShim

/// A netlink error with the kernel's errno and extended-ack text, and which request caused it.
public struct NetlinkError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Code: String, Sendable, Equatable {
        case socket, send, receive, kernel, truncated, interrupted, timeout, protocolViolation
    }
    public var code: Code
    public var errno: Int32
    public var message: String
    /// What the failing message was doing (e.g. "add element to map snat4"), when known.
    public var context: String?

    public init(_ code: Code, errno: Int32 = 0, _ message: String, context: String? = nil) {
        self.code = code; self.errno = errno; self.message = message; self.context = context
    }

    public var description: String {
        var s = context.map { "\($0): " } ?? ""
        s += message
        if errno != 0 { s += " (\(String(cString: strerror(errno))), errno \(errno))" }
        return s
    }
}

/// Kernel constants under their kernel names (linux/netlink.h).
public enum NL {
    public static let NLMSG_NOOP: UInt16 = 1
    public static let NLMSG_ERROR: UInt16 = 2
    public static let NLMSG_DONE: UInt16 = 3
    public static let NLM_F_REQUEST: UInt16 = 0x1
    public static let NLM_F_MULTI: UInt16 = 0x2
    public static let NLM_F_ACK: UInt16 = 0x4
    public static let NLM_F_DUMP_INTR: UInt16 = 0x10
    public static let NLM_F_ROOT: UInt16 = 0x100
    public static let NLM_F_MATCH: UInt16 = 0x200
    public static let NLM_F_DUMP: UInt16 = 0x300
    public static let NLM_F_REPLACE: UInt16 = 0x100
    public static let NLM_F_EXCL: UInt16 = 0x200
    public static let NLM_F_CREATE: UInt16 = 0x400
    public static let NLM_F_ACK_TLVS: UInt16 = 0x200
    public static let NLM_F_CAPPED: UInt16 = 0x100
    public static let NLMSGERR_ATTR_MSG: UInt16 = 1
    public static let NETLINK_ROUTE: Int32 = 0
    public static let NETLINK_NETFILTER: Int32 = 12
    public static let SOL_NETLINK: Int32 = 270
    public static let NETLINK_CAP_ACK: Int32 = 10
    public static let NETLINK_EXT_ACK: Int32 = 11
    public static let headerSize = 16
    @inline(__always) public static func align(_ n: Int) -> Int { (n + 3) & ~3 }
}

/// One received netlink message: header fields and a copy of its payload.
public struct NetlinkMessage: Sendable {
    public var type: UInt16
    public var flags: UInt16
    public var seq: UInt32
    public var pid: UInt32
    /// The whole message including its 16-byte header (libnftnl parsers want the header).
    public var bytes: [UInt8]
    public var payload: ArraySlice<UInt8> { bytes.count >= NL.headerSize ? bytes[NL.headerSize...] : [] }
    public init(type: UInt16, flags: UInt16, seq: UInt32, pid: UInt32, bytes: [UInt8]) {
        self.type = type; self.flags = flags; self.seq = seq; self.pid = pid; self.bytes = bytes
    }
}

/// Splits a datagram into messages; refuses lengths that run past the end.
public func parseNetlinkMessages(_ buf: UnsafeRawBufferPointer) throws -> [NetlinkMessage] {
    var out: [NetlinkMessage] = []
    var off = 0
    while off + NL.headerSize <= buf.count {
        let len = Int(buf.loadUnaligned(fromByteOffset: off, as: UInt32.self))
        guard len >= NL.headerSize, off + len <= buf.count else {
            throw NetlinkError(.truncated, "netlink message of length \(len) at offset \(off) runs past \(buf.count) bytes")
        }
        out.append(NetlinkMessage(
            type: buf.loadUnaligned(fromByteOffset: off + 4, as: UInt16.self),
            flags: buf.loadUnaligned(fromByteOffset: off + 6, as: UInt16.self),
            seq: buf.loadUnaligned(fromByteOffset: off + 8, as: UInt32.self),
            pid: buf.loadUnaligned(fromByteOffset: off + 12, as: UInt32.self),
            bytes: Array(buf[off..<(off + len)])))
        off += NL.align(len)
    }
    return out
}

/// Decodes an NLMSG_ERROR payload: errno (0 = ack), the acknowledged seq, and extended-ack text.
public func decodeNetlinkError(_ m: NetlinkMessage) -> (errno: Int32, seq: UInt32, message: String?) {
    let p = Array(m.payload)
    guard p.count >= 4 + NL.headerSize else { return (EPROTO, m.seq, "short NLMSG_ERROR") }
    let err = p.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: Int32.self) }
    let origLen = Int(p.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) })
    let origSeq = p.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4 + 8, as: UInt32.self) }
    var text: String?
    if m.flags & NL.NLM_F_ACK_TLVS != 0 {
        var off = 4 + (m.flags & NL.NLM_F_CAPPED != 0 ? NL.headerSize : NL.align(origLen))
        while off + 4 <= p.count {
            let alen = Int(p.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: off, as: UInt16.self) })
            let atype = p.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: off + 2, as: UInt16.self) }
            guard alen >= 4, off + alen <= p.count else { break }
            if atype & 0x3fff == NL.NLMSGERR_ATTR_MSG {
                text = String(decoding: p[(off + 4)..<(off + alen)].prefix { $0 != 0 }, as: UTF8.self)
            }
            off += NL.align(alen)
        }
    }
    return (-err, origSeq, text)
}

/// A netlink socket with a strict receive loop (checks sender, sequence, errors, extended acks and
/// interrupted dumps), after vishvananda/netlink's.
public final class NetlinkSocket {
    public let fd: Int32
    public let portID: UInt32
    private var nextSeq: UInt32
    private var buffer: UnsafeMutableRawBufferPointer

    public init(protocol proto: Int32, sendBuffer: Int = 4 << 20) throws {
        let s = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), proto)
        guard s >= 0 else { throw NetlinkError(.socket, errno: errno, "cannot open netlink socket (protocol \(proto))") }
        fd = s
        var one: Int32 = 1
        _ = setsockopt(s, NL.SOL_NETLINK, NL.NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(s, NL.SOL_NETLINK, NL.NETLINK_EXT_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        var size = Int32(sendBuffer)
        // SO_SNDBUFFORCE needs CAP_NET_ADMIN (the helper has it); fall back to the capped SO_SNDBUF.
        if setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(s, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var rsize = Int32(4 << 20)
        if setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rsize, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rsize, socklen_t(MemoryLayout<Int32>.size))
        }
        var addr = sockaddr_nl()
        addr.nl_family = sa_family_t(AF_NETLINK)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        guard rc == 0 else { let e = errno; close(s); throw NetlinkError(.socket, errno: e, "cannot bind netlink socket") }
        var bound = sockaddr_nl()
        var len = socklen_t(MemoryLayout<sockaddr_nl>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) }
        }
        portID = bound.nl_pid
        var seed: UInt32 = 0
        withUnsafeMutableBytes(of: &seed) { _ = getrandom($0.baseAddress, 4, 0) }
        nextSeq = seed & 0x7fff_ffff
        buffer = .allocate(byteCount: 1 << 20, alignment: 8)
    }

    deinit {
        close(fd)
        buffer.deallocate()
    }

    /// Reserves `count` consecutive sequence numbers and returns the first.
    public func reserveSequence(_ count: Int = 1) -> UInt32 {
        let s = nextSeq
        nextSeq &+= UInt32(count)
        return s
    }

    /// Sends one datagram (a whole batch goes out in one sendto: one transaction).
    public func send(_ bytes: UnsafeRawBufferPointer) throws {
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        let n = withUnsafePointer(to: &kernel) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
            }
        }
        guard n == bytes.count else {
            throw NetlinkError(.send, errno: n < 0 ? errno : EMSGSIZE, "netlink sendto of \(bytes.count) bytes failed")
        }
    }

    /// Receives one datagram's messages, waiting up to `timeoutMs`; nil on timeout.
    public func receive(timeoutMs: Int32) throws -> [NetlinkMessage]? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let r = poll(&pfd, 1, timeoutMs)
            if r < 0 && errno == EINTR { continue }
            if r < 0 { throw NetlinkError(.receive, errno: errno, "poll on netlink socket failed") }
            if r == 0 { return nil }
            break
        }
        var from = sockaddr_nl()
        var fromLen = socklen_t(MemoryLayout<sockaddr_nl>.size)
        let n = withUnsafeMutablePointer(to: &from) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                recvfrom(fd, buffer.baseAddress, buffer.count, Int32(MSG_TRUNC), $0, &fromLen)
            }
        }
        if n < 0 { throw NetlinkError(.receive, errno: errno, "netlink recvfrom failed") }
        if n > buffer.count { throw NetlinkError(.truncated, "netlink reply of \(n) bytes exceeds the \(buffer.count)-byte buffer") }
        guard from.nl_pid == 0 else {
            // Not from the kernel: ignore (never trust another process's messages).
            return []
        }
        return try parseNetlinkMessages(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
    }

    /// Waits for the acks of `expected` sequence numbers. Returns the first error (with its seq);
    /// after an error, drains whatever else is pending so the socket stays usable.
    public func collectAcks(expected: Set<UInt32>, timeoutMs: Int32 = 10_000) throws -> (seq: UInt32, error: NetlinkError)? {
        var waiting = expected
        var firstError: (UInt32, NetlinkError)?
        while !waiting.isEmpty {
            guard let msgs = try receive(timeoutMs: firstError == nil ? timeoutMs : 50) else {
                if firstError != nil { break }
                throw NetlinkError(.timeout, "no netlink acknowledgement for \(waiting.count) request(s) within \(timeoutMs) ms")
            }
            for m in msgs where m.pid == portID || m.pid == 0 {
                guard m.type == NL.NLMSG_ERROR else { continue }
                let (err, seq, text) = decodeNetlinkError(m)
                guard waiting.remove(seq) != nil || expected.contains(seq) else { continue }
                if err != 0 && firstError == nil {
                    firstError = (seq, NetlinkError(.kernel, errno: err, text ?? "the kernel refused the request"))
                }
            }
        }
        return firstError
    }

    /// Sends a dump request (already built, with `seq`) and returns every reply message until
    /// NLMSG_DONE. Fails on NLM_F_DUMP_INTR (the caller retries) and on kernel errors.
    public func dump(_ request: UnsafeRawBufferPointer, seq: UInt32) throws -> [NetlinkMessage] {
        try send(request)
        var out: [NetlinkMessage] = []
        var interrupted = false
        while true {
            guard let msgs = try receive(timeoutMs: 10_000) else {
                throw NetlinkError(.timeout, "netlink dump did not finish within 10 s")
            }
            for m in msgs {
                guard m.seq == seq, m.pid == portID || m.pid == 0 else { continue }
                if m.flags & NL.NLM_F_DUMP_INTR != 0 { interrupted = true }
                switch m.type {
                case NL.NLMSG_DONE:
                    if interrupted { throw NetlinkError(.interrupted, "the dump was interrupted by a concurrent change (NLM_F_DUMP_INTR); retry") }
                    return out
                case NL.NLMSG_ERROR:
                    let (err, _, text) = decodeNetlinkError(m)
                    if err != 0 { throw NetlinkError(.kernel, errno: err, text ?? "dump refused") }
                    return out
                default:
                    out.append(m)
                }
            }
        }
    }
}

import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// Batched UDP syscalls (recvmmsg / sendmmsg) over slot-strided buffers, for the packet paths.
public enum UDPBatch {
    /// Receives up to `count` datagrams without blocking; lengths (-1 = truncated) and sources
    /// (sockaddr_in6) are written to `lens` and `addrs`. Returns how many, 0 when none, or -errno.
    public static func receive(_ fd: Int32, _ bufs: UnsafeMutablePointer<UInt8>, slot: Int, count: Int,
                               lens: inout [Int32], addrs: inout [sockaddr_in6], wait: Bool = false) -> Int {
        // MSG_WAITFORONE: block (up to the socket's SO_RCVTIMEO) for the first, then take what is there.
        let flags = wait ? Int32(MSG_WAITFORONE) : Int32(MSG_DONTWAIT)
        return Int(addrs.withUnsafeMutableBytes { CRelayShim_recv_batch_flags(fd, bufs, slot, Int32(count), &lens, $0.baseAddress, flags) })
    }

    /// Sets SO_RCVTIMEO, so that a waiting receive returns 0 after `milliseconds` of silence.
    public static func setReceiveTimeout(_ fd: Int32, milliseconds: Int) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends `count` datagrams in one sendmmsg (retrying the remainder). Returns how many went.
    @discardableResult
    public static func send(_ fd: Int32, _ bufs: UnsafeMutablePointer<UInt8>, slot: Int, count: Int, lens: [Int32], addrs: [sockaddr_in6]) -> Int {
        Int(addrs.withUnsafeBytes { CRelayShim_send_batch(fd, bufs, slot, Int32(count), lens, $0.baseAddress) })
    }
}

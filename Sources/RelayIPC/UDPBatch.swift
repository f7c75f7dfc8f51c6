import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// Batched UDP syscalls (recvmmsg / sendmmsg) over slot-strided buffers, for the packet paths.
public enum UDPBatch {
    /// Receives up to `count` datagrams without blocking; lengths (-1 = truncated) and sources
    /// (sockaddr_in6) are written to `lens` and `addrs`. Returns how many, 0 when none, or -errno.
    public static func receive(_ fd: Int32, _ bufs: UnsafeMutablePointer<UInt8>, slot: Int, count: Int,
                               lens: inout [Int32], addrs: inout [sockaddr_in6]) -> Int {
        Int(addrs.withUnsafeMutableBytes { CRelayShim_recv_batch(fd, bufs, slot, Int32(count), &lens, $0.baseAddress) })
    }

    /// Sends `count` datagrams in one sendmmsg (retrying the remainder). Returns how many went.
    @discardableResult
    public static func send(_ fd: Int32, _ bufs: UnsafeMutablePointer<UInt8>, slot: Int, count: Int, lens: [Int32], addrs: [sockaddr_in6]) -> Int {
        Int(addrs.withUnsafeBytes { CRelayShim_send_batch(fd, bufs, slot, Int32(count), lens, $0.baseAddress) })
    }
}

import Foundation
import Testing
@testable import RelayDaemonKit

/// The TUN descriptor outlives every handle a packet thread took: replacing the device never
/// closes a descriptor under a thread that is still reading or writing it (where the number could
/// be reused for another file and get its packets).
@Suite("TUN descriptor lifetime")
struct TunDescriptorTests {
    func isOpen(_ fd: Int32) -> Bool { fcntl(fd, F_GETFD) != -1 }

    @Test("a handle keeps the descriptor open after its owner dropped it; the last holder closes it")
    func handleKeepsItOpen() {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        close(fds[1])
        var owner: TunDescriptor? = TunDescriptor(fd: fds[0])
        var handle: TunHandle? = TunHandle(descriptor: owner, vnetHeader: false)
        owner = nil  // the helper link replaced the device
        #expect(isOpen(fds[0]), "closed under a packet thread that still holds a handle")
        #expect(handle?.fd == fds[0])
        handle = nil
        #expect(!isOpen(fds[0]), "the last holder must close it")
        _ = owner; _ = handle
    }

    @Test("a descriptor the caller owns is never closed by a handle")
    func notOwned() {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        do { let h = TunHandle(fd: fds[0], vnetHeader: false); #expect(h.fd == fds[0]) }
        #expect(isOpen(fds[0]))
        close(fds[0]); close(fds[1])
        #expect(TunHandle(fd: -1, vnetHeader: false).fd == -1)
    }
}

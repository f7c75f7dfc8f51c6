import Testing
@testable import RelayDaemonKit
@testable import RelayConfig

/// The adaptive spin window (pure: gaps in, window out).
struct AdaptivePollTests {
    @Test("no spinning at start, when idle, or at a packet every millisecond; spinning while packets come tens of microseconds apart, and off again when they stop")
    func windows() {
        var p = AdaptivePoll()
        #expect(p.window == 0)
        // 1,000 request/responses per second: bursts 100 µs and 900 µs apart.
        for i in 0..<200 { p.work(gap: i % 2 == 0 ? 100_000 : 900_000) }
        #expect(p.window == 0, "average \(p.averageGap) ns")
        // Request/response as fast as it goes: a burst every 50 µs.
        for _ in 0..<40 { p.work(gap: 50_000) }
        #expect(p.window >= 90_000 && p.window <= 110_000, "\(p.window)")
        // Bulk traffic: bursts back to back; the window never passes 200 µs.
        for _ in 0..<40 { p.work(gap: 150_000) }
        #expect(p.window == AdaptivePoll.maxWindow)
        // Traffic stops: one long gap (counted as at most 10 ms) ends the spinning at once.
        p.work(gap: 5_000_000_000)
        #expect(p.window == 0)
    }

    @Test func configuration() throws {
        #expect(try ConfigFile.parse("[node]\nname = \"n\"\n").0.node.adaptivePoll)
        #expect(try !ConfigFile.parse("[node]\nname = \"n\"\nadaptive_poll = false\n").0.node.adaptivePoll)
        #expect(throws: (any Error).self) { try ConfigFile.parse("[node]\nname = \"n\"\nadaptive_poll = 1\n") }
    }
}

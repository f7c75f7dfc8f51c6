import Glibc

/// How long a packet thread keeps polling after its last packet before it sleeps, when
/// `node.busy_poll` is not set and `node.adaptive_poll` is on (the default): in the style of NAPI
/// busy polling, it spins only while packets keep coming closer together than the longest spin,
/// sized from a moving average of the gaps between them. Interactive traffic at high rates (each
/// request and answer tens of microseconds apart) then finds the thread awake; an idle tunnel, or
/// one that sees a packet every millisecond, never spins (a spin that would not catch the next
/// packet costs CPU and saves nothing).
struct AdaptivePoll {
    /// The longest spin (nanoseconds).
    static let maxWindow: UInt64 = 200_000
    /// Moving average (1/8) of the gaps between the starts of consecutive bursts of work
    /// (nanoseconds), each gap counted at most 10 ms; starts "slow" (no spinning until packets come close).
    private(set) var averageGap: UInt64 = 10_000_000
    private var lastWork: UInt64 = 0

    /// The spin window now: twice the average gap while that is under the longest spin, else 0.
    var window: UInt64 { averageGap < AdaptivePoll.maxWindow ? min(AdaptivePoll.maxWindow, averageGap * 2) : 0 }

    /// Work started `gap` nanoseconds after the previous work started.
    mutating func work(gap: UInt64) {
        averageGap = (averageGap * 7 + min(gap, 10_000_000)) / 8
    }

    /// Waits until one of the first `count` descriptors is readable: while within the spin window
    /// of the last work (`fixed`, node.busy_poll, when set; else the adaptive window when `adaptive`),
    /// non-blocking polls with a yield between them; otherwise a sleep of up to 200 ms. True when
    /// something is readable (the work is recorded).
    mutating func wait(_ pfds: inout [pollfd], count: Int, fixed: UInt64, adaptive: Bool) -> Bool {
        let window = fixed > 0 ? fixed : (adaptive ? self.window : 0)
        let spinning = window > 0 && monotonicNanoseconds() &- lastWork < window
        guard poll(&pfds, nfds_t(count), spinning ? 0 : 200) > 0 else {
            if spinning { sched_yield() }
            return false
        }
        let now = monotonicNanoseconds()
        work(gap: now &- lastWork)
        lastWork = now
        return true
    }
}

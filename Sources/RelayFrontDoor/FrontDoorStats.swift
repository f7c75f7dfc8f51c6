import NIOConcurrencyHelpers
import RelayControlAPI

/// The front door's counters and its per-address connection bound, shared by its event loops.
final class FrontDoorStats: @unchecked Sendable {
    private let lock = NIOLock()
    private var values = FrontDoorCounters()
    private var perAddress: [String: Int] = [:]
    private var open = 0

    func bump(_ k: WritableKeyPath<FrontDoorCounters, Int>) { lock.withLock { values[keyPath: k] += 1 } }

    var snapshot: (FrontDoorCounters, Int) { lock.withLock { (values, open) } }

    /// A connection from `address`: admitted unless it already has `limit` open.
    func admit(_ address: String, limit: Int) -> Bool {
        lock.withLock {
            guard perAddress[address, default: 0] < limit else { values.refusedPerAddress += 1; return false }
            perAddress[address, default: 0] += 1
            open += 1; values.connections += 1
            return true
        }
    }

    func release(_ address: String) {
        lock.withLock {
            open -= 1
            if let n = perAddress[address] { perAddress[address] = n > 1 ? n - 1 : nil }
        }
    }
}

import Foundation
import RelayCore

/// The direct paths that worked, per peer (`paths.json` in the state directory): endpoint, last
/// round trip, how often it was proven, when last. After a restart the first attempt tries them
/// before anything else (the handshake goes there as well as through the relay), so two nodes that
/// were direct are direct again at once. Written atomically; a corrupt file is reported and
/// ignored (and replaced on the next write), never a crash.
public final class PathCache: @unchecked Sendable {
    public struct Entry: Codable, Equatable, Sendable {
        public var endpoint: Endpoint
        public var roundTripMs: Double?
        public var successes: Int
        public var lastSuccess: Double
        public init(endpoint: Endpoint, roundTripMs: Double?, successes: Int, lastSuccess: Double) {
            self.endpoint = endpoint; self.roundTripMs = roundTripMs; self.successes = successes; self.lastSuccess = lastSuccess
        }
    }
    struct File: Codable { var version = 1; var peers: [String: [Entry]] }

    public let path: String?
    /// Why the file on disk was not used (corrupt), for the log.
    public private(set) var problem: String?
    private let lock = NSLock()
    private var peers: [[UInt8]: [Entry]] = [:]
    /// Entries kept per peer (the most proven, then the most recent).
    static let perPeer = 8

    public init(directory: String?) {
        path = directory.map { $0 + "/paths.json" }
        guard let path, let data = FileManager.default.contents(atPath: path) else { return }
        do {
            let f = try JSONDecoder().decode(File.self, from: data)
            guard f.version == 1 else { throw CocoaError(.fileReadCorruptFile) }
            for (k, v) in f.peers { if let key = Data(base64Encoded: k), key.count == 32 { peers[Array(key)] = Array(v.prefix(Self.perPeer)) } }
        } catch {
            problem = "\(path) is not a path cache relayd can read (\(error)): ignored; it is rewritten when a direct path is next proven"
        }
    }

    public func snapshot() -> [[UInt8]: [Entry]] { lock.withLock { peers } }

    /// A direct path to `key` was proven at `now` (round trip `rtt` seconds when measured).
    public func record(_ key: [UInt8], _ e: Endpoint, rtt: Double?, now: Double) throws {
        let text: String = lock.withLock {
            var list = peers[key] ?? []
            if let i = list.firstIndex(where: { $0.endpoint == e }) {
                list[i].successes += 1; list[i].lastSuccess = now
                if let rtt { list[i].roundTripMs = rtt * 1000 }
            } else {
                list.append(Entry(endpoint: e, roundTripMs: rtt.map { $0 * 1000 }, successes: 1, lastSuccess: now))
            }
            list.sort { ($0.successes, $0.lastSuccess) > ($1.successes, $1.lastSuccess) }
            peers[key] = Array(list.prefix(Self.perPeer))
            let file = File(peers: Dictionary(uniqueKeysWithValues: peers.map { (Data($0.key).base64EncodedString(), $0.value) }))
            let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys, .prettyPrinted]
            return String(decoding: (try? enc.encode(file)) ?? Data(), as: UTF8.self)
        }
        guard let path else { return }
        try replaceFile(path, with: text + "\n", durable: false)
        lock.withLock { problem = nil }
    }

    /// Epsilon-greedy: the best known path first with probability 1 - epsilon, else another one
    /// (to explore); the rest follow best first. Best: proven most often, then the lowest round
    /// trip, then the most recent. `rng` is seeded in tests.
    public static func order<G: RandomNumberGenerator>(_ entries: [Entry], epsilon: Double, using rng: inout G) -> [Endpoint] {
        var best = entries.sorted { a, b in
            if a.successes != b.successes { return a.successes > b.successes }
            if (a.roundTripMs ?? .infinity) != (b.roundTripMs ?? .infinity) { return (a.roundTripMs ?? .infinity) < (b.roundTripMs ?? .infinity) }
            return a.lastSuccess > b.lastSuccess
        }.map(\.endpoint)
        if best.count > 1, Double.random(in: 0..<1, using: &rng) < epsilon {
            let i = Int.random(in: 1..<best.count, using: &rng)
            best.insert(best.remove(at: i), at: 0)
        }
        return best
    }
}

/// A small seeded generator (SplitMix64) for reproducible choices in tests and benchmarks.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

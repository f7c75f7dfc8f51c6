import Foundation
import RelayCore
#if canImport(Glibc)
import Glibc
#endif

/// The relay each peer was last reached through (`relay-peers` in the state directory: one
/// "KEY RELAY" line per peer). After a restart the node makes the relay most of its peers were
/// reached through its home relay, so it registers where they are instead of wherever answers first.
/// Losing the file costs nothing but that preference.
public final class RelayPeerCache: @unchecked Sendable {
    public let path: String?
    private let lock = NSLock()
    private var relays: [[UInt8]: Endpoint] = [:]

    public init(directory: String?) {
        path = directory.map { $0 + "/relay-peers" }
        guard let path, let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let key = Data(base64Encoded: String(parts[0])), key.count == 32, let e = Endpoint(String(parts[1])) else { continue }
            relays[Array(key)] = e
        }
    }

    public func snapshot() -> [[UInt8]: Endpoint] { lock.withLock { relays } }

    /// Notes that `key` is reached through `relay`; rewrites the file when that changed.
    public func record(_ key: [UInt8], _ relay: Endpoint) throws {
        let text: String? = lock.withLock {
            guard relays[key] != relay else { return nil }
            relays[key] = relay
            return relays.map { "\(Data($0.key).base64EncodedString()) \($0.value)\n" }.sorted().joined()
        }
        guard let text, let path else { return }
        try replaceFile(path, with: text, durable: false)
    }

    /// The relay, among `candidates`, that most of `peers` were last reached through (nil when none was).
    public static func preferred(_ cache: [[UInt8]: Endpoint], peers: [[UInt8]], candidates: [Endpoint]) -> Endpoint? {
        var votes: [Endpoint: Int] = [:]
        for k in peers { if let e = cache[k], candidates.contains(e) { votes[e, default: 0] += 1 } }
        // Most votes; a tie goes to the relay listed first.
        return candidates.filter { votes[$0] != nil }.max { (votes[$0]!, -candidates.firstIndex(of: $0)!) < (votes[$1]!, -candidates.firstIndex(of: $1)!) }
    }
}

import Foundation

/// The greatest handshake-initiation timestamp accepted from each peer, kept in the state directory
/// (`initiations`, 0600) so that an initiation captured before a restart is still refused after it.
/// Written (to a temporary file, fsync'ed, renamed) before the answer to a newer initiation leaves.
/// A line per peer: `BASE64-PUBLIC-KEY STAMP`. Without a directory it only remembers in memory.
public final class InitiationStamps: @unchecked Sendable {
    public let path: String?
    private let lock = NSLock()
    private var stamps: [[UInt8]: UInt64] = [:]

    public init(directory: String?) {
        path = directory.map { $0 + "/initiations" }
        guard let path, let text = try? String(contentsOfFile: path, encoding: .utf8) else { return }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let key = Data(base64Encoded: String(parts[0])), key.count == 32, let v = UInt64(parts[1]) else { continue }
            stamps[Array(key)] = max(stamps[Array(key)] ?? 0, v)
        }
    }

    public func stamp(for key: [UInt8]) -> UInt64 { lock.lock(); defer { lock.unlock() }; return stamps[key] ?? 0 }

    /// Raises the peer's stamp and writes the file. Throws when it cannot be written (the caller
    /// decides whether to answer anyway).
    public func record(_ key: [UInt8], _ stamp: UInt64) throws {
        lock.lock(); defer { lock.unlock() }
        guard stamp > stamps[key] ?? 0 else { return }
        stamps[key] = stamp
        guard let path else { return }
        let text = stamps.map { "\(Data($0.key).base64EncodedString()) \($0.value)\n" }.sorted().joined()
        try replaceFile(path, with: text, durable: true)
    }
}

/// Replaces `path` with `text` (mode 0600) through a temporary file and a rename, so a reader sees
/// the old contents or the new, never half; `durable` also syncs it to disk before the rename.
func replaceFile(_ path: String, with text: String, durable: Bool) throws {
    let tmp = path + ".tmp"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    let bytes = Array(text.utf8)
    let ok = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count && (!durable || fsync(fd) == 0)
    close(fd)
    guard ok, rename(tmp, path) == 0 else { unlink(tmp); throw POSIXError(.EIO) }
}

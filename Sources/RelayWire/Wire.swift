import RelayCore

/// A typed error that crosses an RPC boundary: a stable, extensible code (dotted, e.g.
/// `policy.prefix_not_allowed`), a message a person can act on, and context fields.
public struct WireError: Error, Codable, Equatable, Sendable, CustomStringConvertible {
    public var code: String
    public var message: String
    public var context: [String: String]
    public init(_ code: String, _ message: String, context: [String: String] = [:]) {
        self.code = code; self.message = message; self.context = context
    }
    public var description: String { "\(message) [\(code)]" }

    // Codes shared by both RPCs.
    public static let malformed = "wire.malformed"
    public static let tooLarge = "wire.too_large"
    public static let unsupportedVersion = "wire.unsupported_version"
    public static let unknownOperation = "wire.unknown_operation"
    public static let permissionDenied = "auth.permission_denied"
    public static let notAuthorized = "auth.not_a_client"
}

/// Length-prefixed frames: 4-byte big-endian length, then the payload. Pure, incremental.
public struct FrameDecoder: Sendable {
    public let maxFrame: Int
    private var buffer: [UInt8] = []
    public init(maxFrame: Int) { self.maxFrame = maxFrame }

    public enum Output: Equatable, Sendable { case frame([UInt8]), needMore }

    public mutating func feed(_ bytes: some Sequence<UInt8>) { buffer.append(contentsOf: bytes) }

    /// Next complete frame, `needMore`, or an error for a length above the cap (the connection
    /// must then be closed: the stream cannot be resynchronised).
    public mutating func next() throws -> Output {
        guard buffer.count >= 4 else { return .needMore }
        let len = Int(buffer[0]) << 24 | Int(buffer[1]) << 16 | Int(buffer[2]) << 8 | Int(buffer[3])
        guard len <= maxFrame else {
            throw WireError(WireError.tooLarge, "frame of \(len) bytes exceeds the limit of \(maxFrame) bytes", context: ["limit": String(maxFrame)])
        }
        guard buffer.count >= 4 + len else { return .needMore }
        let frame = Array(buffer[4..<(4 + len)])
        buffer.removeFirst(4 + len)
        return .frame(frame)
    }

    public var buffered: Int { buffer.count }
}

public enum FrameEncoder {
    public static func frame(_ payload: [UInt8]) -> [UInt8] {
        let n = UInt32(payload.count)
        return [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + payload
    }
}

import Foundation
import RelayCore
import RelayWire

/// Version of the helper protocol. A request with another version is refused with a typed error.
public let helperProtocolVersion = 1

/// The helper's operations. A small, closed table (OpenSSH monitor style): each has a permission.
public enum HelperOp: String, Codable, CaseIterable, Sendable {
    case hello
    case observe
    case applyNAT = "apply_nat"
    case cleanup

    public enum Permission: String, Sendable { case read, write }
    public var permission: Permission {
        switch self {
        case .hello, .observe: return .read
        case .applyNAT, .cleanup: return .write
        }
    }
}

/// One request. Only the field that belongs to `op` may be set; nothing free-form reaches the kernel.
public struct HelperRequest: Codable, Equatable, Sendable {
    public var version: Int
    public var id: UInt64
    public var op: HelperOp
    public var nat: NATState?

    public init(id: UInt64, op: HelperOp, nat: NATState? = nil) {
        version = helperProtocolVersion; self.id = id; self.op = op; self.nat = nat
    }
}

public struct HelperHello: Codable, Equatable, Sendable {
    public var version: String
    public var protocolVersion: Int
    public var table: String
    public var permission: String
    public init(version: String, protocolVersion: Int, table: String, permission: String) {
        self.version = version; self.protocolVersion = protocolVersion; self.table = table; self.permission = permission
    }
}

public struct HelperResponse: Codable, Equatable, Sendable {
    public var version: Int
    public var id: UInt64
    public var error: WireError?
    public var hello: HelperHello?
    public var table: ObservedTable?
    public var report: ApplyReport?

    public init(id: UInt64, error: WireError? = nil, hello: HelperHello? = nil, table: ObservedTable? = nil, report: ApplyReport? = nil) {
        version = helperProtocolVersion; self.id = id; self.error = error; self.hello = hello; self.table = table; self.report = report
    }
}

/// Decoding that never traps and always says what was wrong.
public enum HelperCodec {
    public static func decodeRequest(_ bytes: [UInt8]) -> Result<HelperRequest, WireError> {
        // Peek at the version first, so an old or new client gets the right error.
        struct Peek: Decodable { var version: Int?; var op: String? }
        guard let peek = try? JSONDecoder().decode(Peek.self, from: Data(bytes)) else {
            return .failure(WireError(WireError.malformed, "request is not a JSON object"))
        }
        guard peek.version == helperProtocolVersion else {
            return .failure(WireError(WireError.unsupportedVersion, "helper protocol version \(peek.version.map(String.init) ?? "missing") is not supported; this helper speaks \(helperProtocolVersion)"))
        }
        if let op = peek.op, HelperOp(rawValue: op) == nil {
            return .failure(WireError(WireError.unknownOperation, "unknown operation '\(op.prefix(64))'; known: \(HelperOp.allCases.map(\.rawValue).joined(separator: ", "))"))
        }
        do {
            return .success(try JSONDecoder().decode(HelperRequest.self, from: Data(bytes)))
        } catch let DecodingError.dataCorrupted(ctx) {
            return .failure(WireError(WireError.malformed, "bad value at \(path(ctx.codingPath)): \(ctx.debugDescription)"))
        } catch let DecodingError.keyNotFound(key, ctx) {
            return .failure(WireError(WireError.malformed, "missing '\(key.stringValue)' at \(path(ctx.codingPath))"))
        } catch let DecodingError.typeMismatch(_, ctx) {
            return .failure(WireError(WireError.malformed, "wrong type at \(path(ctx.codingPath)): \(ctx.debugDescription)"))
        } catch {
            return .failure(WireError(WireError.malformed, "cannot decode request: \(error)"))
        }
    }

    static func path(_ p: [CodingKey]) -> String { p.isEmpty ? "top level" : p.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined() }

    public static func encode<T: Encodable>(_ v: T) -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return Array((try? e.encode(v)) ?? Data("{}".utf8))
    }
}

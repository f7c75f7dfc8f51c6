import Foundation
import RelayCore
import RelayWire

/// Version of the helper protocol. A request with another version is refused with a typed error.
public let helperProtocolVersion = 1

/// The helper's operations. A small, closed table (OpenSSH monitor style): each has a permission
/// and the request fields it may carry; any other field set is refused.
public enum HelperOp: String, Codable, CaseIterable, Sendable {
    case hello
    /// Everything the helper owns, read back from the kernel (table, routes, devices, integration).
    case observe
    /// The whole desired NAT table (declarative; unchanged parts untouched).
    case applyNAT = "apply_nat"
    /// Incremental: add `nat` entries and remove `remove` entries (batched, for large maps).
    case updateNAT = "update_nat"
    /// The whole desired set of the helper's routes (others it owns are deleted).
    case applyRoutes = "apply_routes"
    case replaceRoutes = "replace_routes"
    case deleteRoutes = "delete_routes"
    /// Create or re-attach a TUN device, set MTU/addresses/up, answer with its fd (SCM_RIGHTS).
    case openDevice = "open_device"
    case deleteDevice = "delete_device"
    /// Remove everything the helper owns.
    case cleanup

    public enum Permission: String, Sendable { case read, write }
    public var permission: Permission {
        switch self {
        case .hello, .observe: return .read
        default: return .write
        }
    }

    public enum Field: String, Sendable { case nat, remove, routes, device, name }
    /// The request fields this operation takes (all required).
    public var fields: Set<Field> {
        switch self {
        case .hello, .observe, .cleanup: return []
        case .applyNAT: return [.nat]
        case .updateNAT: return [.nat, .remove]
        case .applyRoutes, .replaceRoutes, .deleteRoutes: return [.routes]
        case .openDevice: return [.device]
        case .deleteDevice: return [.name]
        }
    }
}

/// One request. Only the fields that belong to `op` may be set; nothing free-form reaches the kernel.
public struct HelperRequest: Codable, Equatable, Sendable {
    public var version: Int
    public var id: UInt64
    public var op: HelperOp
    public var nat: NATState?
    public var remove: NATState?
    public var routes: [RouteSpec]?
    public var device: DeviceSpec?
    public var name: String?

    public init(id: UInt64, op: HelperOp, nat: NATState? = nil, remove: NATState? = nil, routes: [RouteSpec]? = nil,
                device: DeviceSpec? = nil, name: String? = nil) {
        version = helperProtocolVersion; self.id = id; self.op = op; self.nat = nat; self.remove = remove
        self.routes = routes; self.device = device; self.name = name
    }

    public var fieldsSet: Set<HelperOp.Field> {
        var f = Set<HelperOp.Field>()
        if nat != nil { f.insert(.nat) }
        if remove != nil { f.insert(.remove) }
        if routes != nil { f.insert(.routes) }
        if device != nil { f.insert(.device) }
        if name != nil { f.insert(.name) }
        return f
    }

    /// Nil when the fields match the operation, else what is wrong.
    public var fieldProblem: String? {
        let want = op.fields, have = fieldsSet
        if let extra = have.subtracting(want).first { return "'\(extra.rawValue)' is not allowed with \(op.rawValue)" }
        if let missing = want.subtracting(have).first { return "\(op.rawValue) needs '\(missing.rawValue)'" }
        return nil
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
    public var state: ObservedState?
    public var report: ApplyReport?
    /// open_device: the device as the kernel shows it; its fd travels with this response.
    public var device: ObservedDevice?

    public init(id: UInt64, error: WireError? = nil, hello: HelperHello? = nil, state: ObservedState? = nil, report: ApplyReport? = nil,
                device: ObservedDevice? = nil) {
        version = helperProtocolVersion; self.id = id; self.error = error; self.hello = hello; self.state = state; self.report = report
        self.device = device
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

import Foundation
import RelayCore
import RelayHelperAPI
import RelayWire

/// Typed client of relay-helper. Errors from the helper arrive as `WireError`.
public final class HelperClient {
    let conn: UnixConnection
    private var nextID: UInt64 = 1

    public init(path: String) throws {
        do { conn = try UnixConnection.connect(path: path) } catch let e as IPCError {
            throw WireError("helper.unreachable", "relay-helper is not reachable at \(path) (\(e)): start it (systemctl start relay-helper) or pass its --socket path",
                            context: ["path": path])
        }
    }

    public func call(_ op: HelperOp, nat: NATState? = nil) throws -> HelperResponse {
        let req = HelperRequest(id: nextID, op: op, nat: nat)
        nextID += 1
        try conn.send(HelperCodec.encode(req))
        guard let (payload, fd) = try conn.receive() else {
            throw WireError("helper.closed", "relay-helper closed the connection")
        }
        if fd >= 0 { close(fd) }
        let resp = try JSONDecoder().decode(HelperResponse.self, from: Data(payload))
        if let e = resp.error { throw e }
        return resp
    }

    public func hello() throws -> HelperHello { try call(.hello).hello! }
    public func observe() throws -> ObservedTable { try call(.observe).table! }
    @discardableResult public func apply(_ nat: NATState) throws -> ApplyReport { try call(.applyNAT, nat: nat).report! }
    @discardableResult public func cleanup() throws -> ApplyReport { try call(.cleanup).report! }
}

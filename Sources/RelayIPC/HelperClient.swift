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

    /// One request, one response; a descriptor passed with the response comes back too (else -1).
    public func callWithDescriptor(_ req: HelperRequest) throws -> (HelperResponse, Int32) {
        var r = req
        r.id = nextID
        nextID += 1
        try conn.send(HelperCodec.encode(r))
        guard let (payload, fd) = try conn.receive() else {
            throw WireError("helper.closed", "relay-helper closed the connection")
        }
        let resp: HelperResponse
        do { resp = try JSONDecoder().decode(HelperResponse.self, from: Data(payload)) } catch {
            if fd >= 0 { close(fd) }
            throw WireError(WireError.malformed, "relay-helper sent a response this client cannot read: \(error)")
        }
        if let e = resp.error { if fd >= 0 { close(fd) }; throw e }
        return (resp, fd)
    }

    public func call(_ req: HelperRequest) throws -> HelperResponse {
        let (resp, fd) = try callWithDescriptor(req)
        if fd >= 0 { close(fd) }
        return resp
    }

    public func call(_ op: HelperOp, nat: NATState? = nil) throws -> HelperResponse { try call(HelperRequest(id: 0, op: op, nat: nat)) }

    public func hello() throws -> HelperHello { try call(.hello).hello! }
    /// Everything the helper owns, as the kernel reports it.
    public func observe() throws -> ObservedState { try call(.observe).state! }
    @discardableResult public func apply(_ nat: NATState) throws -> ApplyReport { try call(.applyNAT, nat: nat).report! }
    @discardableResult public func update(add: NATState, remove: NATState) throws -> ApplyReport {
        try call(HelperRequest(id: 0, op: .updateNAT, nat: add, remove: remove)).report!
    }
    @discardableResult public func applyRoutes(_ routes: [RouteSpec]) throws -> ApplyReport { try call(HelperRequest(id: 0, op: .applyRoutes, routes: routes)).report! }
    @discardableResult public func replaceRoutes(_ routes: [RouteSpec]) throws -> ApplyReport { try call(HelperRequest(id: 0, op: .replaceRoutes, routes: routes)).report! }
    @discardableResult public func deleteRoutes(_ routes: [RouteSpec]) throws -> ApplyReport { try call(HelperRequest(id: 0, op: .deleteRoutes, routes: routes)).report! }
    /// Opens (creates or re-attaches) a TUN device; the caller owns the returned fd.
    public func openDevice(_ d: DeviceSpec) throws -> (ObservedDevice, Int32) {
        let (resp, fd) = try callWithDescriptor(HelperRequest(id: 0, op: .openDevice, device: d))
        guard fd >= 0, let dev = resp.device else {
            if fd >= 0 { close(fd) }
            throw WireError("helper.no_descriptor", "relay-helper answered open_device without a descriptor")
        }
        return (dev, fd)
    }
    @discardableResult public func deleteDevice(_ name: String) throws -> ApplyReport { try call(HelperRequest(id: 0, op: .deleteDevice, name: name)).report! }
    @discardableResult public func cleanup() throws -> ApplyReport { try call(.cleanup).report! }
}

import Foundation
import RelayCore
import RelayHelperAPI
import RelayWire

/// Typed client of relay-helper. Errors from the helper arrive as `WireError`.
public final class HelperClient {
    let conn: UnixConnection
    private var nextID: UInt64 = 1

    /// `timeout`: seconds a call waits for its answer before it fails with `helper.timeout` (a hung
    /// helper must not pile up blocked callers).
    public init(path: String, timeout: Int = 30) throws {
        do { conn = try UnixConnection.connect(path: path) } catch let e as IPCError {
            throw WireError("helper.unreachable", "relay-helper is not reachable at \(path) (\(e)): start it (systemctl start relay-helper) or pass its --socket path",
                            context: ["path": path])
        }
        conn.setReceiveTimeout(seconds: timeout)
        self.timeout = timeout
    }
    let timeout: Int

    /// One request, one response; a descriptor passed with the response comes back too (else -1).
    public func callWithDescriptor(_ req: HelperRequest) throws -> (HelperResponse, Int32) {
        var r = req
        r.id = nextID
        nextID += 1
        var received: (payload: [UInt8], descriptor: Int32)?
        do {
            do { try conn.send(HelperCodec.encode(r)) } catch {
                // The helper may have answered and closed already (busy, not a client): read why.
                guard let early = try? conn.receive() else { throw error }
                return try decode(early.payload, early.descriptor)
            }
            received = try conn.receive()
        } catch let e as IPCError where e.errno == ETIMEDOUT {
            throw WireError("helper.timeout", "relay-helper did not answer \(r.op.rawValue) within \(timeout) s: is it hung? (systemctl status relay-helper)")
        }
        guard let (payload, fd) = received else {
            throw WireError("helper.closed", "relay-helper closed the connection")
        }
        return try decode(payload, fd)
    }

    private func decode(_ payload: [UInt8], _ fd: Int32) throws -> (HelperResponse, Int32) {
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

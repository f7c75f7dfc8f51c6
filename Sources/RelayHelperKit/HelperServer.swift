import Foundation
import Logging
import RelayCore
import RelayHelperAPI
import RelayIPC
import RelayNetlink
import RelayNftables
import RelayWire
#if canImport(Glibc)
import Glibc
#endif

/// Counters the helper keeps about refused input.
public final class HelperCounters: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String: Int] = [:]
    public func bump(_ k: String) { lock.lock(); values[k, default: 0] += 1; lock.unlock() }
    public var snapshot: [String: Int] { lock.lock(); defer { lock.unlock() }; return values }
}

/// Connection slots: writers and readers in separate pools (a reader can never take a writer's
/// place), and a bound per uid (one client cannot take them all). Strangers never get one.
final class ConnectionSlots: @unchecked Sendable {
    private let lock = NSLock()
    private var writers = 0, readers = 0
    private var perUID: [UInt32: Int] = [:]
    let maxWriters: Int, maxReaders: Int, maxPerUID: Int

    init(maxWriters: Int, maxReaders: Int, maxPerUID: Int) { self.maxWriters = maxWriters; self.maxReaders = maxReaders; self.maxPerUID = maxPerUID }

    enum Refusal: Equatable { case pool(Int), uid(Int) }

    /// Takes a slot, or says which bound is reached.
    func take(uid: UInt32, write: Bool) -> Refusal? {
        lock.lock(); defer { lock.unlock() }
        if perUID[uid, default: 0] >= maxPerUID { return .uid(maxPerUID) }
        if write ? writers >= maxWriters : readers >= maxReaders { return .pool(write ? maxWriters : maxReaders) }
        perUID[uid, default: 0] += 1
        if write { writers += 1 } else { readers += 1 }
        return nil
    }

    func give(uid: UInt32, write: Bool) {
        lock.lock(); defer { lock.unlock() }
        perUID[uid, default: 1] -= 1
        if perUID[uid] == 0 { perUID[uid] = nil }
        if write { writers -= 1 } else { readers -= 1 }
    }
}

/// The helper's dispatch: authenticate by the kernel's credentials before anything else, take a
/// bounded slot, re-validate arguments against the policy, apply under one lock, audit, answer.
public final class HelperServer: @unchecked Sendable {
    public let policy: HelperPolicy
    let logger: Logger
    let audit: Logger
    let applyLock = NSLock()
    public let counters = HelperCounters()
    let slots: ConnectionSlots
    let names: NameResolver
    private var lastStrangerLog: [UInt32: UInt64] = [:]  // accept thread only

    public init(policy: HelperPolicy, logger: Logger, names: NameResolver = .system) {
        self.policy = policy
        self.logger = logger
        self.names = names
        slots = ConnectionSlots(maxWriters: policy.maxWriterConnections, maxReaders: policy.maxReaderConnections, maxPerUID: policy.maxConnectionsPerUID)
        var a = Logger(label: "relay-helper.audit")
        a.logLevel = .info
        audit = a
    }

    /// Serves forever on `listener`. The accept thread checks credentials (the kernel's, recorded
    /// at connect: this never waits for the client) and refuses strangers at once, without a
    /// thread or a slot; clients get one thread each within their pool's bounds.
    public func serve(_ listener: UnixListener) throws -> Never {
        while true {
            let conn = try listener.accept(maxFrame: policy.maxRequestBytes)
            guard let cred = try? conn.peerCredentials() else { conn.close(); continue }
            let perm = policy.permission(uid: cred.uid, gid: cred.gid, groups: cred.groups, names: names)
            guard perm != .none else {
                refuseStranger(conn, cred)
                continue
            }
            let write = perm == .write
            if let refusal = slots.take(uid: cred.uid, write: write) {
                counters.bump("refused_busy")
                let why: String
                switch refusal {
                case .uid(let n): why = "uid \(cred.uid) already has \(n) connections open (limits.max_connections_per_uid); close one or retry later"
                case .pool(let n): why = "\(n) \(write ? "writer" : "reader") connections are open (limits.max_\(write ? "writer" : "reader")_connections); retry later"
                }
                conn.sendNow(HelperCodec.encode(HelperResponse(id: 0, error: WireError("helper.busy", why))))
                conn.close()
                continue
            }
            let t = Thread { [self] in
                self.handle(conn, cred: cred, permission: perm)
                self.slots.give(uid: cred.uid, write: write)
            }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// A stranger gets its answer without waiting (its peer's receive queue takes it) and the
    /// connection is closed; warnings are limited to one per uid a minute.
    func refuseStranger(_ conn: UnixConnection, _ cred: PeerCredentials) {
        counters.bump("refused_client")
        let now = UInt64(time(nil))
        if now >= lastStrangerLog[cred.uid, default: 0] + 60 {
            if lastStrangerLog.count > 4096 { lastStrangerLog.removeAll() }
            lastStrangerLog[cred.uid] = now
            logger.warning("refused connection from uid \(cred.uid) gid \(cred.gid) pid \(cred.pid): not a client in the policy (further refusals of this uid in the next minute are counted, not logged)")
        }
        conn.sendNow(HelperCodec.encode(HelperResponse(id: 0, error: WireError(WireError.notAuthorized,
            "uid \(cred.uid) is not a client of relay-helper: add it to [clients] in the helper's policy",
            context: ["uid": String(cred.uid), "gid": String(cred.gid)]))))
        conn.close()
    }

    /// One client's connection: answers requests until the client leaves, misbehaves, stays idle
    /// past limits.idle_seconds, or takes longer than limits.frame_seconds to send one frame.
    public func handle(_ conn: UnixConnection, cred: PeerCredentials, permission perm: HelperPolicy.Permission) {
        defer { conn.close() }
        while true {
            let frame: [UInt8]
            do {
                guard let (payload, fd) = try conn.receive(idleMilliseconds: policy.idleSeconds * 1000, frameMilliseconds: policy.frameSeconds * 1000) else { return }
                if fd >= 0 { close(fd); counters.bump("refused_descriptor") }
                frame = payload
            } catch let e as WireError {
                counters.bump("refused_oversized")
                try? conn.send(HelperCodec.encode(HelperResponse(id: 0, error: e)))
                conn.lingerClose()
                return
            } catch let e as IPCError where e.errno == ETIMEDOUT {
                counters.bump("closed_timeout")
                logger.debug("closed connection of uid \(cred.uid) pid \(cred.pid): \(e.message)")
                conn.sendNow(HelperCodec.encode(HelperResponse(id: 0, error: WireError("helper.timeout", "\(e.message); connect again"))))
                return
            } catch {
                counters.bump("refused_broken")
                return
            }
            let req: HelperRequest
            let t0 = DispatchTime.now().uptimeNanoseconds
            switch HelperCodec.decodeRequest(frame) {
            case .failure(let e):
                counters.bump("refused_malformed")
                logger.notice("malformed request from uid \(cred.uid): \(e.message)")
                try? conn.send(HelperCodec.encode(HelperResponse(id: 0, error: e)))
                conn.lingerClose()
                return  // the stream is framed, but a client that sends garbage is not trusted further
            case .success(let r): req = r
            }
            let t1 = DispatchTime.now().uptimeNanoseconds
            let (response, fd) = dispatchWithDescriptor(req, cred: cred, permission: perm)
            let t2 = DispatchTime.now().uptimeNanoseconds
            logger.debug("\(req.op.rawValue) from uid \(cred.uid): \(frame.count) bytes decoded in \((t1 - t0) / 1_000_000) ms, handled in \((t2 - t1) / 1_000_000) ms")
            defer { if fd >= 0 { close(fd) } }  // the client has its own copy now
            do { try conn.send(HelperCodec.encode(response), passing: fd) } catch { return }
        }
    }

    public func dispatch(_ req: HelperRequest, cred: PeerCredentials, permission: HelperPolicy.Permission) -> HelperResponse {
        let (r, fd) = dispatchWithDescriptor(req, cred: cred, permission: permission)
        if fd >= 0 { close(fd) }
        return r
    }

    func refuse(_ req: HelperRequest, _ cred: PeerCredentials, _ problems: [String]) -> (HelperResponse, Int32) {
        counters.bump("refused_policy")
        audit.notice("refused \(req.op.rawValue) from uid \(cred.uid) pid \(cred.pid): \(problems.joined(separator: "; "))")
        return (HelperResponse(id: req.id, error: WireError("policy.refused", problems.joined(separator: "; "),
                                                            context: ["problems": String(problems.count)])), -1)
    }

    /// Authorises, re-validates and performs one request. A descriptor (open_device) is returned
    /// with the response; the caller sends it and closes its copy.
    public func dispatchWithDescriptor(_ req: HelperRequest, cred: PeerCredentials, permission: HelperPolicy.Permission) -> (HelperResponse, Int32) {
        if req.op.permission == .write && permission != .write {
            counters.bump("refused_permission")
            return (HelperResponse(id: req.id, error: WireError(WireError.permissionDenied,
                "uid \(cred.uid) may only read; '\(req.op.rawValue)' needs a client listed in [clients] uids/gids")), -1)
        }
        if let problem = req.fieldProblem {
            counters.bump("refused_malformed")
            return (HelperResponse(id: req.id, error: WireError(WireError.malformed, problem)), -1)
        }
        let who = "uid \(cred.uid) pid \(cred.pid)"
        let owner = KernelOwner(policy: policy)
        do {
            switch req.op {
            case .hello:
                return (HelperResponse(id: req.id, hello: HelperHello(version: RelayVersion.string, protocolVersion: helperProtocolVersion,
                                                                      table: "inet \(policy.table.name)", permission: permission.rawValue)), -1)
            case .observe:
                return (HelperResponse(id: req.id, state: try owner.observe()), -1)
            case .applyNAT, .updateNAT:
                applyLock.lock(); defer { applyLock.unlock() }
                let nat = req.op == .applyNAT ? req.nat! : try owner.updatedNAT(add: req.nat!, remove: req.remove!)
                let tc = DispatchTime.now().uptimeNanoseconds
                let problems = policy.check(nat)
                guard problems.isEmpty else { return refuse(req, cred, problems) }
                let ta = DispatchTime.now().uptimeNanoseconds
                let report = try owner.applyNAT(nat)
                logger.debug("\(req.op.rawValue): policy check \((ta - tc) / 1_000_000) ms, apply \((DispatchTime.now().uptimeNanoseconds - ta) / 1_000_000) ms (\(report.messages) messages, \(report.bytes) bytes)")
                if report.changed {
                    audit.info("\(who) \(req.op.rawValue) inet \(policy.table.name): now \(nat.dnat.count) dnat, \(nat.snat.count) snat, \(nat.dnatExact.count + nat.snatExact.count) exact, \(nat.remote.count) remote; \(report.changedElements) elements changed; rewrote chains \(report.rewrittenChains), new sets \(report.replacedSets), removed sets \(report.removedSets); \(report.messages) messages")
                }
                return (HelperResponse(id: req.id, report: report), -1)
            case .applyRoutes, .replaceRoutes, .deleteRoutes:
                let routes = req.routes!
                let problems = policy.check(routes: routes)
                guard problems.isEmpty else { return refuse(req, cred, problems) }
                applyLock.lock(); defer { applyLock.unlock() }
                let n: Int
                switch req.op {
                case .applyRoutes: n = try owner.applyRoutes(routes)
                case .replaceRoutes: n = try owner.replaceRoutes(routes)
                default: n = try owner.deleteRoutes(routes)
                }
                if n > 0 {
                    audit.info("\(who) \(req.op.rawValue) table \(policy.routeTable) proto \(policy.routeProtocol): \(n) routes changed (\(routes.prefix(8).map(\.description).joined(separator: ", "))\(routes.count > 8 ? ", ..." : ""))")
                }
                return (HelperResponse(id: req.id, report: ApplyReport(changed: n > 0, messages: n, bytes: 0, routesChanged: n)), -1)
            case .openDevice:
                let d = req.device!
                let problems = policy.check(device: d)
                guard problems.isEmpty else { return refuse(req, cred, problems) }
                applyLock.lock(); defer { applyLock.unlock() }
                let (dev, fd, changed) = try owner.openDevice(d)
                audit.info("\(who) open_device \(dev.name) (index \(dev.index), mtu \(dev.mtu), addresses \(dev.addresses.map(\.description).joined(separator: " ")))\(changed ? " configured" : " re-attached"); fd handed over")
                return (HelperResponse(id: req.id, report: ApplyReport(changed: changed, messages: 0, bytes: 0, devicesChanged: changed ? 1 : 0), device: dev), fd)
            case .deleteDevice:
                let name = req.name!
                guard policy.ownsDevice(name) else { return refuse(req, cred, ["device '\(name.prefix(32))' is not one of the helper's devices (names start with '\(policy.devicePrefix)')"]) }
                applyLock.lock(); defer { applyLock.unlock() }
                let removed = try owner.deleteDevice(name)
                if removed { audit.info("\(who) delete_device \(name)") }
                return (HelperResponse(id: req.id, report: ApplyReport(changed: removed, messages: removed ? 1 : 0, bytes: 0, devicesChanged: removed ? 1 : 0)), -1)
            case .cleanup:
                applyLock.lock(); defer { applyLock.unlock() }
                let removed = try owner.cleanup()
                audit.info("\(who) cleanup: \(removed.isEmpty ? "nothing to remove" : "removed " + removed.joined(separator: ", "))")
                return (HelperResponse(id: req.id, report: ApplyReport(changed: !removed.isEmpty, messages: removed.count, bytes: 0)), -1)
            }
        } catch let e as RelayNetlink.NetlinkError {
            return (HelperResponse(id: req.id, error: WireError("kernel.\(e.code.rawValue)", e.description, context: ["errno": String(e.errno)])), -1)
        } catch let e as HelperFailure {
            return (HelperResponse(id: req.id, error: WireError(e.code, e.message)), -1)
        } catch {
            return (HelperResponse(id: req.id, error: WireError("helper.internal", "\(error)")), -1)
        }
    }
}

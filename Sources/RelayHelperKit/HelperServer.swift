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

/// The helper's dispatch: authenticate by SO_PEERCRED, check the operation's permission,
/// re-validate arguments against the policy, apply under one lock, audit, answer.
public final class HelperServer: @unchecked Sendable {
    public let policy: HelperPolicy
    let logger: Logger
    let audit: Logger
    let applyLock = NSLock()
    public let counters = HelperCounters()
    let maxConnections = 16
    private var active = 0
    private let activeLock = NSLock()

    public init(policy: HelperPolicy, logger: Logger) {
        self.policy = policy
        self.logger = logger
        var a = Logger(label: "relay-helper.audit")
        a.logLevel = .info
        audit = a
    }

    /// Serves forever on `listener`, one thread per connection (bounded).
    public func serve(_ listener: UnixListener) throws -> Never {
        while true {
            let conn = try listener.accept(maxFrame: policy.maxRequestBytes)
            activeLock.lock()
            let tooMany = active >= maxConnections
            if !tooMany { active += 1 }
            activeLock.unlock()
            if tooMany {
                counters.bump("refused_busy")
                try? conn.send(HelperCodec.encode(HelperResponse(id: 0, error: WireError("helper.busy", "too many connections (\(maxConnections)); retry later"))))
                conn.close()
                continue
            }
            let t = Thread { [self] in
                self.handle(conn)
                self.activeLock.lock(); self.active -= 1; self.activeLock.unlock()
            }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// One connection: refuse strangers, then answer requests until the client leaves or misbehaves.
    public func handle(_ conn: UnixConnection) {
        defer { conn.close() }
        guard let cred = try? conn.peerCredentials() else { return }
        let perm = policy.permission(uid: cred.uid, gid: cred.gid)
        guard perm != .none else {
            counters.bump("refused_client")
            logger.warning("refused connection from uid \(cred.uid) gid \(cred.gid) pid \(cred.pid): not a client in the policy")
            try? conn.send(HelperCodec.encode(HelperResponse(id: 0, error: WireError(WireError.notAuthorized,
                "uid \(cred.uid) is not a client of relay-helper: add it to [clients] in the helper's policy",
                context: ["uid": String(cred.uid), "gid": String(cred.gid)]))))
            return
        }
        conn.setReceiveTimeout(seconds: 30)
        while true {
            let frame: [UInt8]
            do {
                guard let (payload, fd) = try conn.receive() else { return }
                if fd >= 0 { close(fd); counters.bump("refused_descriptor") }
                frame = payload
            } catch let e as WireError {
                counters.bump("refused_oversized")
                try? conn.send(HelperCodec.encode(HelperResponse(id: 0, error: e)))
                return
            } catch {
                counters.bump("refused_broken")
                return
            }
            let req: HelperRequest
            switch HelperCodec.decodeRequest(frame) {
            case .failure(let e):
                counters.bump("refused_malformed")
                logger.notice("malformed request from uid \(cred.uid): \(e.message)")
                try? conn.send(HelperCodec.encode(HelperResponse(id: 0, error: e)))
                return  // the stream is framed, but a client that sends garbage is not trusted further
            case .success(let r): req = r
            }
            let response = dispatch(req, cred: cred, permission: perm)
            do { try conn.send(HelperCodec.encode(response)) } catch { return }
        }
    }

    public func dispatch(_ req: HelperRequest, cred: PeerCredentials, permission: HelperPolicy.Permission) -> HelperResponse {
        if req.op.permission == .write && permission != .write {
            counters.bump("refused_permission")
            return HelperResponse(id: req.id, error: WireError(WireError.permissionDenied,
                "uid \(cred.uid) may only read; '\(req.op.rawValue)' needs a client listed in [clients] uids/gids"))
        }
        if req.op != .applyNAT && req.nat != nil {
            counters.bump("refused_malformed")
            return HelperResponse(id: req.id, error: WireError(WireError.malformed, "'nat' is only allowed with apply_nat"))
        }
        do {
            switch req.op {
            case .hello:
                return HelperResponse(id: req.id, hello: HelperHello(version: RelayVersion.string, protocolVersion: helperProtocolVersion,
                                                                     table: "inet \(policy.table.name)", permission: permission.rawValue))
            case .observe:
                return HelperResponse(id: req.id, table: try NftablesTable(spec: policy.table).observe())
            case .applyNAT:
                guard let nat = req.nat else {
                    return HelperResponse(id: req.id, error: WireError(WireError.malformed, "apply_nat needs 'nat'"))
                }
                let problems = policy.check(nat)
                guard problems.isEmpty else {
                    counters.bump("refused_policy")
                    audit.notice("refused apply_nat from uid \(cred.uid) pid \(cred.pid): \(problems.joined(separator: "; "))")
                    return HelperResponse(id: req.id, error: WireError("policy.refused", problems.joined(separator: "; "),
                                                                      context: ["problems": String(problems.count)]))
                }
                applyLock.lock(); defer { applyLock.unlock() }
                let table = try NftablesTable(spec: policy.table)
                let report = try table.apply(TablePlan(nat, spec: policy.table))
                if report.changed {
                    audit.info("uid \(cred.uid) pid \(cred.pid) applied NAT to inet \(policy.table.name): \(nat.dnat.count) dnat, \(nat.snat.count) snat, \(nat.dnatExact.count + nat.snatExact.count) exact, \(nat.remote.count) remote; rewrote chains \(report.rewrittenChains), replaced sets \(report.replacedSets), removed sets \(report.removedSets); \(report.messages) messages")
                }
                return HelperResponse(id: req.id, report: report)
            case .cleanup:
                applyLock.lock(); defer { applyLock.unlock() }
                let removed = try NftablesTable(spec: policy.table).delete()
                audit.info("uid \(cred.uid) pid \(cred.pid) cleanup: table inet \(policy.table.name) \(removed ? "deleted" : "was absent")")
                return HelperResponse(id: req.id, report: ApplyReport(changed: removed, messages: removed ? 1 : 0, bytes: 0, rewrittenChains: [], replacedSets: [], removedSets: []))
            }
        } catch let e as RelayNetlink.NetlinkError {
            return HelperResponse(id: req.id, error: WireError("kernel.\(e.code.rawValue)", e.description, context: ["errno": String(e.errno)]))
        } catch {
            return HelperResponse(id: req.id, error: WireError("helper.internal", "\(error)"))
        }
    }
}

import Foundation
import GRDB
import RelayCore

/// A relay's durable state, in SQLite (GRDB) in its state directory: callsigns and device
/// admission (allow and block lists by key or callsign). A database that cannot be opened or fails
/// its integrity check is moved aside (`relay.sqlite.corrupt-TIME`) and reported, never silently
/// replaced; the relay then starts with an empty store and says so.
public final class RelayStore: @unchecked Sendable {
    public let path: String
    /// Where a corrupt database was put, and why (nil when the store opened cleanly).
    public private(set) var setAside: (path: String, reason: String)?
    private let db: DatabaseQueue

    public struct Record: Codable, Equatable, Sendable, FetchableRecord, PersistableRecord {
        public static let databaseTableName = "callsign"
        public var callsign: String
        /// The key (base64) it is bound to.
        public var key: String
        public var claimedAt: Double
        public var lastSeen: Double
        /// The device lets anyone see its status (`GET /devices/CALLSIGN`).
        public var listed: Bool
    }

    public enum Admission: String, Codable, Sendable, CaseIterable { case allow, block }

    public struct AdmissionEntry: Codable, Equatable, Sendable, FetchableRecord, PersistableRecord {
        public static let databaseTableName = "admission"
        public var kind: String
        /// A key (base64, 44 characters) or a callsign.
        public var subject: String
        public var addedAt: Double
    }

    /// Opens (or creates) `directory/relay.sqlite`.
    public init(directory: String) throws {
        let path = directory + "/relay.sqlite"
        self.path = path
        var aside: (String, String)?
        func open() throws -> DatabaseQueue {
            var c = Configuration()
            c.journalMode = .wal
            let q = try DatabaseQueue(path: path, configuration: c)
            // quick_check reads every page: a damaged file fails here, not later mid-request.
            let check = try q.read { try String.fetchOne($0, sql: "PRAGMA quick_check") } ?? "?"
            guard check == "ok" else { throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "integrity check: \(check)") }
            try RelayStore.migrator.migrate(q)
            return q
        }
        do {
            db = try open()
        } catch let e as DatabaseError where [.SQLITE_CORRUPT, .SQLITE_NOTADB].contains(e.resultCode.primaryResultCode) {
            let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
            let moved = path + ".corrupt-" + stamp
            for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
                try FileManager.default.moveItem(atPath: path + suffix, toPath: moved + suffix)
            }
            aside = (moved, "\(e.message ?? "\(e)")")
            db = try open()
        }
        setAside = aside
        try? FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.create(table: "callsign") { t in
                t.column("callsign", .text).primaryKey()
                t.column("key", .text).notNull().indexed()
                t.column("claimedAt", .double).notNull()
                t.column("lastSeen", .double).notNull()
                t.column("listed", .boolean).notNull().defaults(to: false)
            }
            try db.create(table: "admission") { t in
                t.column("kind", .text).notNull()
                t.column("subject", .text).notNull()
                t.column("addedAt", .double).notNull()
                t.primaryKey(["kind", "subject"])
            }
        }
        return m
    }

    // MARK: callsigns

    public enum ClaimResult: Equatable, Sendable {
        case claimed(String), alreadyYours(String), taken(String), invalid(Callsign.Problem), quota(Int), blocked(String)
    }

    /// `key` claims `text`: the first claim binds it; a callsign held by another key is refused, so
    /// are reserved and malformed names, a blocked callsign, and more than `quota` per key.
    public func claim(_ text: String, key: String, listed: Bool, quota: Int, now: Double) throws -> ClaimResult {
        let name: String
        switch Callsign.normalize(text) {
        case .failure(let p): return .invalid(p)
        case .success(let n): name = n
        }
        return try db.write { db in
            if try AdmissionEntry.filter(Column("kind") == Admission.block.rawValue && Column("subject") == name).fetchCount(db) > 0 { return .blocked(name) }
            if var r = try Record.fetchOne(db, key: name) {
                guard r.key == key else { return .taken(name) }
                r.lastSeen = now; r.listed = listed
                try r.update(db)
                return .alreadyYours(name)
            }
            let held = try Record.filter(Column("key") == key).fetchCount(db)
            guard held < quota else { return .quota(quota) }
            try Record(callsign: name, key: key, claimedAt: now, lastSeen: now, listed: listed).insert(db)
            return .claimed(name)
        }
    }

    /// Frees a callsign (operator); false when nobody held it.
    public func release(_ text: String) throws -> Bool {
        guard case .success(let name) = Callsign.normalize(text) else { return false }
        return try db.write { try Record.deleteOne($0, key: name) }
    }

    /// The key was heard from: its callsigns stay in use.
    public func touch(key: String, now: Double) throws {
        try db.write { try $0.execute(sql: "UPDATE callsign SET lastSeen = ? WHERE key = ?", arguments: [now, key]) }
    }

    /// Callsigns unused for `seconds` are released; returns them.
    public func expire(unusedFor seconds: Double, now: Double) throws -> [String] {
        try db.write { db in
            let old = try Record.filter(Column("lastSeen") < now - seconds).fetchAll(db)
            for r in old { _ = try Record.deleteOne(db, key: r.callsign) }
            return old.map(\.callsign)
        }
    }

    public func callsigns() throws -> [Record] { try db.read { try Record.order(Column("callsign")).fetchAll($0) } }

    public func record(_ text: String) throws -> Record? {
        guard case .success(let name) = Callsign.normalize(text) else { return nil }
        return try db.read { try Record.fetchOne($0, key: name) }
    }

    public func callsigns(of key: String) throws -> [String] {
        try db.read { try String.fetchAll($0, sql: "SELECT callsign FROM callsign WHERE key = ? ORDER BY callsign", arguments: [key]) }
    }

    // MARK: admission

    /// Adds (or with `on: false` removes) a key or callsign on the allow or block list.
    public func setAdmission(_ kind: Admission, _ subject: String, on: Bool, now: Double) throws {
        let s = subject.count == 44 && subject.hasSuffix("=") ? subject : (try? Callsign.normalize(subject).get()) ?? subject
        try db.write { db in
            if on { try AdmissionEntry(kind: kind.rawValue, subject: s, addedAt: now).save(db) }
            else { _ = try AdmissionEntry.deleteOne(db, key: ["kind": kind.rawValue, "subject": s]) }
        }
    }

    public func admission() throws -> [AdmissionEntry] { try db.read { try AdmissionEntry.order(Column("kind"), Column("subject")).fetchAll($0) } }

    /// Keys allowed and blocked, directly or through a callsign they hold.
    public func admissionKeys() throws -> (allowed: Set<String>, blocked: Set<String>) {
        try db.read { db in
            var allowed = Set<String>(), blocked = Set<String>()
            for e in try AdmissionEntry.fetchAll(db) {
                var keys = [e.subject]
                if !(e.subject.count == 44 && e.subject.hasSuffix("=")) { keys = try String.fetchAll(db, sql: "SELECT key FROM callsign WHERE callsign = ?", arguments: [e.subject]) }
                if e.kind == Admission.allow.rawValue { allowed.formUnion(keys) } else { blocked.formUnion(keys) }
            }
            return (allowed, blocked)
        }
    }
}

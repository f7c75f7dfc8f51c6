import RelayCore
import RelayNftables
import TOMLKit
#if canImport(Glibc)
import Glibc
#endif

/// The helper's policy: who may ask, what it owns, what may appear in requests. Fails closed:
/// an empty client list serves nobody; prefixes outside `allowed_prefixes` are refused.
public struct HelperPolicy: Equatable, Sendable {
    public var clientUIDs: [UInt32] = [0]
    public var clientGIDs: [UInt32] = []
    public var readerUIDs: [UInt32] = []
    public var readerGIDs: [UInt32] = []
    public var table = TableSpec()
    public var allowedPrefixes: [IPPrefix] = []
    public var maxElements = 200_000
    public var devicePrefix = "relay"
    public var routeTable: UInt32 = 254
    public var routeProtocol: UInt8 = 0xc4
    public var maxRoutes = 1024
    public var maxRequestBytes = 32 << 20
    public var maxDevices = 4
    public var maxDeviceAddresses = 8
    /// Opt-in: operator chains that get one counted jump into `integrationChain` (same table).
    public var integrationPoints: [IntegrationPoint] = []
    public var integrationChain = "relay-accept"
    /// Things worth knowing that do not make the policy invalid (e.g. a user name that does not exist).
    public var warnings: [String] = []

    public var integrations: [Integration] {
        integrationPoints.map { Integration(point: $0, ownChain: integrationChain, devicePrefix: devicePrefix) }
    }

    public init() {}

    public enum Permission: String, Sendable { case none, read, write }

    public func permission(uid: UInt32, gid: UInt32) -> Permission {
        if clientUIDs.contains(uid) || clientGIDs.contains(gid) { return .write }
        if readerUIDs.contains(uid) || readerGIDs.contains(gid) { return .read }
        return .none
    }
}

public struct PolicyError: Error, CustomStringConvertible, Equatable {
    public var file: String
    public var problems: [String]
    public var description: String { "policy \(file) is invalid:\n" + problems.map { "  - \($0)" }.joined(separator: "\n") }
}

extension HelperPolicy {
    static let known: [String: Set<String>] = [
        "clients": ["uids", "gids", "read_uids", "read_gids", "users", "groups", "read_users", "read_groups"],
        "table": ["name", "dnat_priority", "snat_priority"],
        "nat": ["allowed_prefixes", "max_elements"],
        "devices": ["prefix", "max_devices", "max_addresses"],
        "integration": ["chains", "chain_name"],
        "routes": ["table", "protocol", "max_routes"],
        "limits": ["max_request_bytes"],
    ]

    /// Parses and validates a policy file's text; every problem is reported with its key.
    public static func parse(_ text: String, file: String = "<policy>") throws -> HelperPolicy {
        var problems: [String] = []
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch let e as TOMLParseError {
            throw PolicyError(file: file, problems: ["TOML syntax error at line \(e.source.begin.line), column \(e.source.begin.column): \(e.description)"])
        }
        var p = HelperPolicy()
        for key in root.keys where known[key] == nil {
            problems.append("unknown section [\(key)] (known: \(known.keys.sorted().joined(separator: ", ")))")
        }
        func section(_ name: String) -> TOMLTable? {
            guard let v = root[name] else { return nil }
            guard let t = v.table else { problems.append("\(name) must be a table: [\(name)]"); return nil }
            for k in t.keys where !(known[name]!.contains(k)) {
                problems.append("unknown key \(name).\(k) (known: \(known[name]!.sorted().joined(separator: ", ")))")
            }
            return t
        }
        func ints(_ t: TOMLTable, _ s: String, _ k: String, max: Int) -> [UInt32]? {
            guard let v = t[k] else { return nil }
            guard let arr = v.array else { problems.append("\(s).\(k) must be an array of numbers"); return nil }
            var out: [UInt32] = []
            for e in arr {
                guard let i = e.int, i >= 0, i <= max else { problems.append("\(s).\(k): \(e) is not a number 0...\(max)"); continue }
                out.append(UInt32(i))
            }
            return out
        }
        func int(_ t: TOMLTable, _ s: String, _ k: String, _ range: ClosedRange<Int>) -> Int? {
            guard let v = t[k] else { return nil }
            guard let i = v.int, range.contains(i) else { problems.append("\(s).\(k) must be a number in \(range.lowerBound)...\(range.upperBound)"); return nil }
            return i
        }
        if let c = section("clients") {
            if let v = ints(c, "clients", "uids", max: Int(UInt32.max)) { p.clientUIDs = v }
            if let v = ints(c, "clients", "gids", max: Int(UInt32.max)) { p.clientGIDs = v }
            if let v = ints(c, "clients", "read_uids", max: Int(UInt32.max)) { p.readerUIDs = v }
            if let v = ints(c, "clients", "read_gids", max: Int(UInt32.max)) { p.readerGIDs = v }
            // Names, resolved now; a name that does not exist grants nothing (fail closed) and is a warning.
            func names(_ k: String, user: Bool) -> [UInt32] {
                guard let v = c[k] else { return [] }
                guard let arr = v.array else { problems.append("clients.\(k) must be an array of names"); return [] }
                var out: [UInt32] = []
                for e in arr {
                    guard let n = e.string, !n.isEmpty, n.count <= 64 else { problems.append("clients.\(k): \(e) is not a name"); continue }
                    if user, let pw = getpwnam(n) { out.append(pw.pointee.pw_uid) } else if !user, let gr = getgrnam(n) { out.append(gr.pointee.gr_gid) } else {
                        p.warnings.append("clients.\(k): no \(user ? "user" : "group") named '\(n)' on this system: it grants nothing")
                    }
                }
                return out
            }
            p.clientUIDs += names("users", user: true)
            p.clientGIDs += names("groups", user: false)
            p.readerUIDs += names("read_users", user: true)
            p.readerGIDs += names("read_groups", user: false)
        }
        if let t = section("table") {
            if let v = t["name"] {
                if let s = v.string, HelperPolicy.isValidName(s, max: 32) { p.table.name = s } else {
                    problems.append("table.name must be 1-32 characters of [a-z0-9_-], starting with a letter")
                }
            }
            if let v = int(t, "table", "dnat_priority", -400...400) { p.table.dnatPriority = Int32(v) }
            if let v = int(t, "table", "snat_priority", -400...400) { p.table.snatPriority = Int32(v) }
        }
        if let n = section("nat") {
            if let v = n["allowed_prefixes"] {
                if let arr = v.array {
                    for e in arr {
                        guard let s = e.string else { problems.append("nat.allowed_prefixes: \(e) is not a string"); continue }
                        do { p.allowedPrefixes.append(try IPPrefix(parsing: s)) } catch { problems.append("nat.allowed_prefixes: \(error)") }
                    }
                } else { problems.append("nat.allowed_prefixes must be an array of prefixes") }
            }
            if let v = int(n, "nat", "max_elements", 0...10_000_000) { p.maxElements = v }
        }
        if let d = section("devices") {
            if let v = d["prefix"] {
                if let s = v.string, HelperPolicy.isValidName(s, max: 8) { p.devicePrefix = s } else {
                    problems.append("devices.prefix must be 1-8 characters of [a-z0-9_-], starting with a letter (device names are at most 15)")
                }
            }
            if let v = int(d, "devices", "max_devices", 0...64) { p.maxDevices = v }
            if let v = int(d, "devices", "max_addresses", 0...64) { p.maxDeviceAddresses = v }
        }
        if let g = section("integration") {
            if let v = g["chains"] {
                if let arr = v.array {
                    for e in arr {
                        if let s = e.string, let ip = IntegrationPoint(s) { p.integrationPoints.append(ip) } else {
                            problems.append("integration.chains: \(e) is not \"FAMILY TABLE CHAIN\" (e.g. \"inet filter forward\"; family inet, ip or ip6)")
                        }
                    }
                } else { problems.append("integration.chains must be an array of \"FAMILY TABLE CHAIN\" strings") }
            }
            if let v = g["chain_name"] {
                if let s = v.string, HelperPolicy.isValidName(s, max: 32) { p.integrationChain = s } else {
                    problems.append("integration.chain_name must be 1-32 characters of [a-z0-9_-], starting with a letter")
                }
            }
        }
        if let r = section("routes") {
            if let v = int(r, "routes", "table", 1...0xffff_fffe) { p.routeTable = UInt32(v) }
            if let v = int(r, "routes", "protocol", 5...254) { p.routeProtocol = UInt8(v) }
            if let v = int(r, "routes", "max_routes", 0...1_000_000) { p.maxRoutes = v }
        }
        if let l = section("limits"), let v = int(l, "limits", "max_request_bytes", 4096...(1 << 30)) { p.maxRequestBytes = v }
        if p.allowedPrefixes.isEmpty { problems.append("nat.allowed_prefixes is empty: the helper would refuse every NAT state; list the LAN and virtual prefixes it may program") }
        if !problems.isEmpty { throw PolicyError(file: file, problems: problems) }
        return p
    }

    static func isValidName(_ s: String, max: Int) -> Bool {
        guard let f = s.unicodeScalars.first, ("a"..."z").contains(f), s.count <= max else { return false }
        return s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }

    func allowed(_ p: IPPrefix) -> Bool { allowedPrefixes.contains { $0.family == p.family && $0.length <= p.length && $0.contains(p.address) } }
    func allowed(_ a: IPAddress) -> Bool { allowedPrefixes.contains { $0.contains(a) } }

    /// True for a device name the helper may create and own: <prefix><[a-z0-9_-]...>, at most 15.
    public func ownsDevice(_ name: String) -> Bool {
        name.hasPrefix(devicePrefix) && name.count > devicePrefix.count && name.utf8.count <= 15
            && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }

    /// Re-validates routes: destinations inside the allowed prefixes, devices the helper owns, a cap.
    public func check(routes: [RouteSpec]) -> [String] {
        var out: [String] = []
        if routes.count > maxRoutes { out.append("\(routes.count) routes exceed the policy's routes.max_routes = \(maxRoutes)") }
        var seen = Set<String>()
        for (i, r) in routes.enumerated() {
            if !allowed(r.destination) { out.append("routes[\(i)] \(r.destination) is outside the policy's nat.allowed_prefixes") }
            if !ownsDevice(r.device) { out.append("routes[\(i)] device '\(r.device.prefix(32))' is not one of the helper's devices (names start with '\(devicePrefix)')") }
            if !seen.insert("\(r.destination) \(r.metric ?? 0)").inserted { out.append("routes[\(i)] \(r.destination) is listed twice") }
            if out.count > 20 { out.append("..."); break }
        }
        return out
    }

    /// Re-validates a TUN device request.
    public func check(device d: DeviceSpec) -> [String] {
        var out: [String] = []
        if !ownsDevice(d.name) {
            out.append("device name '\(d.name.prefix(32))' must be '\(devicePrefix)' followed by [a-z0-9_-], at most 15 characters (devices.prefix)")
        }
        let minMTU = d.addresses.contains { $0.family == .ipv6 } ? 1280 : 576
        if !(minMTU...65535).contains(d.mtu) { out.append("mtu \(d.mtu) must be \(minMTU)...65535\(minMTU == 1280 ? " (IPv6 needs at least 1280)" : "")") }
        if d.addresses.count > maxDeviceAddresses { out.append("\(d.addresses.count) addresses exceed devices.max_addresses = \(maxDeviceAddresses)") }
        for (i, a) in d.addresses.enumerated() where !allowed(a.address) {
            out.append("addresses[\(i)] \(a) is outside the policy's nat.allowed_prefixes")
        }
        if Set(d.addresses).count != d.addresses.count { out.append("an address is listed twice") }
        return out
    }

    /// Re-validates a NAT state against this policy. Empty when acceptable.
    public func check(_ state: NATState) -> [String] {
        var out = state.problems()
        if state.elementCount > maxElements {
            out.append("\(state.elementCount) entries exceed the policy's nat.max_elements = \(maxElements)")
        }
        var reported = 0
        func refuse(_ what: String) {
            reported += 1
            if reported <= 10 { out.append("\(what) is outside the policy's nat.allowed_prefixes") }
        }
        for (name, maps) in [("dnat", state.dnat), ("snat", state.snat)] {
            for (i, m) in maps.enumerated() {
                if !allowed(m.match) { refuse("\(name)[\(i)] \(m.match)") }
                if !allowed(m.translate) { refuse("\(name)[\(i)] \(m.translate)") }
            }
        }
        for (name, maps) in [("dnatExact", state.dnatExact), ("snatExact", state.snatExact)] {
            for (i, m) in maps.enumerated() {
                if !allowed(m.match) { refuse("\(name)[\(i)] \(m.match)") }
                if !allowed(m.translate) { refuse("\(name)[\(i)] \(m.translate)") }
            }
        }
        for (i, r) in state.remote.enumerated() where !allowed(r) { refuse("remote[\(i)] \(r)") }
        if reported > 10 { out.append("... and \(reported - 10) more outside nat.allowed_prefixes") }
        return out
    }
}

import RelayCore
import RelayNftables
import TOMLKit

/// The policy file (TOML): every problem is reported with its key, and nothing unknown is ignored.
extension HelperPolicy {
    static let known: [String: Set<String>] = [
        "clients": ["uids", "gids", "read_uids", "read_gids", "users", "groups", "read_users", "read_groups"],
        "table": ["name", "dnat_priority", "snat_priority"],
        "nat": ["translate", "max_elements"],
        "routes": ["destinations", "table", "protocol", "max_routes"],
        "devices": ["addresses", "prefix", "max_devices", "max_addresses"],
        "exit": ["default_route"],
        "masquerade": ["interfaces"],
        "filter": ["max_rules"],
        "integration": ["chains", "chain_name"],
        "limits": ["max_request_bytes", "max_writer_connections", "max_reader_connections", "max_connections_per_uid",
                   "idle_seconds", "frame_seconds"],
    ]

    /// Keys of earlier versions, with what replaced them.
    static let retired: [String: String] = [
        "nat.allowed_prefixes": "nat.allowed_prefixes was one list for every kind of object; it is now three narrower ones: nat.translate (your LANs and this site's virtual prefixes), routes.destinations (other sites' virtual prefixes) and devices.addresses (what a Relay device may carry). See policies/helper.toml",
    ]

    /// Parses and validates a policy file's text; every problem is reported with its key.
    public static func parse(_ text: String, file: String = "<policy>", names resolver: NameResolver = .system) throws -> HelperPolicy {
        var problems: [String] = []
        if let p = TOMLText.check(text) { throw PolicyError(file: file, problems: ["TOML syntax error at \(p)"]) }
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch let e as TOMLParseError {
            throw PolicyError(file: file, problems: ["TOML syntax error at line \(e.source.begin.line), column \(e.source.begin.column): \(e.description)"])
        } catch {
            throw PolicyError(file: file, problems: ["cannot parse: \(error)"])
        }
        var p = HelperPolicy()
        for key in root.keys where known[key] == nil {
            problems.append("unknown section [\(key.prefix(64))] (known: \(known.keys.sorted().joined(separator: ", ")))")
        }
        func section(_ name: String) -> TOMLTable? {
            guard let v = root[name] else { return nil }
            guard let t = v.table else { problems.append("\(name) must be a table: [\(name)]"); return nil }
            for k in t.keys where !(known[name]!.contains(k)) {
                if let why = retired["\(name).\(k)"] { problems.append(why); continue }
                problems.append("unknown key \(name).\(k.prefix(64)) (known: \(known[name]!.sorted().joined(separator: ", ")))")
            }
            return t
        }
        func ints(_ t: TOMLTable, _ s: String, _ k: String) -> [UInt32]? {
            guard let v = t[k] else { return nil }
            guard let arr = v.array else { problems.append("\(s).\(k) must be an array of numbers"); return nil }
            var out: [UInt32] = []
            for e in arr {
                guard let i = e.int, i >= 0, i <= Int(UInt32.max) else { problems.append("\(s).\(k): \(String(describing: e).prefix(64)) is not a number 0...\(UInt32.max)"); continue }
                out.append(UInt32(i))
            }
            return out
        }
        func int(_ t: TOMLTable, _ s: String, _ k: String, _ range: ClosedRange<Int>) -> Int? {
            guard let v = t[k] else { return nil }
            guard let i = v.int, range.contains(i) else { problems.append("\(s).\(k) must be a number in \(range.lowerBound)...\(range.upperBound)"); return nil }
            return i
        }
        func strings(_ t: TOMLTable, _ s: String, _ k: String, what: String, valid: (String) -> Bool) -> [String]? {
            guard let v = t[k] else { return nil }
            guard let arr = v.array else { problems.append("\(s).\(k) must be an array of \(what)s"); return nil }
            var out: [String] = []
            for e in arr {
                guard let n = e.string, valid(n) else { problems.append("\(s).\(k): \(String(describing: e).prefix(64)) is not a \(what)"); continue }
                out.append(n)
            }
            return out
        }
        func prefixes(_ t: TOMLTable, _ s: String, _ k: String) -> [IPPrefix]? {
            guard let v = t[k] else { return nil }
            guard let arr = v.array else { problems.append("\(s).\(k) must be an array of prefixes such as \"240.0.0.0/4\""); return nil }
            var out: [IPPrefix] = []
            for e in arr {
                guard let str = e.string else { problems.append("\(s).\(k): \(String(describing: e).prefix(64)) is not a string"); continue }
                do {
                    let pfx = try IPPrefix(parsing: str)
                    if pfx.length == 0 {
                        problems.append("\(s).\(k): \(pfx) would allow everything; a default route is granted apart, with [exit] default_route")
                    } else { out.append(pfx) }
                } catch { problems.append("\(s).\(k): \(error)") }
            }
            return out
        }
        func bool(_ t: TOMLTable, _ s: String, _ k: String) -> Bool? {
            guard let v = t[k] else { return nil }
            guard let b = v.bool else { problems.append("\(s).\(k) must be true or false"); return nil }
            return b
        }

        if let c = section("clients") {
            if let v = ints(c, "clients", "uids") { p.clientUIDs = v }
            if let v = ints(c, "clients", "gids") { p.clientGIDs = v }
            if let v = ints(c, "clients", "read_uids") { p.readerUIDs = v }
            if let v = ints(c, "clients", "read_gids") { p.readerGIDs = v }
            // Names are kept and resolved for every connection; one unknown now is a warning.
            func names(_ k: String, user: Bool) -> [String] {
                let list = strings(c, "clients", k, what: "name") { !$0.isEmpty && $0.utf8.count <= 64 } ?? []
                for n in list where (user ? resolver.uid(n) : resolver.gid(n)) == nil {
                    p.warnings.append("clients.\(k): no \(user ? "user" : "group") named '\(n)' on this system yet: it grants nothing until it exists")
                }
                return list
            }
            p.clientUserNames = names("users", user: true)
            p.clientGroupNames = names("groups", user: false)
            p.readerUserNames = names("read_users", user: true)
            p.readerGroupNames = names("read_groups", user: false)
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
            if let v = prefixes(n, "nat", "translate") { p.translate = v }
            if let v = int(n, "nat", "max_elements", 0...10_000_000) { p.maxElements = v }
        }
        if let r = section("routes") {
            if let v = prefixes(r, "routes", "destinations") { p.routeDestinations = v }
            if let v = int(r, "routes", "table", 1...0xffff_fffe) { p.routeTable = UInt32(v) }
            if let v = int(r, "routes", "protocol", 5...254) { p.routeProtocol = UInt8(v) }
            if let v = int(r, "routes", "max_routes", 0...1_000_000) { p.maxRoutes = v }
        }
        if let d = section("devices") {
            if let v = prefixes(d, "devices", "addresses") { p.deviceAddresses = v }
            if let v = d["prefix"] {
                if let s = v.string, HelperPolicy.isValidName(s, max: 8) { p.devicePrefix = s } else {
                    problems.append("devices.prefix must be 1-8 characters of [a-z0-9_-], starting with a letter (device names are at most 15)")
                }
            }
            if let v = int(d, "devices", "max_devices", 0...64) { p.maxDevices = v }
            if let v = int(d, "devices", "max_addresses", 0...64) { p.maxDeviceAddresses = v }
        }
        if let e = section("exit"), let v = bool(e, "exit", "default_route") { p.exitDefaultRoute = v }
        if let m = section("masquerade"), let v = strings(m, "masquerade", "interfaces", what: "interface name", valid: HelperPolicy.isInterfaceName) {
            p.masqueradeInterfaces = v
        }
        if let f = section("filter"), let v = int(f, "filter", "max_rules", 0...100_000) { p.maxFilterRules = v }
        if let g = section("integration") {
            if let v = g["chains"] {
                if let arr = v.array {
                    for e in arr {
                        if let s = e.string, let ip = IntegrationPoint(s) { p.integrationPoints.append(ip) } else {
                            problems.append("integration.chains: \(String(describing: e).prefix(64)) is not \"FAMILY TABLE CHAIN\" (e.g. \"inet filter forward\"; family inet, ip or ip6)")
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
        if let l = section("limits") {
            if let v = int(l, "limits", "max_request_bytes", 4096...(1 << 30)) { p.maxRequestBytes = v }
            if let v = int(l, "limits", "max_writer_connections", 1...1024) { p.maxWriterConnections = v }
            if let v = int(l, "limits", "max_reader_connections", 0...1024) { p.maxReaderConnections = v }
            if let v = int(l, "limits", "max_connections_per_uid", 1...1024) { p.maxConnectionsPerUID = v }
            if let v = int(l, "limits", "idle_seconds", 1...86400) { p.idleSeconds = v }
            if let v = int(l, "limits", "frame_seconds", 1...600) { p.frameSeconds = v }
        }
        if p.translate.isEmpty && p.routeDestinations.isEmpty && p.deviceAddresses.isEmpty && problems.isEmpty {
            problems.append("nat.translate, routes.destinations and devices.addresses are all empty: the helper would refuse every NAT map, route and device address; list the prefixes it may program")
        }
        if !problems.isEmpty { throw PolicyError(file: file, problems: problems) }
        return p
    }

    static func isValidName(_ s: String, max: Int) -> Bool {
        guard let f = s.unicodeScalars.first, ("a"..."z").contains(f), s.count <= max else { return false }
        return s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }

    /// A Linux interface name: 1-15 bytes, no '/', ':', whitespace or NUL.
    static func isInterfaceName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 15 && s != "." && s != ".."
            && s.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7f && $0 != "/" && $0 != ":" }
    }
}

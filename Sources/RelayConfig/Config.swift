import Foundation
import RelayCore
import TOMLKit

/// An invalid configuration: every problem, each with its key.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var file: String
    public var issues: [ConfigIssue]
    public init(file: String, issues: [ConfigIssue]) { self.file = file; self.issues = issues }
    public var description: String {
        "\(file) is invalid:\n" + issues.filter { $0.severity == .error }.map { "  - \($0.key): \($0.message)" }.joined(separator: "\n")
    }
}

/// relayd's TOML configuration (`/etc/relay/relayd.toml`; annotated example in contrib/relayd.toml).
public enum ConfigFile {
    static let known: [String: [String]] = [
        "": ["node", "site", "peer", "sessions", "reflector", "relay", "relays", "front_door", "paths"],
        "paths": ["hole_punching", "attempt_seconds", "retry_seconds", "heartbeat_seconds", "trust_seconds", "idle_seconds"],
        "front_door": ["enabled", "listen", "tls", "certificate", "private_key", "public_status", "max_connections_per_address", "header_seconds",
                       "idle_seconds", "max_message_bytes", "max_streams"],
        "relay": ["enabled", "port", "allowed_keys", "tokens", "max_nodes", "node_bytes_per_second", "node_datagrams_per_second", "registrations_per_second", "heartbeat_seconds",
                  "callsign_quota", "callsign_release_days"],
        "relays": ["address", "public_key", "token", "websocket", "ca_file", "spki_sha256"],
        "reflector": ["enabled", "port", "rate", "burst", "servers", "address", "other_address", "other_port", "rto_ms", "retransmissions", "interval"],
        "sessions": ["tcp_timeout", "udp_timeout", "icmp_timeout", "other_timeout", "max"],
        "node": ["name", "listen_port", "device", "mtu", "offload", "busy_poll", "adaptive_poll", "threads", "callsign", "callsign_listed"],
        "site": ["name", "lan4", "virtual4", "virtual6", "lan6", "virtual6_lan", "map"],
        "site.map": ["ipv4", "ipv6"],
        "peer": ["name", "public_key", "endpoint", "site"],
        "peer.site": ["name", "lan4", "virtual4", "virtual6", "virtual6_lan"],
    ]

    /// Parses and validates; throws `ConfigError` with every error (warnings come back with the config).
    public static func parse(_ text: String, file: String = "<config>") throws -> (RelayConfiguration, [ConfigIssue]) {
        if let p = TOMLText.check(text) {
            throw ConfigError(file: file, issues: [ConfigIssue(.error, "line \(p.line)", "TOML syntax error at column \(p.column): \(p.message)")])
        }
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch let e as TOMLParseError {
            throw ConfigError(file: file, issues: [ConfigIssue(.error, "line \(e.source.begin.line)", "TOML syntax error at column \(e.source.begin.column): \(e.description)")])
        }
        var issues: [ConfigIssue] = []
        func err(_ k: String, _ m: String) { issues.append(ConfigIssue(.error, k, m)) }
        func checkKeys(_ t: TOMLTable, _ section: String, _ path: String) {
            let allowed = known[section] ?? []
            for k in t.keys where !allowed.contains(k) {
                let hint = suggestion(k, allowed).map { " (did you mean '\($0)'?)" } ?? ""
                err(path.isEmpty ? k : "\(path).\(k)", "unknown key\(hint); known here: \(allowed.joined(separator: ", "))")
            }
        }
        func string(_ t: TOMLTable, _ k: String, _ path: String) -> String? {
            guard let v = t[k] else { return nil }
            guard let s = v.string else { err("\(path).\(k)", "must be a string"); return nil }
            return s
        }
        func prefix(_ t: TOMLTable, _ k: String, _ path: String) -> IPPrefix? {
            guard let s = string(t, k, path) else { return nil }
            do { return try IPPrefix(parsing: s) } catch { err("\(path).\(k)", "\(error)"); return nil }
        }
        func int(_ t: TOMLTable, _ k: String, _ path: String, _ r: ClosedRange<Int>) -> Int? {
            guard let v = t[k] else { return nil }
            guard let i = v.int, r.contains(i) else { err("\(path).\(k)", "must be a number in \(r.lowerBound)...\(r.upperBound)"); return nil }
            return i
        }
        func tables(_ k: String, in t: TOMLTable, _ path: String) -> [TOMLTable] {
            guard let v = t[k] else { return [] }
            if let arr = v.array { return arr.compactMap { e in
                guard let tt = e.table else { err(path, "[[\(k)]] entries must be tables"); return nil }
                return tt
            } }
            err(path, "use [[\(k)]] (an array of tables) for \(k)")
            return []
        }

        func site(_ t: TOMLTable, _ path: String, own: Bool) -> SiteConfig {
            checkKeys(t, own ? "site" : "peer.site", path)
            let name = string(t, "name", path) ?? ""
            if name.isEmpty { err("\(path).name", "every site needs a name") }
            var maps: [ExplicitMapping] = []
            if own {
                for (i, m) in tables("map", in: t, "\(path).map").enumerated() {
                    let k = "\(path).map[\(i)]"
                    checkKeys(m, "site.map", k)
                    let a4 = string(m, "ipv4", k), a6 = string(m, "ipv6", k)
                    guard let a4, let a6 else { err(k, "needs ipv4 and ipv6, e.g. { ipv4 = \"192.168.1.30\", ipv6 = \"fd00:cafe::30\" }"); continue }
                    guard let v4 = IPv4Address(a4) else { err("\(k).ipv4", "'\(a4)' is not an IPv4 address"); continue }
                    guard let v6 = IPv6Address(a6) else { err("\(k).ipv6", "'\(a6)' is not an IPv6 address"); continue }
                    maps.append(ExplicitMapping(ipv4: v4, ipv6: v6))
                }
            }
            return SiteConfig(name: name, lan4: prefix(t, "lan4", path), virtual4: prefix(t, "virtual4", path), virtual6: prefix(t, "virtual6", path),
                              lan6: own ? prefix(t, "lan6", path) : nil, virtual6Lan: prefix(t, "virtual6_lan", path), map: maps)
        }
        checkKeys(root, "", "")
        var cfg = RelayConfiguration()
        if let v = root["node"] {
            if let n = v.table {
                checkKeys(n, "node", "node")
                if let s = string(n, "name", "node") { cfg.node.name = s }
                if let p = int(n, "listen_port", "node", 0...65535) { cfg.node.listenPort = UInt16(p) }
                if let d = string(n, "device", "node") { cfg.node.device = d }
                if let m = int(n, "mtu", "node", 0...1_000_000) { cfg.node.mtu = m }
                if let e = n["offload"] { if let b = e.bool { cfg.node.offload = b } else { err("node.offload", "must be true or false") } }
                if let b = int(n, "busy_poll", "node", 0...1_000_000) { cfg.node.busyPoll = b }
                if let e = n["adaptive_poll"] { if let b = e.bool { cfg.node.adaptivePoll = b } else { err("node.adaptive_poll", "must be true or false") } }
                if let t = n["threads"] {
                    if t.string == "auto" { cfg.node.threads = 0 }
                    else if let i = t.int, i == 1 || i == 2 { cfg.node.threads = i }
                    else { err("node.threads", "must be 1, 2 or \"auto\"") }
                }
                if let c = string(n, "callsign", "node") { cfg.node.callsign = c }
                if let e = n["callsign_listed"] { if let b = e.bool { cfg.node.callsignListed = b } else { err("node.callsign_listed", "must be true or false") } }
            } else { err("node", "must be a table: [node]") }
        }
        if let v = root["sessions"] {
            if let t = v.table {
                checkKeys(t, "sessions", "sessions")
                if let x = int(t, "tcp_timeout", "sessions", 1...864_000) { cfg.sessions.tcp = Double(x) }
                if let x = int(t, "udp_timeout", "sessions", 1...864_000) { cfg.sessions.udp = Double(x) }
                if let x = int(t, "icmp_timeout", "sessions", 1...864_000) { cfg.sessions.icmp = Double(x) }
                if let x = int(t, "other_timeout", "sessions", 1...864_000) { cfg.sessions.other = Double(x) }
                if let x = int(t, "max", "sessions", 16...10_000_000) { cfg.sessions.maxFlows = x }
            } else { err("sessions", "must be a table: [sessions]") }
        }
        if let v = root["reflector"] {
            if let t = v.table {
                checkKeys(t, "reflector", "reflector")
                if let e = t["enabled"] { if let b = e.bool { cfg.reflector.enabled = b } else { err("reflector.enabled", "must be true or false") } }
                if let x = int(t, "port", "reflector", 0...65535) { cfg.reflector.port = UInt16(x) }
                if let x = int(t, "rate", "reflector", 1...100_000) { cfg.reflector.rate = Double(x) }
                if let x = int(t, "burst", "reflector", 1...100_000) { cfg.reflector.burst = Double(x) }
                for (k, path) in [("address", \RelayConfiguration.reflector.address), ("other_address", \RelayConfiguration.reflector.otherAddress)] {
                    if let s = string(t, k, "reflector") {
                        if let a = IPAddress(s) { cfg[keyPath: path] = a } else { err("reflector.\(k)", "'\(s)' is not an IPv4 or IPv6 address") }
                    }
                }
                if let x = int(t, "other_port", "reflector", 1...65535) { cfg.reflector.otherPort = UInt16(x) }
                if let x = int(t, "rto_ms", "reflector", 10...10_000) { cfg.reflector.rtoMilliseconds = x }
                if let x = int(t, "retransmissions", "reflector", 1...20) { cfg.reflector.retransmissions = x }
                if let x = int(t, "interval", "reflector", 5...86_400) { cfg.reflector.interval = x }
                if let v = t["servers"] {
                    if let arr = v.array {
                        for (i, e) in arr.enumerated() {
                            if let str = e.string, let ep = Endpoint(str) { cfg.reflector.servers.append(ep) } else {
                                err("reflector.servers[\(i)]", "\(e) is not ADDRESS:PORT (e.g. 198.51.100.7:3478 or [2001:db8::7]:3478)")
                            }
                        }
                    } else { err("reflector.servers", "must be an array of \"ADDRESS:PORT\" strings") }
                }
            } else { err("reflector", "must be a table: [reflector]") }
        }
        func strings(_ t: TOMLTable, _ k: String, _ path: String) -> [String]? {
            guard let v = t[k] else { return nil }
            guard let arr = v.array else { err("\(path).\(k)", "must be an array of strings"); return nil }
            var out: [String] = []
            for (i, e) in arr.enumerated() { if let s = e.string { out.append(s) } else { err("\(path).\(k)[\(i)]", "must be a string") } }
            return out
        }
        if let v = root["relay"] {
            if let t = v.table {
                checkKeys(t, "relay", "relay")
                if let e = t["enabled"] { if let b = e.bool { cfg.relay.enabled = b } else { err("relay.enabled", "must be true or false") } }
                if let x = int(t, "port", "relay", 0...65535) { cfg.relay.port = UInt16(x) }
                if let x = strings(t, "allowed_keys", "relay") { cfg.relay.allowedKeys = x }
                if let x = strings(t, "tokens", "relay") { cfg.relay.tokens = x }
                if let x = int(t, "max_nodes", "relay", 1...1_000_000) { cfg.relay.maxNodes = x }
                if let x = int(t, "node_bytes_per_second", "relay", 1000...10_000_000_000) { cfg.relay.nodeBytesPerSecond = x }
                if let x = int(t, "node_datagrams_per_second", "relay", 1...10_000_000) { cfg.relay.nodeDatagramsPerSecond = x }
                if let x = int(t, "registrations_per_second", "relay", 1...10_000) { cfg.relay.registrationsPerSecond = x }
                if let x = int(t, "heartbeat_seconds", "relay", 1...60) { cfg.relay.heartbeatSeconds = x }
                if let x = int(t, "callsign_quota", "relay", 0...1000) { cfg.relay.callsignQuota = x }
                if let x = int(t, "callsign_release_days", "relay", 1...3650) { cfg.relay.callsignReleaseDays = x }
            } else { err("relay", "must be a table: [relay]") }
        }
        if let v = root["front_door"] {
            if let t = v.table {
                checkKeys(t, "front_door", "front_door")
                func bool(_ k: String) -> Bool? {
                    guard let e = t[k] else { return nil }
                    if let b = e.bool { return b }
                    err("front_door.\(k)", "must be true or false"); return nil
                }
                if let b = bool("enabled") { cfg.frontDoor.enabled = b }
                if let b = bool("tls") { cfg.frontDoor.tls = b }
                if let b = bool("public_status") { cfg.frontDoor.publicStatus = b }
                if let a = string(t, "listen", "front_door") {
                    if let ep = Endpoint(a) { cfg.frontDoor.listen = ep } else { err("front_door.listen", "'\(a)' is not ADDRESS:PORT (e.g. [::]:443 or 0.0.0.0:8443)") }
                }
                if let x = string(t, "certificate", "front_door") { cfg.frontDoor.certificate = x }
                if let x = string(t, "private_key", "front_door") { cfg.frontDoor.privateKey = x }
                if let x = int(t, "max_connections_per_address", "front_door", 1...100_000) { cfg.frontDoor.maxConnectionsPerAddress = x }
                if let x = int(t, "header_seconds", "front_door", 1...300) { cfg.frontDoor.headerSeconds = x }
                if let x = int(t, "idle_seconds", "front_door", 5...3600) { cfg.frontDoor.idleSeconds = x }
                if let x = int(t, "max_message_bytes", "front_door", 1024...1_048_576) { cfg.frontDoor.maxMessageBytes = x }
                if let x = int(t, "max_streams", "front_door", 1...10_000) { cfg.frontDoor.maxStreams = x }
            } else { err("front_door", "must be a table: [front_door]") }
        }
        if let v = root["paths"] {
            if let t = v.table {
                checkKeys(t, "paths", "paths")
                func seconds(_ k: String, _ r: ClosedRange<Double>) -> Double? {
                    guard let e = t[k] else { return nil }
                    guard let x = e.double ?? e.int.map(Double.init), r.contains(x) else {
                        err("paths.\(k)", "must be a number of seconds in \(r.lowerBound)...\(r.upperBound)"); return nil
                    }
                    return x
                }
                if let e = t["hole_punching"] { if let b = e.bool { cfg.paths.holePunching = b } else { err("paths.hole_punching", "must be true or false") } }
                if let x = seconds("attempt_seconds", 1...120) { cfg.paths.attempt = x }
                if let x = seconds("retry_seconds", 1...3600) { cfg.paths.retry = x }
                if let x = seconds("heartbeat_seconds", 0.25...60) { cfg.paths.heartbeat = x }
                if let x = seconds("trust_seconds", 0.5...300) { cfg.paths.trust = x }
                if let x = seconds("idle_seconds", 1...3600) { cfg.paths.idle = x }
                if cfg.paths.trust <= cfg.paths.heartbeat {
                    err("paths.trust_seconds", "must be longer than heartbeat_seconds (\(cfg.paths.heartbeat)): a direct path is trusted across a few unanswered heartbeats")
                }
            } else { err("paths", "must be a table: [paths]") }
        }
        for (i, r) in tables("relays", in: root, "relays").enumerated() {
            let path = "relays[\(i)]"
            checkKeys(r, "relays", path)
            guard let a = string(r, "address", path) else { err("\(path).address", "missing: the relay's ADDRESS:PORT"); continue }
            guard let ep = Endpoint(a) else { err("\(path).address", "'\(a)' is not ADDRESS:PORT (e.g. 198.51.100.9:51821)"); continue }
            guard let key = string(r, "public_key", path) else { err("\(path).public_key", "missing: the relay's public key (`relayctl identity` on the relay prints it)"); continue }
            let ws = string(r, "websocket", path), caFile = string(r, "ca_file", path), pin = string(r, "spki_sha256", path)
            if let ws {
                let u = URLComponents(string: ws)
                if u?.scheme != "wss" && u?.scheme != "ws" || (u?.host ?? "").isEmpty {
                    err("\(path).websocket", "'\(ws)' is not a WebSocket URL: wss://HOST[:PORT]/relay (the relay's front door), or ws://HOST:PORT/relay for a LAN relay with front_door.tls = false")
                } else if u?.scheme == "ws" {
                    if caFile != nil || pin != nil { err("\(path).websocket", "ca_file and spki_sha256 check a certificate: they need a wss:// URL, not ws://") }
                    issues.append(ConfigIssue(.warning, "\(path).websocket", "ws:// is not encrypted: who talks to the relay is visible on the path (frames stay authenticated and tunnel datagrams sealed end to end); use it only on a LAN"))
                }
            } else if caFile != nil || pin != nil {
                err("\(path)", "ca_file and spki_sha256 check the relay's front door: set websocket = \"wss://HOST/relay\" too")
            }
            cfg.relays.append(RelayServerConfig(address: ep, publicKey: key, token: string(r, "token", path), webSocket: ws, caFile: caFile, spkiSHA256: pin))
        }
        if let v = root["site"] {
            if let t = v.table { cfg.site = site(t, "site", own: true) } else { err("site", "must be a table: [site] (one own site)") }
        }
        for (i, p) in tables("peer", in: root, "peer").enumerated() {
            let path = "peer[\(i)]"
            checkKeys(p, "peer", path)
            let name = string(p, "name", path) ?? ""
            if name.isEmpty { err("\(path).name", "every peer needs a name") }
            let key = string(p, "public_key", path)
            if key == nil { err("\(path).public_key", "missing: the peer's public key (`relayctl identity` on the peer prints it)") }
            var endpoint: Endpoint?
            if let e = string(p, "endpoint", path) {
                endpoint = Endpoint(e)
                if endpoint == nil { err("\(path).endpoint", "'\(e)' is not ADDRESS:PORT (e.g. 10.20.20.20:51820 or [fd00::1]:51820)") }
            }
            let sites = tables("site", in: p, "\(path).site").enumerated().map { j, s in site(s, "\(path).site[\(j)]", own: false) }
            cfg.peers.append(PeerConfig(name: name, publicKey: key ?? "", endpoint: endpoint, sites: sites))
        }
        let parseErrors = issues
        let all = parseErrors + cfg.validate().filter { v in
            // A key that failed to parse is reported once.
            !parseErrors.contains { $0.key == v.key }
        }
        if all.contains(where: { $0.severity == .error }) { throw ConfigError(file: file, issues: all) }
        return (cfg, all)
    }

    /// The closest known key within edit distance 2 (typos).
    static func suggestion(_ k: String, _ known: [String]) -> String? {
        func distance(_ a: String, _ b: String) -> Int {
            let a = Array(a), b = Array(b)
            var prev = Array(0...b.count)
            for i in 1...max(a.count, 1) where !a.isEmpty {
                var cur = [i] + Array(repeating: 0, count: b.count)
                for j in 1...max(b.count, 1) where !b.isEmpty {
                    cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
                }
                prev = cur
            }
            return a.isEmpty ? b.count : prev[b.count]
        }
        return known.map { ($0, distance(k, $0)) }.filter { $0.1 <= 2 }.min { $0.1 < $1.1 }?.0
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A throwaway network laboratory: namespaces (hosts), veth links, addresses, routes, forwarding,
/// NAT routers, and the processes started inside them. Everything it makes carries a per-run prefix
/// `rlab-<pid>-<starttime>-<n>-`; `teardown()` (called by `Lab.with`, by the signal handlers, and
/// by the next run for a crashed one) removes exactly that and ends exactly the processes it started.
public final class Lab {
    public static let namespaceMarker = "rlab-"

    public let prefix: String
    public private(set) var hosts: [String: LabHost] = [:]
    var processes: [LabProcess] = []
    private var tornDown = false
    private let lock = NSLock()
    /// This lab's process logs and files, under `Lab.logRoot`. Removed at teardown unless a failure
    /// was reported (then its path is printed with the report) or RELAY_LAB_KEEP_LOGS=1 (to read
    /// the logs of a test whose expectations failed).
    public let logDirectory: URL
    private var keepLogs = false

    /// Where every lab keeps its logs: `$TMPDIR/relay-lab/`. `make lab-clean` (`relay-lab clean`)
    /// removes those of runs that are gone.
    public static var logRoot: URL { FileManager.default.temporaryDirectory.appendingPathComponent("relay-lab") }

    /// Makes a new lab after removing what crashed earlier runs left behind.
    public init(_ label: String = "lab", prefix: String? = nil) throws {
        try Lab.requireTools()
        Lab.installSignalHandlers()
        if prefix == nil { Lab.removeStale(); Lab.removeStaleLogs() }  // what runs that are gone left behind
        let n = Lab.counter.increment()
        self.prefix = prefix ?? "\(Lab.namespaceMarker)\(getpid())-\(Lab.selfStartTime)-\(n)-"
        logDirectory = Lab.logRoot.appendingPathComponent("\(self.prefix)\(label.filter { $0.isLetter || $0.isNumber })-logs")
        try FileManager.default.createDirectory(at: logDirectory, withIntermediateDirectories: true)
        Lab.registry.add(self)
    }

    /// Runs `body` with a fresh lab and always tears it down. On failure the logs of every process
    /// the lab started are printed to stderr before the error is rethrown.
    public static func with<T>(_ label: String, _ body: (Lab) throws -> T) throws -> T {
        let lab = try Lab(label)
        defer { lab.teardown() }
        do {
            return try body(lab)
        } catch {
            FileHandle.standardError.write(Data(lab.failureReport(error).utf8))
            throw error
        }
    }

    /// A new host: a namespace with loopback up.
    @discardableResult
    public func host(_ name: String) throws -> LabHost {
        precondition(hosts[name] == nil, "host \(name) exists already")
        precondition(name.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" }, "host names are [A-Za-z0-9_]")
        let h = LabHost(lab: self, name: name, namespace: prefix + name)
        try Command.run(["ip", "netns", "add", h.namespace])
        hosts[name] = h
        try h.ip("link", "set", "lo", "up")
        // Quiet, deterministic IPv6: no DAD delays, no router solicitations.
        try h.sysctl("net.ipv6.conf.all.accept_dad", "0")
        try h.sysctl("net.ipv6.conf.default.accept_dad", "0")
        return h
    }

    /// A veth pair between two hosts, made directly inside the namespaces (nothing appears in the
    /// root namespace), with optional addresses, brought up.
    public func link(_ a: LabHost, _ aInterface: String, _ aAddresses: [String] = [],
                     _ b: LabHost, _ bInterface: String, _ bAddresses: [String] = [], mtu: Int? = nil) throws {
        try Command.run(["ip", "link", "add", aInterface, "netns", a.namespace, "type", "veth",
                         "peer", "name", bInterface, "netns", b.namespace])
        for (h, ifname, addrs) in [(a, aInterface, aAddresses), (b, bInterface, bAddresses)] {
            if let mtu { try h.ip("link", "set", ifname, "mtu", String(mtu)) }
            for addr in addrs { try h.addAddress(addr, dev: ifname) }
            try h.ip("link", "set", ifname, "up")
        }
    }

    /// Ends every process this lab started (TERM, then KILL after `grace`), then every process still
    /// inside its namespaces (children of those), then deletes the namespaces. Idempotent.
    public func teardown(grace: Double = 2) {
        lock.lock()
        if tornDown { lock.unlock(); return }
        tornDown = true
        lock.unlock()
        for p in processes { p.stop(grace: grace) }
        for h in hosts.values { Lab.removeNamespace(h.namespace) }
        Lab.registry.remove(self)
        lock.lock(); let keep = keepLogs || ProcessInfo.processInfo.environment["RELAY_LAB_KEEP_LOGS"] == "1"; lock.unlock()
        if !keep { try? FileManager.default.removeItem(at: logDirectory) }
    }

    /// Every process log, newest last, for a failing test.
    public func failureReport(_ error: Error) -> String {
        lock.lock(); keepLogs = true; lock.unlock()
        var s = "\n=== lab \(prefix) failed: \(error) (logs kept in \(logDirectory.path))\n"
        for p in processes {
            s += "--- \(p.label) (pid \(p.pid), host \(p.host.name)) \(p.exitDescription)\n"
            s += p.log(lastBytes: 8000) + "\n"
        }
        return s
    }

    // MARK: - Stale runs, signals

    /// Removes namespaces (and the processes inside them) that an earlier run of the harness left
    /// behind when it crashed. Only names with the harness marker whose creating process is gone are
    /// touched.
    public static func removeStale() {
        for ns in listNamespaces() {
            guard let owner = ownerOf(namespace: ns) else { continue }
            if !processAlive(pid: owner.pid, startTime: owner.startTime) {
                removeNamespace(ns)
            }
        }
    }

    /// Removes the log directories of runs that are gone (kept failures included). Returns how many.
    @discardableResult
    public static func removeStaleLogs() -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: logRoot.path)) ?? []
        var n = 0
        for d in names {
            guard let owner = ownerOf(namespace: d), !processAlive(pid: owner.pid, startTime: owner.startTime) else { continue }
            if (try? FileManager.default.removeItem(at: logRoot.appendingPathComponent(d))) != nil { n += 1 }
        }
        return n
    }

    static func ownerOf(namespace: String) -> (pid: Int32, startTime: UInt64)? {
        guard namespace.hasPrefix(namespaceMarker) else { return nil }
        let parts = namespace.dropFirst(namespaceMarker.count).split(separator: "-")
        guard parts.count >= 3, let pid = Int32(parts[0]), let st = UInt64(parts[1]) else { return nil }
        return (pid, st)
    }

    public static func listNamespaces() -> [String] {
        guard let r = try? Command.run(["ip", "-j", "netns", "list"], check: false), r.succeeded,
              let data = r.stdout.data(using: .utf8), !r.stdout.isEmpty,
              let arr = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]]
        else { return [] }
        return arr.compactMap { $0["name"] as? String }
    }

    /// Ends every process inside `ns` (TERM, then KILL) and deletes it.
    public static func removeNamespace(_ ns: String) {
        func pids() -> [Int32] {
            guard let r = try? Command.run(["ip", "netns", "pids", ns], check: false) else { return [] }
            return r.stdout.split(whereSeparator: \.isNewline).compactMap { Int32($0) }
        }
        var left = pids()
        for pid in left { kill(pid, SIGTERM) }
        let deadline = Date().addingTimeInterval(2)
        while !left.isEmpty && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
            left = pids()
        }
        for pid in left { kill(pid, SIGKILL) }
        _ = try? Command.run(["ip", "netns", "del", ns], check: false)
    }

    static let selfStartTime: UInt64 = startTime(of: getpid()) ?? 0

    static func startTime(of pid: Int32) -> UInt64? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // Field 22 (starttime) is the 20th after the command name.
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    static func processAlive(pid: Int32, startTime: UInt64) -> Bool {
        guard let st = Lab.startTime(of: pid) else { return false }
        return st == startTime
    }

    static func requireTools() throws {
        for tool in ["ip", "nft", "timeout", "setpriv"] {
            let r = try Command.run(["sh", "-c", "command -v \(tool)"], check: false)
            if !r.succeeded { throw HarnessError("the lab needs `\(tool)`: run `make deps` (apt-get install iproute2 nftables coreutils util-linux)") }
        }
    }

    final class Registry {
        private var labs: [ObjectIdentifier: Lab] = [:]
        private let lock = NSLock()
        func add(_ l: Lab) { lock.lock(); labs[ObjectIdentifier(l)] = l; lock.unlock() }
        func remove(_ l: Lab) { lock.lock(); labs[ObjectIdentifier(l)] = nil; lock.unlock() }
        func all() -> [Lab] { lock.lock(); defer { lock.unlock() }; return Array(labs.values) }
    }
    static let registry = Registry()

    final class Counter {
        private var n = 0
        private let lock = NSLock()
        func increment() -> Int { lock.lock(); defer { lock.unlock() }; n += 1; return n }
    }
    static let counter = Counter()

    private static var signalSources: [DispatchSourceSignal] = []
    private static let signalOnce: Void = {
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler {
                for lab in Lab.registry.all() { lab.teardown(grace: 0.5) }
                signal(sig, SIG_DFL)
                kill(getpid(), sig)
            }
            src.resume()
            signalSources.append(src)
        }
    }()

    /// On SIGINT/SIGTERM/SIGHUP every live lab is torn down before the process dies of the signal.
    static func installSignalHandlers() { _ = signalOnce }
}

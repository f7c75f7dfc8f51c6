import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One network namespace of a lab.
public final class LabHost {
    public unowned let lab: Lab
    public let name: String
    public let namespace: String

    init(lab: Lab, name: String, namespace: String) {
        self.lab = lab
        self.name = name
        self.namespace = namespace
    }

    static func userPrefix(_ uid: uid_t?, _ gid: gid_t?) -> [String] {
        guard let uid else { return [] }
        return ["setpriv", "--reuid=\(uid)", "--regid=\(gid ?? uid)", "--clear-groups", "--"]
    }

    /// Runs a command inside the host (optionally as `uid`), waiting for it.
    @discardableResult
    public func run(_ arguments: [String], as uid: uid_t? = nil, gid: gid_t? = nil, timeout: Double = 30,
                    check: Bool = true, stdin: String? = nil) throws -> CommandResult {
        try Command.run(["ip", "netns", "exec", namespace] + LabHost.userPrefix(uid, gid) + arguments,
                        timeout: timeout, check: check, stdin: stdin)
    }

    @discardableResult
    public func sh(_ script: String, as uid: uid_t? = nil, timeout: Double = 30, check: Bool = true) throws -> CommandResult {
        try run(["sh", "-c", script], as: uid, timeout: timeout, check: check)
    }

    /// `ip ARGS` inside the host.
    @discardableResult
    public func ip(_ arguments: String...) throws -> CommandResult { try run(["ip"] + arguments) }

    /// `ip -j ARGS`, decoded.
    public func ipJSON(_ arguments: String...) throws -> [[String: Any]] {
        let r = try run(["ip", "-j"] + arguments)
        guard let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] else {
            throw HarnessError("`ip -j \(arguments.joined(separator: " "))` did not print a JSON array")
        }
        return obj
    }

    public func sysctl(_ key: String, _ value: String) throws {
        try run(["sysctl", "-q", "-w", "\(key)=\(value)"])
    }

    /// `ip addr add ADDR dev DEV` (IPv6 without DAD, so it is usable at once).
    public func addAddress(_ cidr: String, dev: String) throws {
        if cidr.contains(":") { try ip("addr", "add", cidr, "dev", dev, "nodad") } else { try ip("addr", "add", cidr, "dev", dev) }
    }

    /// `ip route add DEST via GW` (or `dev DEV`).
    public func route(_ destination: String, via gateway: String? = nil, dev: String? = nil) throws {
        var args = ["route", "add", destination]
        if let gateway { args += ["via", gateway] }
        if let dev { args += ["dev", dev] }
        try run(["ip"] + (destination.contains(":") || (gateway?.contains(":") ?? false) ? ["-6"] : []) + args)
    }

    /// IPv4 and IPv6 forwarding on.
    public func enableForwarding() throws {
        try sysctl("net.ipv4.ip_forward", "1")
        try sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// Makes this host a NAT router: source NAT with masquerade on `outInterface`.
    /// `randomFully` gives endpoint-dependent mapping (a new port per destination);
    /// plain masquerade keeps ports where it can (endpoint-independent in practice).
    public func natRouter(outInterface: String, randomFully: Bool = false) throws {
        try enableForwarding()
        let masq = randomFully ? "masquerade fully-random" : "masquerade"
        try loadNftables("""
        table inet relaylab_nat {
          chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            oifname "\(outInterface)" \(masq)
          }
        }
        """)
    }

    /// `nft -f -` inside the host.
    public func loadNftables(_ ruleset: String) throws {
        try run(["nft", "-f", "-"], stdin: ruleset)
    }

    /// Starts a long-running process inside the host, its output to a log file; the lab ends it.
    @discardableResult
    public func spawn(_ arguments: [String], label: String? = nil, as uid: uid_t? = nil, gid: gid_t? = nil,
                      environment: [String: String]? = nil) throws -> LabProcess {
        let label = label ?? URL(fileURLWithPath: arguments[0]).lastPathComponent
        let logURL = lab.logDirectory.appendingPathComponent("\(name)-\(label)-\(lab.processes.count).log")
        FileManager.default.createFile(atPath: logURL.path, contents: nil)
        var env: [String: String]? = nil
        if let environment { env = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let pid = try Spawn.start(["ip", "netns", "exec", namespace] + LabHost.userPrefix(uid, gid) + arguments,
                                  stdoutPath: logURL.path, stderrPath: logURL.path, environment: env)
        let lp = LabProcess(pid: pid, host: self, label: label, logURL: logURL)
        lab.processes.append(lp)
        return lp
    }
}

/// A process the lab started (its own child, so its PID cannot be reused before it is reaped);
/// it is ended by PID, never by name.
public final class LabProcess {
    public let pid: pid_t
    public let host: LabHost
    public let label: String
    public let logURL: URL
    private var exitStatus: Int32?
    private let lock = NSLock()

    init(pid: pid_t, host: LabHost, label: String, logURL: URL) {
        self.pid = pid
        self.host = host
        self.label = label
        self.logURL = logURL
    }

    /// Exit code (128+signal when killed), once it has ended.
    public var terminationStatus: Int32? {
        lock.lock(); defer { lock.unlock() }
        if exitStatus == nil { exitStatus = Spawn.reap(pid, block: false) }
        return exitStatus
    }
    public var isRunning: Bool { terminationStatus == nil }

    public func log(lastBytes: Int = 1 << 20) -> String {
        guard let data = try? Data(contentsOf: logURL) else { return "" }
        return String(decoding: data.suffix(lastBytes), as: UTF8.self)
    }

    var exitDescription: String {
        terminationStatus.map { "exited with status \($0)" } ?? "running"
    }

    /// Sends `signal` to this process only.
    public func signal(_ sig: Int32) { if isRunning { kill(pid, sig) } }

    /// TERM, wait up to `grace` seconds, then KILL; returns when it is gone (reaped).
    public func stop(grace: Double = 2) {
        guard isRunning else { return }
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if isRunning {
            kill(pid, SIGKILL)
            lock.lock(); exitStatus = Spawn.reap(pid, block: true); lock.unlock()
        }
    }

    /// Waits for the process to exit by itself.
    @discardableResult
    public func waitForExit(timeout: Double = 10) throws -> Int32 {
        try waitUntil("\(label) (pid \(pid)) to exit", timeout: timeout) { !isRunning }
        return terminationStatus ?? -1
    }
}

extension LabHost {
    /// A UDP service answering every datagram with the sender's address (or, `echo`, with the
    /// datagram itself), in one process. (socat's forking UDP-RECVFROM loses about 3 datagrams in
    /// 100 on its own — measured on one host with nothing in between — which made UDP checks flaky.)
    @discardableResult
    public func spawnUDPResponder(port: Int, echo: Bool = false, ipv6: Bool = false, label: String) throws -> LabProcess {
        try spawn(["python3", "-c", """
            import socket
            s = socket.socket(socket.AF_INET\(ipv6 ? "6" : ""), socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(('\(ipv6 ? "::" : "0.0.0.0")', \(port)))
            while True:
                data, peer = s.recvfrom(65535)
                s.sendto(\(echo ? "data" : "(peer[0] + '\\n').encode()"), peer)
            """], label: label)
    }
}

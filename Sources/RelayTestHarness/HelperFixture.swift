import Foundation

/// Starts the real relay-helper inside a lab host with a policy written for the test.
public struct HelperFixture {
    public let process: LabProcess
    public let socketPath: String
    public let policyPath: String

    /// `allowed` fills each of the three lists that are not given apart: what may be translated
    /// (`translate`), routed into devices (`routes`), carried by a device (`addresses`).
    public static func policy(clients: [UInt32] = [0], readers: [UInt32] = [], table: String = "relay",
                              allowed: [String] = ["192.168.0.0/16", "240.0.0.0/4", "10.0.0.0/8", "fc00::/7", "64:ff9b::/32"],
                              translate: [String]? = nil, routes: [String]? = nil, addresses: [String]? = nil,
                              maxElements: Int = 200_000, devicePrefix: String = "relay", extra: String = "") -> String {
        func list(_ l: [String]) -> String { "[" + l.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
        // `extra` may hold whole sections; the list keys go into theirs.
        return """
        [clients]
        uids = [\(clients.map(String.init).joined(separator: ", "))]
        read_uids = [\(readers.map(String.init).joined(separator: ", "))]
        [table]
        name = "\(table)"
        [nat]
        translate = \(list(translate ?? allowed))
        max_elements = \(maxElements)
        [routes]
        destinations = \(list(routes ?? allowed))
        [devices]
        addresses = \(list(addresses ?? allowed))
        prefix = "\(devicePrefix)"
        \(extra)
        """
    }

    /// Writes the policy into the lab's log directory and starts the helper; waits for its socket.
    public static func start(in host: LabHost, policy: String = HelperFixture.policy(), name: String = "helper") throws -> HelperFixture {
        let dir = host.lab.logDirectory
        let policyPath = dir.appendingPathComponent("\(host.name)-\(name).toml").path
        let socketPath = dir.appendingPathComponent("\(host.name)-\(name).sock").path
        try policy.write(toFile: policyPath, atomically: true, encoding: .utf8)
        let p = try host.spawn([try Binaries.path("relay-helper"), "--socket", socketPath, "--policy", policyPath, "--log-level", "debug"], label: name)
        try waitUntil("relay-helper socket \(socketPath)", timeout: 10) {
            if !p.isRunning { throw HarnessError("relay-helper exited: \(p.log())") }
            return FileManager.default.fileExists(atPath: socketPath)
        }
        // Let the socket directory be reachable for other uids in tests.
        chmod(dir.path, 0o755)
        return HelperFixture(process: p, socketPath: socketPath, policyPath: policyPath)
    }
}

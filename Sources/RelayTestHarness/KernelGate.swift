import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Decides whether kernel-tier tests run. Without root they are skipped, unless
/// `RELAY_REQUIRE_KERNEL_TESTS=1` (CI), in which case they run and fail with a clear reason.
public enum KernelGate {
    public static var isRoot: Bool { geteuid() == 0 }
    public static var required: Bool { ProcessInfo.processInfo.environment["RELAY_REQUIRE_KERNEL_TESTS"] == "1" }
    /// For `.enabled(if:)`: true when the test should run (and then possibly fail in `check()`).
    public static var shouldRun: Bool { isRoot || required }

    /// Throws when the kernel tier cannot run here.
    public static func check() throws {
        guard isRoot else {
            throw HarnessError("kernel tests need root (network namespaces, nftables); run `sudo make test` or unset RELAY_REQUIRE_KERNEL_TESTS to skip them")
        }
        try Lab.requireTools()
        let r = try Command.run(["ip", "netns", "list"], check: false)
        guard r.succeeded else { throw HarnessError("`ip netns` does not work here: \(r.stderr)") }
    }
}

/// Where the project's built binaries are: `RELAY_BIN_DIR` (set by the Makefile) or `.build/debug`.
public enum Binaries {
    public static var directory: URL {
        if let d = ProcessInfo.processInfo.environment["RELAY_BIN_DIR"], !d.isEmpty { return URL(fileURLWithPath: d) }
        return packageRoot.appendingPathComponent(".build/debug")
    }
    public static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }
    public static func path(_ name: String) throws -> String {
        let p = directory.appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: p) else {
            throw HarnessError("\(name) is not built at \(p): run `swift build` (or `make build`) first")
        }
        return p
    }
}

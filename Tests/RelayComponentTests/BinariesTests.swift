import Foundation
import Testing
import RelayCore
import RelayTestHarness

/// The shipped programs, run as real processes.
@Suite("component: the three programs")
struct BinariesTests {
    @Test("each program answers --help and --version", arguments: ["relay-helper", "relayd", "relayctl"])
    func helpAndVersion(_ name: String) throws {
        let path = try Binaries.path(name)
        let help = try Command.run([path, "--help"])
        #expect(help.stdout.contains("USAGE: \(name)"))
        let version = try Command.run([path, "--version"])
        #expect(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == RelayVersion.string)
    }

    @Test("an unknown option is an error that names it", arguments: ["relay-helper", "relayd", "relayctl"])
    func unknownOption(_ name: String) throws {
        let r = try Command.run([try Binaries.path(name), "--no-such-option"], check: false)
        #expect(r.status != 0)
        #expect(r.stderr.contains("--no-such-option"))
    }
}

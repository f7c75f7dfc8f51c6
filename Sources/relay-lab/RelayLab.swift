import ArgumentParser
import Foundation
import RelayTestHarness

/// Test-support tool around the lab harness (not installed).
@main
struct RelayLab: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay-lab",
        abstract: "Network-namespace lab used by Relay's tests, demo and benchmarks (not installed).",
        subcommands: [Hold.self, Clean.self, Demo.self, Bench.self, TunProbe.self, StunLoad.self, SIITFilter.self, HandshakeFlood.self, RelayLoad.self, RelayBlast.self]
    )

    struct Hold: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a lab with a host and a process, print its prefix, and wait (to test crash clean-up).")
        func run() throws {
            let lab = try Lab("hold")
            let h = try lab.host("h")
            _ = try h.spawn(["sleep", "600"], label: "sleeper")
            print(lab.prefix)
            fflush(stdout)
            Thread.sleep(forTimeInterval: 600)
            lab.teardown()
        }
    }

    struct Clean: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove namespaces left by crashed lab runs, and the logs of finished runs kept in $TMPDIR/relay-lab (only the harness's own, only dead runs).")
        func run() throws {
            Lab.removeStale()
            let n = Lab.removeStaleLogs()
            print("relay-lab clean: removed \(n) log director\(n == 1 ? "y" : "ies") of finished runs from \(Lab.logRoot.path)")
        }
    }
}

extension RelayLab {
    struct Demo: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the demo (see README).")
        @Flag(help: "Leave the namespaces and processes running (remove them with --down).") var keep = false
        @Flag(help: "Remove what a --keep demo left running.") var down = false
        func run() throws {
            if down {
                for ns in Lab.listNamespaces() where ns.hasPrefix(DemoScenario.keptPrefix) { Lab.removeNamespace(ns) }
                print("demo namespaces removed")
                return
            }
            try DemoScenario(keep: keep).run()
        }
    }
}

import ArgumentParser
import RelayCore

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print relayctl's version.")
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        if json { print("{\"version\":\"\(RelayVersion.string)\"}") } else { print("relayctl \(RelayVersion.string)") }
    }
}

import ArgumentParser
import RelayCore

@main
struct RelayHelperCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "relay-helper", version: RelayVersion.string)
}

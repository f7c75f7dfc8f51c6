import ArgumentParser
import RelayControlAPI

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Make relayd re-read its configuration (an invalid one is refused; the running one stays).")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let r = try connection.client.get(.reload, as: ReloadResponse.self)
            if connection.json { printJSON(r); return }
            print(r.changed ? "reloaded:\n" + r.changes.map { "  \($0)" }.joined(separator: "\n") : "reloaded: no changes")
            for w in r.warnings { print("warning: \(w.key): \(w.message)") }
        }
    }
}

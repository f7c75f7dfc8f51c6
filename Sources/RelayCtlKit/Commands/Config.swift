import ArgumentParser
import Foundation
import RelayControlAPI
import RelayCore

struct Config: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Work with relayd configuration files.", subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a configuration file with the same errors relayd gives (exit 5 when invalid).")
        @Argument(help: "The file.") var path: String
        @Flag(help: "Print JSON.") var json = false

        struct Output: Codable { var file: String; var valid: Bool; var issues: [ConfigIssue] }

        func run() throws {
            do {
                let (_, warnings) = try loadConfigFile(path)
                if json { printJSON(Output(file: path, valid: true, issues: warnings)); return }
                print("\(path): valid" + (warnings.isEmpty ? "" : " (\(warnings.count) warnings)"))
                for w in warnings { print("  warning: \(w.key): \(w.message)") }
            } catch let f as CtlFailure {
                if json {
                    printJSON(Output(file: path, valid: false, issues: [ConfigIssue(.error, "file", f.description)]))
                } else {
                    FileHandle.standardError.write(Data("relayctl: \(f.description)\n".utf8))
                }
                throw ExitCode(f.code)
            }
        }
    }
}

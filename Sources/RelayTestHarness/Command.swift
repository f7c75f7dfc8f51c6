import Foundation

/// What a finished command left behind.
public struct CommandResult: CustomStringConvertible {
    public let arguments: [String]
    public let status: Int32
    public let stdout: String
    public let stderr: String
    public var succeeded: Bool { status == 0 }
    public var description: String {
        "`\(arguments.joined(separator: " "))` exited \(status)\n--- stdout\n\(stdout)\n--- stderr\n\(stderr)"
    }
}

public struct CommandFailed: Error, CustomStringConvertible {
    public let result: CommandResult
    public var description: String { "command failed: \(result)" }
}

public struct HarnessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Runs programs by absolute path or PATH lookup, never through a shell unless asked.
public enum Command {
    /// Runs `arguments` to completion (bounded by `timeout` seconds through coreutils `timeout`).
    @discardableResult
    public static func run(_ arguments: [String], timeout: Double = 30, check: Bool = true,
                           stdin: String? = nil) throws -> CommandResult {
        let argv = ["timeout", "--kill-after=2", String(format: "%.1f", timeout)] + arguments
        let dir = FileManager.default.temporaryDirectory
        let tag = UUID().uuidString
        let outPath = dir.appendingPathComponent("rlab-cmd-\(tag).out").path
        let errPath = dir.appendingPathComponent("rlab-cmd-\(tag).err").path
        let inPath = dir.appendingPathComponent("rlab-cmd-\(tag).in").path
        defer { for p in [outPath, errPath, inPath] { unlink(p) } }
        FileManager.default.createFile(atPath: inPath, contents: Data((stdin ?? "").utf8))
        let pid = try Spawn.start(argv, stdinPath: inPath, stdoutPath: outPath, stderrPath: errPath)
        let status = Spawn.reap(pid, block: true) ?? -1
        let result = CommandResult(arguments: arguments, status: status,
                                   stdout: String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: outPath))) ?? Data(), as: UTF8.self),
                                   stderr: String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: errPath))) ?? Data(), as: UTF8.self))
        if check && !result.succeeded { throw CommandFailed(result: result) }
        return result
    }

    /// `sh -c script` for the few places where a pipeline reads better.
    @discardableResult
    public static func sh(_ script: String, timeout: Double = 30, check: Bool = true) throws -> CommandResult {
        try run(["sh", "-c", script], timeout: timeout, check: check)
    }
}

/// Waits for a condition with a deadline; throws naming what it waited for.
public func waitUntil(_ what: String, timeout: Double = 10, interval: Double = 0.05,
                      _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    var lastError: Error?
    while Date() < deadline {
        do { if try condition() { return } } catch { lastError = error }
        Thread.sleep(forTimeInterval: interval)
    }
    do { if try condition() { return } } catch { lastError = error }
    throw HarnessError("timed out after \(timeout)s waiting for: \(what)" + (lastError.map { " (last error: \($0))" } ?? ""))
}

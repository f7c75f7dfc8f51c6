import Foundation
import RelayFuzzTargets

// Built two ways (see `make fuzz`):
// - with -sanitize=fuzzer,address and -DRELAY_LIBFUZZER: libFuzzer's main calls
//   LLVMFuzzerTestOneInput with the target named by RELAY_FUZZ_TARGET;
// - normally: `relay-fuzz TARGET PATH...` replays files (or every file of directories) through the
//   target, to reproduce a crash under a debugger.

#if RELAY_LIBFUZZER
nonisolated(unsafe) let selected: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["RELAY_FUZZ_TARGET"] ?? ""
    guard let t = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("RELAY_FUZZ_TARGET must be one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
        exit(2)
    }
    return t
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func relayFuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    _ = selected.run(bytes)
    return 0
}
#else
@main
struct RelayFuzzReplay {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard let first = args.first, let target = FuzzTarget(rawValue: first), args.count >= 2 else {
            FileHandle.standardError.write(Data("usage: relay-fuzz TARGET PATH... (targets: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))\n".utf8))
            exit(64)
        }
        var files: [String] = []
        for p in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir) else {
                FileHandle.standardError.write(Data("relay-fuzz: no such file or directory: \(p)\n".utf8)); exit(66)
            }
            if isDir.boolValue {
                files += ((try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []).sorted().map { "\(p)/\($0)" }
            } else { files.append(p) }
        }
        var accepted = 0
        for f in files {
            guard let d = FileManager.default.contents(atPath: f) else { continue }
            if target.run(Array(d)) == .accepted { accepted += 1 }
        }
        print("\(target.rawValue): \(files.count) inputs replayed, \(accepted) accepted, no trap")
    }
}
#endif

import CRelayFuzzDriver
import Foundation
import RelayFuzzTargets

/// `relay-fuzz TARGET PATH...` replays files (or every file of directories) through a fuzz target.
/// Built for fuzzing (`make fuzz`: -sanitize=fuzzer,address, -DRELAY_LIBFUZZER for Swift and C),
/// `RELAY_FUZZ_TARGET=TARGET relay-fuzz [libFuzzer options] CORPUS...` runs libFuzzer on it.
@main
struct RelayFuzz {
    static func usage() -> Never {
        FileHandle.standardError.write(Data("usage: relay-fuzz TARGET PATH... (targets: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))\n".utf8))
        exit(64)
    }

    static func main() {
        #if RELAY_LIBFUZZER
        guard let t = FuzzTarget(rawValue: ProcessInfo.processInfo.environment["RELAY_FUZZ_TARGET"] ?? "") else { usage() }
        FuzzState.target = t
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(CRelayFuzz_run(&argc, &argv) { data, size in
            let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
            _ = FuzzState.target.run(bytes)
            return 0
        })
        #else
        replay(Array(CommandLine.arguments.dropFirst()))
        #endif
    }

    static func replay(_ args: [String]) {
        guard let first = args.first, let target = FuzzTarget(rawValue: first), args.count >= 2 else { usage() }
        var files: [String] = []
        for p in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir) else {
                FileHandle.standardError.write(Data("relay-fuzz: no such file or directory: \(p)\n".utf8)); exit(66)
            }
            if isDir.boolValue {
                files += ((try? FileManager.default.contentsOfDirectory(atPath: p)) ?? []).sorted().filter { !$0.hasPrefix(".") }.map { "\(p)/\($0)" }
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

/// The target libFuzzer's callback runs (a C callback cannot capture it).
enum FuzzState { nonisolated(unsafe) static var target = FuzzTarget.stun }

#if RELAY_LIBFUZZER
/// libFuzzer's own entry name too (its archive's main refers to it).
@_cdecl("LLVMFuzzerTestOneInput")
public func relayFuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    _ = FuzzState.target.run(bytes)
    return 0
}
#endif

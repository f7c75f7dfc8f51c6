import ArgumentParser
import Foundation
import RelayControlAPI
import RelayWire
#if canImport(Glibc)
import Glibc
#endif

/// Exit codes scripts can rely on (also in `relayctl --help`).
public enum RelayCtlExit {
    public static let failure: Int32 = 1
    public static let notRunning: Int32 = 3
    public static let permissionDenied: Int32 = 4
    public static let invalidConfig: Int32 = 5
    public static let helperUnreachable: Int32 = 6
}

/// A failure that prints its message and exits with its code.
struct CtlFailure: Error, CustomStringConvertible {
    var code: Int32
    var description: String
}

/// Blocking HTTP/1.1 client for relayd's control socket (one request per connection).
struct ControlClient {
    let socketPath: String

    func request(_ route: ControlRoute, query: String = "") throws -> Data {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw CtlFailure(code: RelayCtlExit.failure, description: "cannot create a socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw CtlFailure(code: RelayCtlExit.failure, description: "socket path too long: \(socketPath)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        if rc != 0 {
            let e = errno
            switch e {
            case ENOENT, ECONNREFUSED:
                throw CtlFailure(code: RelayCtlExit.notRunning, description: "relayd is not running (nothing listens on \(socketPath)): start it with `systemctl start relayd` (or run `relayd`), or pass --socket / set RELAYD_SOCKET")
            case EACCES, EPERM:
                throw CtlFailure(code: RelayCtlExit.permissionDenied, description: "permission denied on \(socketPath): add yourself to group relay (usermod -aG relay $USER), or use sudo")
            default:
                throw CtlFailure(code: RelayCtlExit.notRunning, description: "cannot connect to relayd at \(socketPath): \(String(cString: strerror(e)))")
            }
        }
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let req = Array("\(route.method) \(route.rawValue)\(query.isEmpty ? "" : "?" + query) HTTP/1.1\r\nHost: relayd\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".utf8)
        guard send(fd, req, req.count, Int32(MSG_NOSIGNAL)) == req.count else {
            throw CtlFailure(code: RelayCtlExit.notRunning, description: "relayd closed the connection")
        }
        var response = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw CtlFailure(code: RelayCtlExit.failure, description: "reading relayd's answer failed: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            response += buf[0..<n]
            if response.count > 64 << 20 { throw CtlFailure(code: RelayCtlExit.failure, description: "relayd's answer is over 64 MiB") }
        }
        guard let sep = response.firstRange(of: Array("\r\n\r\n".utf8)),
              let statusLine = String(decoding: response[..<sep.lowerBound], as: UTF8.self).split(separator: "\r\n").first,
              let code = Int(statusLine.split(separator: " ").dropFirst().first ?? "") else {
            throw CtlFailure(code: RelayCtlExit.failure, description: "relayd sent an answer that is not HTTP")
        }
        let body = Data(response[sep.upperBound...])
        if (200..<300).contains(code) { return body }
        let err = (try? ControlJSON.decoder().decode(ControlErrorBody.self, from: body))?.error
        let message = err?.message ?? "relayd answered HTTP \(code)"
        switch code {
        case 403: throw CtlFailure(code: RelayCtlExit.permissionDenied, description: message)
        case 422: throw CtlFailure(code: RelayCtlExit.invalidConfig, description: message)
        case 503: throw CtlFailure(code: RelayCtlExit.helperUnreachable, description: message)
        default: throw CtlFailure(code: RelayCtlExit.failure, description: message)
        }
    }

    func get<T: Decodable>(_ route: ControlRoute, query: String = "", as: T.Type) throws -> T {
        let data = try request(route, query: query)
        do { return try ControlJSON.decoder().decode(T.self, from: data) } catch {
            throw CtlFailure(code: RelayCtlExit.failure, description: "cannot read relayd's answer to \(route.rawValue) (version mismatch?): \(error)")
        }
    }
}

/// Options every command that talks to relayd shares.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "relayd's control socket (default: /run/relay/relayd.sock as root, else under $XDG_RUNTIME_DIR; or $RELAYD_SOCKET).")
    var socket: String = RelayPaths.defaultControlSocket
    @Flag(help: "Print JSON instead of a table.") var json = false
    var client: ControlClient { ControlClient(socketPath: socket) }
}

/// Runs a command body, turning failures into their message on stderr and their exit code.
func runCtl(_ body: () throws -> Void) throws {
    do { try body() } catch let f as CtlFailure {
        FileHandle.standardError.write(Data("relayctl: \(f.description)\n".utf8))
        throw ExitCode(f.code)
    }
}

func printJSON<T: Encodable>(_ v: T) {
    let data = (try? ControlJSON.encoder(pretty: true).encode(v)) ?? Data("{}".utf8)
    print(String(decoding: data, as: UTF8.self))
}

/// A plain text table: columns padded to their widest cell.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { i in all.map { $0.indices.contains(i) ? $0[i].count : 0 }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { i, c in i == row.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }.joined(separator: "\n")
}

func ago(_ d: Date?) -> String {
    guard let d else { return "never" }
    let s = Int(Date().timeIntervalSince(d))
    if s < 120 { return "\(s)s ago" }
    if s < 7200 { return "\(s / 60)m ago" }
    return "\(s / 3600)h ago"
}

import Crypto
import Foundation

/// The node identity: a static X25519 key pair. The private key lives in the state directory as
/// `private.key` (base64, mode 0600); the public key, base64, is the node id.
public struct NodeIdentity: @unchecked Sendable {
    public let privateKey: Curve25519.KeyAgreement.PrivateKey
    public var publicKeyBase64: String { privateKey.publicKey.rawRepresentation.base64EncodedString() }

    public init(privateKey: Curve25519.KeyAgreement.PrivateKey) { self.privateKey = privateKey }

    public static func generate() -> NodeIdentity { NodeIdentity(privateKey: Curve25519.KeyAgreement.PrivateKey()) }

    public var privateKeyBase64: String { privateKey.rawRepresentation.base64EncodedString() }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// Parses a base64 private key (what `relayctl keygen` prints).
    public static func parse(_ text: String) throws -> NodeIdentity {
        guard let raw = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)), raw.count == 32 else {
            throw Failure(description: "not an X25519 private key: expected 32 bytes in base64 (44 characters)")
        }
        return NodeIdentity(privateKey: try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: raw))
    }

    /// Loads `dir/private.key`, or creates the directory (0700) and a new key (0600) when absent.
    /// Refuses a key file that others can read.
    public static func loadOrCreate(directory dir: String) throws -> (NodeIdentity, created: Bool) {
        let fm = FileManager.default
        let path = dir + "/private.key"
        if fm.fileExists(atPath: path) {
            var st = stat()
            guard stat(path, &st) == 0 else { throw Failure(description: "cannot stat \(path): \(String(cString: strerror(errno)))") }
            if st.st_mode & 0o077 != 0 {
                throw Failure(description: "\(path) is readable by others (mode \(String(st.st_mode & 0o777, radix: 8))): run chmod 600 \(path)")
            }
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw Failure(description: "cannot read \(path)") }
            do { return (try parse(text), false) } catch let e as Failure { throw Failure(description: "\(path): \(e.description)") }
        }
        do {
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw Failure(description: "cannot create state directory \(dir): \(error.localizedDescription); pass --state-dir")
        }
        let id = generate()
        let old = umask(0o077)
        defer { umask(old) }
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure(description: "cannot create \(path): \(String(cString: strerror(errno)))") }
        let bytes = Array((id.privateKeyBase64 + "\n").utf8)
        let n = write(fd, bytes, bytes.count)
        fsync(fd)
        close(fd)
        guard n == bytes.count else { throw Failure(description: "cannot write \(path)") }
        return (id, true)
    }
}

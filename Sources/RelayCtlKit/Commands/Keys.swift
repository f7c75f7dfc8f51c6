import ArgumentParser
import Crypto
import Foundation
import RelayControlAPI

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate an X25519 key pair (private key to keep, public key = node id for peers' configs).")
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        let k = Curve25519.KeyAgreement.PrivateKey()
        let priv = k.rawRepresentation.base64EncodedString(), pub = k.publicKey.rawRepresentation.base64EncodedString()
        if json { print("{\"private_key\":\"\(priv)\",\"public_key\":\"\(pub)\"}") } else {
            print("private_key \(priv)\npublic_key  \(pub)")
        }
    }
}

struct Identity: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print this node's public key (its id), from relayd or from a state directory.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: ArgumentHelp("Read the key from this state directory instead of asking relayd.", valueName: "dir")) var stateDir: String?

    func run() throws {
        try runCtl {
            var pub: String
            if let dir = stateDir {
                guard let text = try? String(contentsOfFile: dir + "/private.key", encoding: .utf8),
                      let raw = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)), raw.count == 32,
                      let k = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: raw) else {
                    throw CtlFailure(code: RelayCtlExit.failure, description: "no readable key at \(dir)/private.key (relayd creates it on first start)")
                }
                pub = k.publicKey.rawRepresentation.base64EncodedString()
            } else {
                pub = try connection.client.get(.status, as: StatusResponse.self).publicKey
            }
            if connection.json { print("{\"public_key\":\"\(pub)\"}") } else { print(pub) }
        }
    }
}

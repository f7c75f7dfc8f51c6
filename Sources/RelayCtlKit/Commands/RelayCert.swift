import ArgumentParser
import Crypto
import Foundation
import RelayControlAPI
import RelayCore
import SwiftASN1
import X509

/// `relayctl relay cert --self-signed NAME`: a key and a self-signed certificate for the front door
/// (tests and small setups; a public relay wants a CA's certificate). Prints the SPKI pin nodes can
/// use instead of a CA bundle.
struct RelayCert: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cert",
        abstract: "Write a private key and a self-signed certificate for the front door, and print its SPKI pin.")
    @Option(name: .customLong("self-signed"), help: ArgumentHelp("The relay's DNS name or IP address (the certificate's subject and subjectAltName).", valueName: "name"))
    var name: String
    @Option(help: "Directory to write NAME.crt and NAME.key into (the key 0600; existing files are not replaced).") var out = "."
    @Option(help: "Days the certificate is valid (1...825).") var days = 365
    @Flag(help: "Print JSON.") var json = false

    struct Result: Codable { var certificate: String; var privateKey: String; var spkiSHA256: String; var notAfter: String }

    func run() throws {
        try runCtl {
            guard (1...825).contains(days) else { throw CtlFailure(code: RelayCtlExit.failure, description: "--days must be 1...825") }
            guard !name.isEmpty, name.count <= 253, name.allSatisfy({ $0.isLetter || $0.isNumber || ".-:".contains($0) }) else {
                throw CtlFailure(code: RelayCtlExit.failure, description: "--self-signed wants a DNS name or an IP address, not '\(name)'")
            }
            let r = try Self.make(name: name, days: days, directory: out)
            if json { printJSON(r); return }
            print("certificate \(r.certificate) (until \(r.notAfter))\nprivate key \(r.privateKey)\nSPKI pin    sha256/\(r.spkiSHA256)")
            print("front door: [front_door] certificate = \"\(r.certificate)\", private_key = \"\(r.privateKey)\"")
        }
    }

    static func make(name: String, days: Int, directory: String) throws -> Result {
        let key = P256.Signing.PrivateKey()
        let now = Date()
        let subject = try DistinguishedName { CommonName(name) }
        let san: GeneralName
        if let ip = IPAddress(name) { san = .ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip.bytes))) } else { san = .dnsName(name) }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            // keyCertSign: the certificate is also its own trust anchor (a CA bundle of one), and
            // BoringSSL checks it on the issuer of a chain.
            Critical(KeyUsage(digitalSignature: true, keyCertSign: true))
            try ExtendedKeyUsage([.serverAuth])
            SubjectAlternativeNames([san])
        }
        let cert = try Certificate(version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
                                   notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(Double(days) * 86400),
                                   issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
                                   issuerPrivateKey: .init(key))
        var ser = DER.Serializer()
        try ser.serialize(cert)
        let certPEM = PEMDocument(type: "CERTIFICATE", derBytes: ser.serializedBytes).pemString + "\n"
        let keyPEM = key.pemRepresentation + "\n"
        var spki = DER.Serializer()
        try spki.serialize(cert.publicKey)
        let pin = Data(SHA256.hash(data: spki.serializedBytes)).base64EncodedString()
        let base = (directory as NSString).appendingPathComponent(name)
        let certPath = base + ".crt", keyPath = base + ".key"
        for p in [certPath, keyPath] where FileManager.default.fileExists(atPath: p) {
            throw CtlFailure(code: RelayCtlExit.failure, description: "\(p) exists: remove it or choose another --out")
        }
        try writeFile(keyPEM, keyPath, mode: 0o600)
        try writeFile(certPEM, certPath, mode: 0o644)
        return Result(certificate: certPath, privateKey: keyPath, spkiSHA256: pin, notAfter: ISO8601DateFormatter().string(from: now.addingTimeInterval(Double(days) * 86400)))
    }

    static func writeFile(_ text: String, _ path: String, mode: mode_t) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw CtlFailure(code: RelayCtlExit.failure, description: "cannot create \(path): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let ok = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
        close(fd)
        guard ok else { throw CtlFailure(code: RelayCtlExit.failure, description: "cannot write \(path)") }
    }
}

import CRelayCrypto
import Crypto
import Foundation
import RelayTunnel
import Testing

/// The relay frame tag (docs/relay-protocol.md, "frame"): SipHash-2-4-128 against the reference
/// implementation's vectors, then what a frame's tag covers.
struct RelayTagTests {
    static func hex(_ s: String) -> [UInt8] {
        var out: [UInt8] = [], i = s.startIndex
        while i < s.endIndex { let j = s.index(i, offsetBy: 2); out.append(UInt8(s[i..<j], radix: 16)!); i = j }
        return out
    }
    static func sip(_ key: [UInt8], _ m: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 16)
        m.withUnsafeBufferPointer { p in CRelayCrypto_siphash128(key, p.baseAddress ?? UnsafePointer(key), m.count, &out) }
        return out
    }

    /// `vectors_sip128` of the reference implementation (github.com/veorq/SipHash, vectors.h): key
    /// 00..0f, message 00..(n-1), for a sample of lengths that crosses every tail length.
    @Test("SipHash-2-4-128 gives the reference implementation's vectors", arguments: [
        (0, "a3817f04ba25a8e66df67214c7550293"), (1, "da87c1d86b99af44347659119b22fc45"),
        (2, "8177228da4a45dc7fca38bdef60affe4"), (3, "9c70b60c5267a94e5f33b6b02985ed51"),
        (4, "f88164c12d9c8faf7d0f6e7c7bcd5579"), (5, "1368875980776f8854527a07690e9627"),
        (6, "14eeca338b208613485ea0308fd7a15e"), (7, "a1f1ebbed8dbc153c0b84aa61ff08239"),
        (8, "3b62a9ba6258f5610f83e264f31497b4"), (9, "264499060ad9baabc47f8b02bb6d71ed"),
        (63, "5150d1772f50834a503e069a973fbd7c"),
    ])
    func referenceVectors(length: Int, expected: String) {
        #expect(Self.sip(Array(0..<16), (0..<length).map { UInt8($0) }) == Self.hex(expected))
    }

    @Test func wycheproofEmptyMessage() {
        #expect(Self.sip(Self.hex("e34f15c7bd819930fe9d66e0c166e61c"), []) == Self.hex("b3d2df1f8506643dc8f803a3ceb67f85"))
    }

    static let key = SymmetricKey(data: (0..<32).map { UInt8($0 &* 7 &+ 3) })

    /// The tag is SipHash over the covered bytes then the length word, under the key's first 16 bytes.
    @Test func tagIsSipHashOfCoveredBytesAndLength() {
        let body = (0..<1400).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let key16 = Self.key.withUnsafeBytes { Array($0.prefix(16)) }
        for (kind, covered) in [(RelayFrameKind.forward, 64), (.deliver, 64), (.lookup, 16 + 1400), (.claim, 16 + 1400)] {
            let f = RelayMessage.frame(kind, session: 9, counter: 77, body: body[...], key: Self.key)
            let n = f.count - RelayMessage.tagSize
            var le = UInt64(n).littleEndian
            let lengthWord = withUnsafeBytes(of: &le) { Array($0) }
            #expect(Array(f.suffix(16)) == Self.sip(key16, Array(f.prefix(covered)) + lengthWord), "\(kind)")
            #expect(RelayMessage.verify(f[...], key: Self.key))
        }
    }

    @Test func changesTheTagRefuses() {
        let body = (0..<200).map { UInt8($0) }
        let f = RelayMessage.frame(.forward, session: 1, counter: 5, body: body[...], key: Self.key)
        // Every covered byte (header, counter, id, the datagram's first bytes) and the length.
        for i in 0..<64 { var g = f; g[i] ^= 1; #expect(!RelayMessage.verify(g[...], key: Self.key), "byte \(i)") }
        #expect(!RelayMessage.verify((f.prefix(100) + f.suffix(16))[...], key: Self.key))
        #expect(!RelayMessage.verify(f[...], key: SymmetricKey(size: .bits256)))
        // A control frame is covered whole.
        let c = RelayMessage.frame(.claim, session: 1, counter: 5, body: body[...], key: Self.key)
        for i in stride(from: 0, to: c.count - 16, by: 17) { var g = c; g[i] ^= 0x80; #expect(!RelayMessage.verify(g[...], key: Self.key), "claim byte \(i)") }
    }
}

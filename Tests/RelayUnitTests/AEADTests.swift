import CRelayCrypto
import Crypto
import Foundation
import Testing

/// The AEAD behind Noise's ChaChaPoly: our AVX-512 ChaCha20 with libcrypto's Poly1305 (on CPUs with
/// AVX-512) checked against libcrypto's ChaCha20-Poly1305. (The Noise test vectors and the
/// noiseprotocol interop tests check the same calls against other implementations.)
struct AEADTests {
    typealias Fn = (UnsafePointer<UInt8>, UInt64, UnsafePointer<UInt8>?, Int, UnsafePointer<UInt8>?, Int, UnsafeMutablePointer<UInt8>) -> Int

    static func run(_ f: Fn, key: [UInt8], counter: UInt64, ad: [UInt8], _ input: [UInt8], outCount: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: max(outCount, 1))
        let n = key.withUnsafeBufferPointer { k in
            ad.withUnsafeBufferPointer { a in
                input.withUnsafeBufferPointer { i in
                    out.withUnsafeMutableBufferPointer { o in
                        f(k.baseAddress!, counter, ad.isEmpty ? nil : a.baseAddress, ad.count, i.baseAddress, input.count, o.baseAddress!)
                    }
                }
            }
        }
        return n < 0 ? nil : Array(out.prefix(n))
    }
    static let seal: Fn = { CRelayCrypto_seal($0, $1, $2, $3, $4, $5, $6) }
    static let open: Fn = { CRelayCrypto_open($0, $1, $2, $3, $4!, $5, $6) }
    static let sealRef: Fn = { CRelayCrypto_seal_libcrypto($0, $1, $2, $3, $4, $5, $6) }
    static let openRef: Fn = { CRelayCrypto_open_libcrypto($0, $1, $2, $3, $4!, $5, $6) }

    @Test func implementationIsNamed() {
        let name = String(cString: CRelayCrypto_implementation())
        #expect(name == "avx512" || name == "libcrypto")
        // This project's CI machines have AVX-512: the fast path must be the one under test there.
        if (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.contains(" avx512bw ") == true,
           ProcessInfo.processInfo.environment["RELAY_AEAD_GENERIC"] == nil {
            #expect(name == "avx512")
        }
    }

    /// Byte for byte the same as libcrypto's ChaCha20-Poly1305 on every length up to 2100 (every
    /// tail of the 16- and 32-block batches, with and without associated data).
    @Test func sameAsLibcryptoOnEveryLength() throws {
        var rng = SystemRandomNumberGenerator()
        for len in 0...2100 {
            let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let ad = len % 3 == 0 ? [] : (0..<(len % 37)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let pt = (0..<len).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let counter = UInt64.random(in: 0...UInt64.max, using: &rng)
            let a = try #require(Self.run(Self.seal, key: key, counter: counter, ad: ad, pt, outCount: len + 16))
            let b = try #require(Self.run(Self.sealRef, key: key, counter: counter, ad: ad, pt, outCount: len + 16))
            // Compared as Bools: a failing #expect on two arrays would print them whole.
            let same = a == b, opens = Self.run(Self.open, key: key, counter: counter, ad: ad, b, outCount: len) == pt
            let refOpens = Self.run(Self.openRef, key: key, counter: counter, ad: ad, a, outCount: len) == pt
            #expect(same && opens && refOpens, "length \(len): same \(same), opens \(opens), libcrypto opens ours \(refOpens)")
            if !(same && opens && refOpens) { return }
        }
    }

    @Test func largeMessagesAndCounters() throws {
        for len in [16_320, 16_384, 65_535, 65_536 + 17] {
            for counter: UInt64 in [0, 1, 0xffff_ffff, 0x1_0000_0000, UInt64.max - 1] {
                let key = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ len) }
                let pt = (0..<len).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(counter % 251)) }
                let a = try #require(Self.run(Self.seal, key: key, counter: counter, ad: [1, 2, 3], pt, outCount: len + 16))
                let b = try #require(Self.run(Self.sealRef, key: key, counter: counter, ad: [1, 2, 3], pt, outCount: len + 16))
                let same = a == b
                #expect(same, "length \(len) counter \(counter)")
            }
        }
    }

    @Test func forgeriesAreRefusedAndLeaveNoPlaintext() throws {
        let key = [UInt8](repeating: 9, count: 32)
        let pt = [UInt8](repeating: 0x41, count: 1408)
        let sealed = try #require(Self.run(Self.seal, key: key, counter: 5, ad: [], pt, outCount: 1424))
        // Both implementations: the one in use here and libcrypto's (the fallback on other CPUs).
        for (name, open) in [("in use", Self.open), ("libcrypto", Self.openRef)] {
            for flip in [0, 700, 1407, 1408, 1423] {
                var bad = sealed
                bad[flip] ^= 1
                var out = [UInt8](repeating: 0, count: 1408)
                let n = key.withUnsafeBufferPointer { k in bad.withUnsafeBufferPointer { i in out.withUnsafeMutableBufferPointer { o in
                    open(k.baseAddress!, 5, nil, 0, i.baseAddress!, i.count, o.baseAddress!) } } }
                let clean = !out.contains(0x41)
                #expect(n == -1 && clean, "\(name): bit flipped at \(flip): result \(n), plaintext left in the output: \(!clean)")
            }
        }
        #expect(Self.run(Self.open, key: key, counter: 6, ad: [], sealed, outCount: 1408) == nil)  // wrong counter
        #expect(Self.run(Self.open, key: key, counter: 5, ad: [1], sealed, outCount: 1408) == nil)  // wrong ad
        #expect(Self.run(Self.open, key: key, counter: 5, ad: [], Array(sealed.prefix(15)), outCount: 1408) == nil)
    }

    @Test func inPlace() throws {
        let key = (0..<32).map { UInt8($0) }
        for len in [0, 1, 63, 64, 65, 1408, 3000] {
            let pt = (0..<len).map { UInt8(truncatingIfNeeded: $0 ^ 0x5a) }
            let ref = try #require(Self.run(Self.sealRef, key: key, counter: 77, ad: [], pt, outCount: len + 16))
            var buf = pt + [UInt8](repeating: 0, count: 16)
            let n = key.withUnsafeBufferPointer { k in buf.withUnsafeMutableBufferPointer { b in
                CRelayCrypto_seal(k.baseAddress!, 77, nil, 0, b.baseAddress!, len, b.baseAddress!) } }
            let same = buf == ref
            #expect(n == len + 16 && same, "seal in place, length \(len)")
            let m = key.withUnsafeBufferPointer { k in buf.withUnsafeMutableBufferPointer { b in
                CRelayCrypto_open(k.baseAddress!, 77, nil, 0, b.baseAddress!, len + 16, b.baseAddress!) } }
            let back = Array(buf.prefix(len)) == pt
            #expect(m == len && back, "open in place, length \(len)")
        }
    }

    // MARK: known answers and an implementation independent of libcrypto

    static func hex(_ s: String) -> [UInt8] {
        let c = Array(s.filter { !$0.isWhitespace })
        return stride(from: 0, to: c.count, by: 2).map { UInt8(String(c[$0...$0 + 1]), radix: 16)! }
    }

    /// RFC 8439 §2.8.2, the AEAD_CHACHA20_POLY1305 test vector, through each implementation that can
    /// run here: libcrypto's everywhere, the AVX-512 ChaCha20 where the CPU has it (CI's does).
    @Test("RFC 8439 §2.8.2 known answer: seal gives the RFC's ciphertext and tag, open gives the plaintext back, a flipped bit is refused", arguments: [0, 1])
    func rfc8439KnownAnswer(_ impl: Int32) throws {
        let key = Array(UInt8(0x80)...UInt8(0x9f))
        let iv = Self.hex("07000000 40414243 44454647")
        let ad = Self.hex("50515253 c0c1c2c3 c4c5c6c7")
        let pt = Array("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".utf8)
        let want = Self.hex("""
            d31a8d34 648e60db 7b86afbc 53ef7ec2 a4aded51 296e08fe a9e2b5a7 36ee62d6
            3dbea45e 8ca96712 82fafb69 da92728b 1a71de0a 9e060b29 05d6a5b6 7ecd3b36
            92ddbd7f 2d778b8c 9803aee3 28091b58 fab324e4 fad67594 5585808b 4831d7bc
            3ff4def0 8e4b7a9d e576d265 86cec64b 6116
            1ae10b59 4f09e26a 7e902ecb d0600691
            """)
        func call(_ f: (Int32, UnsafePointer<UInt8>, UnsafePointer<UInt8>, UnsafePointer<UInt8>, Int, UnsafePointer<UInt8>, Int, UnsafeMutablePointer<UInt8>) -> Int,
                  _ input: [UInt8], _ outCount: Int) -> (Int, [UInt8]) {
            var out = [UInt8](repeating: 0, count: outCount)
            let n = key.withUnsafeBufferPointer { k in iv.withUnsafeBufferPointer { v in ad.withUnsafeBufferPointer { a in
                input.withUnsafeBufferPointer { i in out.withUnsafeMutableBufferPointer { o in
                    f(impl, k.baseAddress!, v.baseAddress!, a.baseAddress!, a.count, i.baseAddress!, i.count, o.baseAddress!) } } } } }
            return (n, out)
        }
        let seal = { CRelayCrypto_seal_nonce96($0, $1, $2, $3, $4, $5, $6, $7) }
        let open = { CRelayCrypto_open_nonce96($0, $1, $2, $3, $4, $5, $6, $7) }
        let (n, sealed) = call(seal, pt, pt.count + 16)
        if n == -2 {
            #expect(impl == 1 && CRelayCrypto_implementation().pointee == UInt8(ascii: "l"), "the AVX-512 path is unavailable only where the fallback is in use")
            return
        }
        #expect(n == pt.count + 16 && sealed == want, "implementation \(impl): not the RFC's ciphertext and tag")
        let (m, opened) = call(open, want, pt.count)
        #expect(m == pt.count && opened == pt)
        var bad = want
        bad[bad.count - 1] ^= 0x80
        #expect(call(open, bad, pt.count).0 == -1)
    }

    /// The AEAD in use here (AVX-512 or libcrypto) against swift-crypto's ChaChaPoly (BoringSSL's),
    /// which shares no code with either: this comparison can fail on any CPU.
    @Test("byte for byte the same as swift-crypto's ChaChaPoly (BoringSSL) on lengths 0...1500 and 64 KB, and each opens the other's")
    func sameAsSwiftCrypto() throws {
        var rng = SystemRandomNumberGenerator()
        for len in Array(stride(from: 0, through: 1500, by: 7)) + [1408, 65_535] {
            let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let ad = len % 2 == 0 ? [] : (0..<(len % 29)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let pt = (0..<len).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let counter = UInt64.random(in: 0...UInt64.max, using: &rng)
            var iv = [UInt8](repeating: 0, count: 4)
            withUnsafeBytes(of: counter.littleEndian) { iv += $0 }
            let box = try ChaChaPoly.seal(pt, using: SymmetricKey(data: key), nonce: try ChaChaPoly.Nonce(data: iv), authenticating: ad)
            let theirs = Array(box.ciphertext) + Array(box.tag)
            let ours = try #require(Self.run(Self.seal, key: key, counter: counter, ad: ad, pt, outCount: len + 16))
            let same = ours == theirs
            let weOpen = Self.run(Self.open, key: key, counter: counter, ad: ad, theirs, outCount: len) == pt
            let theyOpen = (try? ChaChaPoly.open(try ChaChaPoly.SealedBox(combined: iv + ours), using: SymmetricKey(data: key), authenticating: ad)).map(Array.init) == pt
            #expect(same && weOpen && theyOpen, "length \(len) (\(String(cString: CRelayCrypto_implementation()))): same \(same), we open theirs \(weOpen), they open ours \(theyOpen)")
            if !(same && weOpen && theyOpen) { return }
        }
    }
}

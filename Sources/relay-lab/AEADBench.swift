import CRelayCrypto
import Foundation

/// The tunnel's AEAD per message: sealing and opening full-size (1408-byte) packets with the
/// implementation relayd uses on this CPU, against libcrypto's ChaCha20-Poly1305 (the anchor).
enum AEADBench {
    struct Figures { var sealNs: Double; var openNs: Double }

    /// Nanoseconds per message, median of `repeats` rounds of `count` messages each.
    static func run(size: Int = 1408, count: Int = 200_000, repeats: Int = 3) -> (relay: Figures, libcrypto: Figures) {
        let key = [UInt8](repeating: 0x42, count: 32)
        let plain = [UInt8]((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        var sealed = [UInt8](repeating: 0, count: size + 16), back = [UInt8](repeating: 0, count: size)
        typealias Fn = (UnsafePointer<UInt8>?, UInt64, UnsafePointer<UInt8>?, Int, UnsafePointer<UInt8>?, Int, UnsafeMutablePointer<UInt8>?) -> Int
        func time(_ seal: Fn, _ open: Fn) -> Figures {
            var s: [Double] = [], o: [Double] = []
            for _ in 0..<repeats {
                var t0 = DispatchTime.now().uptimeNanoseconds
                var ok = 0
                for i in 0..<count { ok &+= seal(key, UInt64(i), nil, 0, plain, size, &sealed) }
                s.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / Double(count))
                precondition(ok == count * (size + 16), "seal failed")
                _ = seal(key, 7, nil, 0, plain, size, &sealed)
                t0 = DispatchTime.now().uptimeNanoseconds
                ok = 0
                for _ in 0..<count { ok &+= open(key, 7, nil, 0, sealed, size + 16, &back) }
                o.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / Double(count))
                precondition(ok == count * size && back == plain, "open failed")
            }
            return Figures(sealNs: s.sorted()[repeats / 2], openNs: o.sorted()[repeats / 2])
        }
        let relay = time({ CRelayCrypto_seal($0, $1, $2, $3, $4, $5, $6) }, { CRelayCrypto_open($0, $1, $2, $3, $4, $5, $6) })
        let lib = time({ CRelayCrypto_seal_libcrypto($0, $1, $2, $3, $4, $5, $6) }, { CRelayCrypto_open_libcrypto($0, $1, $2, $3, $4, $5, $6) })
        return (relay, lib)
    }
}

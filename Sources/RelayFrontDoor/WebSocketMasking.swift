import NIOCore
import NIOWebSocket

/// RFC 6455 masking, a word at a time (swift-nio's `webSocketMask` goes byte by byte, with a
/// modulo per byte: 13% of the machine in a relayed TCP run over WebSocket).
enum WebSocketMasking {
    /// XORs `bytes` with the 4-byte key repeated, the key starting at byte `offset % 4`.
    static func apply(_ key: WebSocketMaskingKey, to bytes: UnsafeMutableRawBufferPointer, offset: Int = 0) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let k = [key[0], key[1], key[2], key[3]]
        var pattern: UInt64 = 0
        for i in 0..<8 { pattern |= UInt64(k[(i + offset) & 3]) << (8 * i) }
        let n = bytes.count, words = n / 8
        var i = 0
        while i < words {
            let p = base + i * 8
            p.storeBytes(of: p.loadUnaligned(as: UInt64.self) ^ pattern, as: UInt64.self)
            i += 1
        }
        var j = words * 8
        while j < n {
            base.storeBytes(of: base.load(fromByteOffset: j, as: UInt8.self) ^ k[(j + offset) & 3], toByteOffset: j, as: UInt8.self)
            j += 1
        }
    }

    /// The payload of a frame from a client, unmasked (the frame's own data, masked, otherwise).
    static func unmasked(_ frame: WebSocketFrame) -> ByteBuffer {
        var data = frame.data
        guard let key = frame.maskKey else { return data }
        data.withUnsafeMutableReadableBytes { apply(key, to: $0) }
        return data
    }
}

/// Masking keys from the kernel's CSPRNG, 4 KiB at a time (RFC 6455 §5.3: a fresh unpredictable key
/// per frame; swift-nio's `.random()` asked the kernel once per frame).
struct MaskingKeys {
    private var pool = [UInt8](repeating: 0, count: 4096)
    private var next = 4096

    mutating func take() -> WebSocketMaskingKey {
        if next + 4 > pool.count {
            var g = SystemRandomNumberGenerator()
            pool.withUnsafeMutableBytes { p in
                for i in stride(from: 0, to: p.count, by: 8) { p.storeBytes(of: g.next(), toByteOffset: i, as: UInt64.self) }
            }
            next = 0
        }
        defer { next += 4 }
        return WebSocketMaskingKey([pool[next], pool[next + 1], pool[next + 2], pool[next + 3]])!
    }
}

/// Client side: one masked binary frame (FIN set) around `payload`, header included, in one buffer
/// (RFC 6455 §5.2). What swift-nio's `WebSocketFrameEncoder` writes for the same frame, with the
/// masking done a word at a time; the bridge writes it below the encoder, straight to TLS.
enum MaskedBinaryFrame {
    static func encode(_ payload: ByteBuffer, key: WebSocketMaskingKey, allocator: ByteBufferAllocator) -> ByteBuffer {
        let n = payload.readableBytes
        var out = allocator.buffer(capacity: n + 14)
        out.writeInteger(UInt8(0x82))  // FIN, binary
        if n < 126 {
            out.writeInteger(UInt8(0x80 | n))
        } else if n <= 0xFFFF {
            out.writeInteger(UInt8(0x80 | 126)); out.writeInteger(UInt16(n))
        } else {
            out.writeInteger(UInt8(0x80 | 127)); out.writeInteger(UInt64(n))
        }
        out.writeBytes([key[0], key[1], key[2], key[3]])
        let start = out.writerIndex - out.readerIndex
        out.writeImmutableBuffer(payload)
        out.withUnsafeMutableReadableBytes { WebSocketMasking.apply(key, to: UnsafeMutableRawBufferPointer(rebasing: $0[start...])) }
        return out
    }
}

/// Sits right above TLS in the bridge's pipeline: the point from which pre-encoded frames are
/// written (below swift-nio's frame encoder, which still writes control frames).
final class RawFrameWriter: ChannelOutboundHandler, RemovableChannelHandler {
    static let name = "relay-raw-frame-writer"
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
}

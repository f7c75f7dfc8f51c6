import NIOCore
import NIOWebSocket

/// RFC 6455 masking, a word at a time (swift-nio's `webSocketMask` goes byte by byte, with a
/// modulo per byte: 13% of the machine in a relayed TCP run over WebSocket).
enum WebSocketMasking {
    /// XORs `bytes` with the 4-byte key repeated, the key starting at byte `offset % 4`.
    static func apply(_ key: WebSocketMaskingKey, to bytes: UnsafeMutableRawBufferPointer, offset: Int = 0) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var pattern: UInt64 = 0
        for i in 0..<8 { pattern |= UInt64(key[(i + offset) & 3]) << (8 * i) }
        let n = bytes.count, words = n / 8
        var i = 0
        while i < words {
            let p = base + i * 8
            p.storeBytes(of: p.loadUnaligned(as: UInt64.self) ^ pattern, as: UInt64.self)
            i += 1
        }
        var j = words * 8
        while j < n {
            base.storeBytes(of: base.load(fromByteOffset: j, as: UInt8.self) ^ key[(j + offset) & 3], toByteOffset: j, as: UInt8.self)
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

/// Several messages in one WebSocket binary message (docs/relay-protocol.md, "WebSocket"): the type
/// byte 0xD6, then for each message its length (u16 little-endian, at least 1) and its bytes. A
/// node's bridge sends what one read of its tunnel brought as bundles; the relay answers a client
/// with bundles once that client has sent one. One message per WebSocket message cost swift-nio
/// and TLS their per-message work for every 1.4 KB datagram.
public enum WebSocketBundle {
    public static let type: UInt8 = 0xD6
    /// What a bundle holds at most: one TLS record (16 KiB) with the frame's header.
    public static let maxBytes = 16 * 1024 - 16

    /// True when `message` is a bundle (a relay message's first byte is 0xD1-0xD5).
    @inline(__always) static func isBundle(_ message: ByteBuffer) -> Bool {
        message.readableBytes > 0 && message.getInteger(at: message.readerIndex, as: UInt8.self) == type
    }

    /// Each message of a bundle, in order; false (after the well-formed ones) when it is malformed.
    static func forEach(_ bundle: ByteBuffer, _ body: (ByteBuffer) -> Void) -> Bool {
        var b = bundle
        guard b.readInteger(as: UInt8.self) == type, b.readableBytes > 0 else { return false }
        while b.readableBytes > 0 {
            guard let n = b.readInteger(endianness: .little, as: UInt16.self), n > 0, let m = b.readSlice(length: Int(n)) else { return false }
            body(m)
        }
        return true
    }

    /// Appends one message to `bundle` (started with `start` when empty).
    @inline(__always) static func append(_ message: ByteBuffer, to bundle: inout ByteBuffer) {
        if bundle.readableBytes == 0 { bundle.writeInteger(type) }
        bundle.writeInteger(UInt16(message.readableBytes), endianness: .little)
        bundle.writeImmutableBuffer(message)
    }

    /// The bytes a message adds to a bundle.
    @inline(__always) static func cost(_ count: Int) -> Int { count + 2 }
}

import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing
@testable import RelayFrontDoor

/// The front door's word-at-a-time masking and the bridge's own binary frames, against swift-nio's
/// masking and swift-nio's frame decoder.
struct WebSocketMaskingTests {
    @Test func sameAsSwiftNIOsMasking() {
        let key = WebSocketMaskingKey([0x9a, 0x01, 0xfe, 0x37])!
        for n in 0..<41 {
            for offset in 0..<4 {
                let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 5) }
                var theirs = ByteBuffer(bytes: bytes)
                theirs.webSocketMask(key, indexOffset: offset)
                var ours = bytes
                ours.withUnsafeMutableBytes { WebSocketMasking.apply(key, to: $0, offset: offset) }
                #expect(ours == Array(theirs.readableBytesView), "length \(n), offset \(offset)")
            }
        }
    }

    @Test("a frame the bridge encodes is what swift-nio's decoder reads: masked, binary, FIN, the payload back", arguments: [0, 1, 125, 126, 1400, 65535, 65536, 70000])
    func framesDecode(length: Int) throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 17)))
        let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        var keys = MaskingKeys()
        let key = keys.take()
        let wire = MaskedBinaryFrame.encode(payload, key: key, allocator: channel.allocator)
        #expect(wire.readableBytes == length + (length < 126 ? 6 : length <= 0xFFFF ? 8 : 14))
        try channel.writeInbound(wire)
        let frame = try #require(try channel.readInbound(as: WebSocketFrame.self))
        #expect(frame.fin && frame.opcode == .binary && frame.maskKey == key)
        #expect(frame.unmaskedData == payload)
        #expect(WebSocketMasking.unmasked(frame) == payload)
        _ = try channel.finish()
    }

    @Test func keysChange() {
        var keys = MaskingKeys()
        let taken = (0..<3000).map { _ in keys.take() }   // crosses a refill
        #expect(Set(taken.map { "\($0[0]).\($0[1]).\($0[2]).\($0[3])" }).count > 2900)
    }
}

/// Builds one netlink request: the 16-byte header, a fixed family header, then attributes
/// (TLVs, 4-byte aligned, nestable). Pure byte work, so requests can be compared with golden bytes.
public struct NetlinkRequestBuilder: Sendable {
    public private(set) var bytes: [UInt8]

    public init(type: UInt16, flags: UInt16, seq: UInt32, pid: UInt32 = 0) {
        bytes = []
        bytes.reserveCapacity(128)
        appendU32(0)  // nlmsg_len, patched by `finish`
        appendU16(type)
        appendU16(flags)
        appendU32(seq)
        appendU32(pid)
    }

    @inline(__always) mutating func appendU16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    @inline(__always) mutating func appendU32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }

    /// Appends raw family-header bytes (ifinfomsg, rtmsg, ifaddrmsg), padded to 4 bytes.
    public mutating func header(_ raw: [UInt8]) {
        bytes += raw
        pad()
    }

    mutating func pad() { while bytes.count % 4 != 0 { bytes.append(0) } }

    public mutating func attr(_ type: UInt16, _ payload: [UInt8]) {
        appendU16(UInt16(4 + payload.count))
        appendU16(type)
        bytes += payload
        pad()
    }
    public mutating func attrU32(_ type: UInt16, _ v: UInt32) { attr(type, withUnsafeBytes(of: v.littleEndian) { Array($0) }) }
    public mutating func attrU8(_ type: UInt16, _ v: UInt8) { attr(type, [v]) }
    /// A NUL-terminated string attribute (IFLA_IFNAME and friends).
    public mutating func attrString(_ type: UInt16, _ s: String) { attr(type, Array(s.utf8) + [0]) }

    /// Starts a nested attribute; returns its offset for `endNest`.
    public mutating func beginNest(_ type: UInt16) -> Int {
        let at = bytes.count
        appendU16(0)
        appendU16(type | 0x8000)  // NLA_F_NESTED
        return at
    }
    public mutating func endNest(_ at: Int) {
        let len = UInt16(bytes.count - at)
        bytes[at] = UInt8(len & 0xff)
        bytes[at + 1] = UInt8(len >> 8)
    }

    /// The finished message with its length filled in.
    public func finish() -> [UInt8] {
        var out = bytes
        let len = UInt32(out.count)
        withUnsafeBytes(of: len.littleEndian) { for i in 0..<4 { out[i] = $0[i] } }
        return out
    }
}

/// Walks the attributes of a received message (after its family header); refuses lengths past the end.
public struct NetlinkAttributes: Sequence {
    let bytes: ArraySlice<UInt8>
    public init(_ bytes: ArraySlice<UInt8>) { self.bytes = bytes }

    public struct Attribute {
        public var type: UInt16
        public var payload: ArraySlice<UInt8>
        public var u32: UInt32? {
            guard payload.count >= 4 else { return nil }
            let b = payload.startIndex
            return UInt32(payload[b]) | UInt32(payload[b + 1]) << 8 | UInt32(payload[b + 2]) << 16 | UInt32(payload[b + 3]) << 24
        }
        public var string: String { String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self) }
    }

    public func makeIterator() -> AnyIterator<Attribute> {
        var off = bytes.startIndex
        let end = bytes.endIndex
        return AnyIterator {
            guard off + 4 <= end else { return nil }
            let len = Int(bytes[off]) | Int(bytes[off + 1]) << 8
            let type = (UInt16(bytes[off + 2]) | UInt16(bytes[off + 3]) << 8) & 0x3fff
            guard len >= 4, off + len <= end else { return nil }
            let a = Attribute(type: type, payload: bytes[(off + 4)..<(off + len)])
            off += NL.align(len)
            return a
        }
    }
}

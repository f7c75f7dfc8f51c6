/// An address on an interface: the address itself with its prefix length (host bits allowed,
/// e.g. `240.1.1.1/24`), as `ip addr` shows it.
public struct InterfaceAddress: Hashable, Sendable, CustomStringConvertible, Codable, Comparable {
    public let address: IPAddress
    public let length: Int
    public var family: IPFamily { address.family }
    public var prefix: IPPrefix { IPPrefix(network: address, length: length) }

    public init(_ address: IPAddress, length: Int) {
        precondition(length >= 0 && length <= (address.family == .ipv4 ? 32 : 128))
        self.address = address; self.length = length
    }

    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let addr = IPAddress(String(parts[0])), !parts[1].isEmpty, parts[1].utf8.count <= 3,
              parts[1].allSatisfy(\.isNumber), let len = Int(parts[1])
        else { throw PrefixError.notAPrefix(text) }
        let max = addr.family == .ipv4 ? 32 : 128
        guard (0...max).contains(len) else { throw PrefixError.lengthOutOfRange(text, max: max) }
        address = addr; length = len
    }

    public var description: String { "\(address)/\(length)" }
    public static func < (l: Self, r: Self) -> Bool { (l.address, l.length) < (r.address, r.length) }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(parsing: s) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "\(error)"))
        }
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// A route the helper owns: destination prefix to a device (in the policy's table, tagged with the
/// policy's protocol number; neither is chosen by the client).
public struct RouteSpec: Codable, Hashable, Sendable, CustomStringConvertible, Comparable {
    public var destination: IPPrefix
    public var device: String
    public var metric: UInt32?
    public init(_ destination: IPPrefix, device: String, metric: UInt32? = nil) {
        self.destination = destination; self.device = device; self.metric = metric
    }
    public var description: String { "\(destination) dev \(device)" + (metric.map { " metric \($0)" } ?? "") }
    public static func < (l: Self, r: Self) -> Bool { (l.destination, l.device) < (r.destination, r.device) }
}

/// A TUN device the helper creates (or re-attaches to) and hands to its client.
public struct DeviceSpec: Codable, Hashable, Sendable {
    public var name: String
    public var mtu: Int
    public var addresses: [InterfaceAddress]
    /// Open with IFF_VNET_HDR and TSO (TUNSETOFFLOAD): reads may then be TCP segments of up to 64 KB
    /// behind a virtio_net_hdr, and writes carry one too.
    public var offload: Bool
    public init(name: String, mtu: Int = 1408, addresses: [InterfaceAddress] = [], offload: Bool = false) {
        self.name = name; self.mtu = mtu; self.addresses = addresses; self.offload = offload
    }
    enum CodingKeys: String, CodingKey { case name, mtu, addresses, offload }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        mtu = try c.decode(Int.self, forKey: .mtu)
        addresses = try c.decode([InterfaceAddress].self, forKey: .addresses)
        offload = try c.decodeIfPresent(Bool.self, forKey: .offload) ?? false
    }
}

/// A route as the kernel reports it.
public struct ObservedRoute: Codable, Equatable, Sendable {
    public var destination: IPPrefix
    public var device: String
    public var table: UInt32
    public var protocolNumber: UInt8
    public var metric: UInt32?
    public init(destination: IPPrefix, device: String, table: UInt32, protocolNumber: UInt8, metric: UInt32?) {
        self.destination = destination; self.device = device; self.table = table; self.protocolNumber = protocolNumber; self.metric = metric
    }
}

/// A device as the kernel reports it.
public struct ObservedDevice: Codable, Equatable, Sendable {
    public var name: String
    public var index: Int32
    public var kind: String?
    public var mtu: Int
    public var up: Bool
    public var addresses: [InterfaceAddress]
    public var rxPackets: UInt64
    public var txPackets: UInt64
    public init(name: String, index: Int32, kind: String?, mtu: Int, up: Bool, addresses: [InterfaceAddress], rxPackets: UInt64, txPackets: UInt64) {
        self.name = name; self.index = index; self.kind = kind; self.mtu = mtu; self.up = up
        self.addresses = addresses; self.rxPackets = rxPackets; self.txPackets = txPackets
    }
}

/// Everything the helper owns, read back from the kernel.
public struct ObservedState: Codable, Equatable, Sendable {
    public var table: ObservedTable
    public var routes: [ObservedRoute]
    public var devices: [ObservedDevice]
    public var integration: [ObservedJump]
    public init(table: ObservedTable, routes: [ObservedRoute], devices: [ObservedDevice], integration: [ObservedJump] = []) {
        self.table = table; self.routes = routes; self.devices = devices; self.integration = integration
    }
}

/// The helper's jump from an operator's chain into its own (opt-in integration mode).
public struct ObservedJump: Codable, Equatable, Sendable {
    /// "inet filter forward"
    public var from: String
    public var target: String
    public var packets: UInt64
    public var bytes: UInt64
    public init(from: String, target: String, packets: UInt64, bytes: UInt64) {
        self.from = from; self.target = target; self.packets = packets; self.bytes = bytes
    }
}

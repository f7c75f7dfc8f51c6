import RelayCore
import RelayNftables
#if canImport(Glibc)
import Glibc
#endif

/// The helper's policy: who may ask, what it owns, and — one narrow list per kind of kernel object —
/// what may appear in requests. Fails closed: an empty client list serves nobody, an empty list of a
/// kind refuses every object of that kind, and the kinds coming work needs (an exit's default route,
/// masquerade, service filter rules) are refused until the policy grants them.
///
/// Prefix lists are checked against what the kernel will derive, not only what was asked: a device
/// address `240.1.1.1/1` covers `128.0.0.0/1` (the kernel would add a broadcast route for
/// 255.255.255.255), so it must lie inside `devices.addresses` as a whole.
public struct HelperPolicy: Equatable, Sendable {
    // [clients]
    public var clientUIDs: [UInt32] = [0]
    public var clientGIDs: [UInt32] = []
    public var readerUIDs: [UInt32] = []
    public var readerGIDs: [UInt32] = []
    /// Names, resolved again for every connection (a user created after the helper started counts).
    public var clientUserNames: [String] = []
    public var clientGroupNames: [String] = []
    public var readerUserNames: [String] = []
    public var readerGroupNames: [String] = []

    // [table]
    public var table = TableSpec()

    // [nat]
    /// What may be translated: both sides of every prefix or address map (the site's LANs and its own
    /// virtual prefixes).
    public var translate: [IPPrefix] = []
    public var maxElements = 200_000

    // [routes]
    /// What may be routed into the helper's devices (other sites' virtual prefixes). The NAT's
    /// `remote` set (destinations whose sources get SNAT'ed) must lie inside it too.
    public var routeDestinations: [IPPrefix] = []
    public var routeTable: UInt32 = 254
    public var routeProtocol: UInt8 = 0xc4
    public var maxRoutes = 1024

    // [devices]
    /// What a device's address may cover, prefix length included.
    public var deviceAddresses: [IPPrefix] = []
    public var devicePrefix = "relay" { didSet { table.devicePrefix = devicePrefix } }
    public var maxDevices = 4
    public var maxDeviceAddresses = 8

    // Kinds designed for coming work; each is off until the policy grants it.
    /// [exit] default_route: a default route (0.0.0.0/0, ::/0) through a helper device, for a node
    /// that sends its traffic out through an exit. The exit's own underlay address stays outside it.
    public var exitDefaultRoute = false
    /// [masquerade] interfaces: named interfaces towards which traffic from the helper's devices may
    /// be masqueraded (an exit node's uplink).
    public var masqueradeInterfaces: [String] = []
    /// [filter] max_rules: rules (allow lists, `ct count`, `limit rate`) the helper may keep in its own
    /// filter chains for exposed services; 0 refuses every filter rule.
    public var maxFilterRules = 0

    // [limits]
    public var maxRequestBytes = 32 << 20
    /// Connections at once from writers and from readers (separate pools: readers cannot take a
    /// writer's place), and from any one uid.
    public var maxWriterConnections = 16
    public var maxReaderConnections = 16
    public var maxConnectionsPerUID = 8
    /// A connection with no request for this long is closed; a started frame must be complete
    /// within `frameSeconds`.
    public var idleSeconds = 60
    public var frameSeconds = 10

    // [integration]
    /// Opt-in: operator chains that get one counted jump into `integrationChain` (same table).
    public var integrationPoints: [IntegrationPoint] = []
    public var integrationChain = "relay-accept"

    /// Things worth knowing that do not make the policy invalid (e.g. a user name that does not exist).
    public var warnings: [String] = []

    public var integrations: [Integration] {
        integrationPoints.map { Integration(point: $0, ownChain: integrationChain, devicePrefix: devicePrefix) }
    }

    public init() {}

    public enum Permission: String, Sendable { case none, read, write }

    /// A client's permission from the kernel's credentials: its uid, primary gid and supplementary
    /// groups (SO_PEERGROUPS). Names in the policy are resolved now, through `names`.
    public func permission(uid: UInt32, gid: UInt32, groups: [UInt32] = [], names: NameResolver = .system) -> Permission {
        let allGroups = Set([gid] + groups)
        func matches(_ uids: [UInt32], _ gids: [UInt32], _ userNames: [String], _ groupNames: [String]) -> Bool {
            if uids.contains(uid) || gids.contains(where: allGroups.contains) { return true }
            if userNames.contains(where: { names.uid($0) == uid }) { return true }
            return groupNames.contains { names.gid($0).map(allGroups.contains) ?? false }
        }
        if matches(clientUIDs, clientGIDs, clientUserNames, clientGroupNames) { return .write }
        if matches(readerUIDs, readerGIDs, readerUserNames, readerGroupNames) { return .read }
        return .none
    }
}

/// Turns user and group names into ids (the system's databases; a test injects its own).
public struct NameResolver: Sendable {
    public var uid: @Sendable (String) -> UInt32?
    public var gid: @Sendable (String) -> UInt32?
    public init(uid: @escaping @Sendable (String) -> UInt32?, gid: @escaping @Sendable (String) -> UInt32?) { self.uid = uid; self.gid = gid }

    /// getpwnam_r / getgrnam_r (re-entrant: connections are authenticated on several threads).
    public static let system = NameResolver(
        uid: { name in
            var pw = passwd(), out: UnsafeMutablePointer<passwd>?
            var buf = [CChar](repeating: 0, count: 4096)
            guard getpwnam_r(name, &pw, &buf, buf.count, &out) == 0, out != nil else { return nil }
            return pw.pw_uid
        },
        gid: { name in
            var gr = group(), out: UnsafeMutablePointer<group>?
            var buf = [CChar](repeating: 0, count: 16384)
            guard getgrnam_r(name, &gr, &buf, buf.count, &out) == 0, out != nil else { return nil }
            return gr.gr_gid
        })
}

public struct PolicyError: Error, CustomStringConvertible, Equatable {
    public var file: String
    public var problems: [String]
    public var description: String { "policy \(file) is invalid:\n" + problems.map { "  - \($0)" }.joined(separator: "\n") }
}

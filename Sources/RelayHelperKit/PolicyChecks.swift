import RelayCore
import RelayNftables

/// Re-validation of every request against the policy, one list per kind of kernel object. Each
/// check looks at what the kernel will make of the request (a prefix with its length, not an
/// address alone). Empty results mean acceptable.
extension HelperPolicy {
    /// True when all of `p` (every address the kernel may derive from it) lies inside one of `list`.
    static func covers(_ list: [IPPrefix], _ p: IPPrefix) -> Bool {
        list.contains { $0.family == p.family && $0.length <= p.length && $0.contains(p.address) }
    }

    /// True for a device name the helper may create and own: <prefix><[a-z0-9_-]...>, at most 15.
    public func ownsDevice(_ name: String) -> Bool {
        name.hasPrefix(devicePrefix) && name.count > devicePrefix.count && name.utf8.count <= 15
            && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }

    /// Routes: destinations inside `routes.destinations` (a default route only with `[exit]
    /// default_route`), devices the helper owns, a cap. Shadowing other owners' routes is checked
    /// against the kernel's table when the routes are applied (`KernelOwner`).
    public func check(routes: [RouteSpec]) -> [String] {
        var out: [String] = []
        if routes.count > maxRoutes { out.append("\(routes.count) routes exceed the policy's routes.max_routes = \(maxRoutes)") }
        var seen = Set<String>()
        for (i, r) in routes.enumerated() {
            if r.destination.length == 0 {
                if !exitDefaultRoute {
                    out.append("routes[\(i)] \(r.destination) is a default route: only a node that uses an exit may install one, and the policy does not grant it ([exit] default_route = true)")
                }
            } else if !HelperPolicy.covers(routeDestinations, r.destination) {
                out.append("routes[\(i)] \(r.destination) is outside the policy's routes.destinations (what may be routed into Relay's devices: \(HelperPolicy.list(routeDestinations)))")
            }
            if !ownsDevice(r.device) { out.append("routes[\(i)] device '\(r.device.prefix(32))' is not one of the helper's devices (names start with '\(devicePrefix)')") }
            if !seen.insert("\(r.destination) \(r.metric ?? 0)").inserted { out.append("routes[\(i)] \(r.destination) is listed twice") }
            if out.count > 20 { out.append("..."); break }
        }
        return out
    }

    /// A TUN device: its name, MTU, and addresses whose whole prefix (address with its length: the
    /// kernel derives local and broadcast routes from it) lies inside `devices.addresses`.
    public func check(device d: DeviceSpec) -> [String] {
        var out: [String] = []
        if !ownsDevice(d.name) {
            out.append("device name '\(d.name.prefix(32))' must be '\(devicePrefix)' followed by [a-z0-9_-], at most 15 characters (devices.prefix)")
        }
        let minMTU = d.addresses.contains { $0.family == .ipv6 } ? 1280 : 576
        if !(minMTU...65535).contains(d.mtu) { out.append("mtu \(d.mtu) must be \(minMTU)...65535\(minMTU == 1280 ? " (IPv6 needs at least 1280)" : "")") }
        if d.addresses.count > maxDeviceAddresses { out.append("\(d.addresses.count) addresses exceed devices.max_addresses = \(maxDeviceAddresses)") }
        for (i, a) in d.addresses.prefix(64).enumerated() where !HelperPolicy.covers(deviceAddresses, a.prefix) {
            if HelperPolicy.covers(deviceAddresses, IPPrefix(network: a.address, length: a.family == .ipv4 ? 32 : 128)) {
                out.append("addresses[\(i)] \(a) covers \(a.prefix), which reaches outside the policy's devices.addresses (\(HelperPolicy.list(deviceAddresses))): the kernel derives routes from the prefix length; use a longer one")
            } else {
                out.append("addresses[\(i)] \(a) is outside the policy's devices.addresses (\(HelperPolicy.list(deviceAddresses)))")
            }
        }
        if Set(d.addresses).count != d.addresses.count { out.append("an address is listed twice") }
        return out
    }

    /// A NAT state: both sides of every map inside `nat.translate`; the remote set (destinations
    /// whose sources are translated) inside `routes.destinations`.
    public func check(_ state: NATState) -> [String] {
        var out = state.problems()
        if state.elementCount > maxElements {
            out.append("\(state.elementCount) entries exceed the policy's nat.max_elements = \(maxElements)")
        }
        var reported = 0
        func refuse(_ what: String, _ key: String, _ list: [IPPrefix]) {
            reported += 1
            if reported <= 10 { out.append("\(what) is outside the policy's \(key) (\(HelperPolicy.list(list)))") }
        }
        for (name, maps) in [("dnat", state.dnat), ("snat", state.snat)] {
            for (i, m) in maps.enumerated() {
                if !HelperPolicy.covers(translate, m.match) { refuse("\(name)[\(i)] \(m.match)", "nat.translate", translate) }
                if !HelperPolicy.covers(translate, m.translate) { refuse("\(name)[\(i)] \(m.translate)", "nat.translate", translate) }
            }
        }
        for (name, maps) in [("dnatExact", state.dnatExact), ("snatExact", state.snatExact)] {
            for (i, m) in maps.enumerated() {
                if !HelperPolicy.covers(translate, IPPrefix(host: m.match)) { refuse("\(name)[\(i)] \(m.match)", "nat.translate", translate) }
                if !HelperPolicy.covers(translate, IPPrefix(host: m.translate)) { refuse("\(name)[\(i)] \(m.translate)", "nat.translate", translate) }
            }
        }
        for (i, r) in state.remote.enumerated() where !HelperPolicy.covers(routeDestinations, r) {
            refuse("remote[\(i)] \(r)", "routes.destinations", routeDestinations)
        }
        if reported > 10 { out.append("... and \(reported - 10) more outside the policy") }
        return out
    }

    /// Another owner's route that a new route to `destination` would take traffic from: one at the
    /// same or a shorter prefix that contains it (a default route excepted: every route is more
    /// specific than that). Relay must never pull part of a LAN's connected route into its device.
    public static func shadowed(by destination: IPPrefix, among foreign: [IPPrefix]) -> IPPrefix? {
        foreign.first { $0.length > 0 && $0.family == destination.family && $0.length <= destination.length && $0.contains(destination.address) }
    }

    static func list(_ l: [IPPrefix]) -> String { l.isEmpty ? "empty: nothing of this kind is allowed" : l.map(\.description).joined(separator: ", ") }
}

extension IPPrefix {
    /// The /32 or /128 of one address.
    init(host a: IPAddress) { self.init(network: a, length: a.family == .ipv4 ? 32 : 128) }
}

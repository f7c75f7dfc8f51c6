import CRelayShim
import RelayCore
import RelayNetlink
import RelayNftables
import RelayWire
#if canImport(Glibc)
import Glibc
#endif

/// Everything the helper owns in the kernel, and nothing else: its nftables table, the routes in
/// the policy's table tagged with the policy's protocol number, TUN devices named with the policy's
/// prefix, and (opt-in) one jump per integration point. Every method re-reads the kernel first.
public final class KernelOwner {
    public let policy: HelperPolicy

    public init(policy: HelperPolicy) { self.policy = policy }

    func table() throws -> NftablesTable { try NftablesTable(spec: policy.table) }

    // MARK: observe

    public func observe() throws -> ObservedState {
        let t = try table()
        let rt = try Rtnetlink()
        let links = try rt.links()
        let names = Dictionary(links.map { ($0.index, $0.name) }, uniquingKeysWith: { a, _ in a })
        let routes = try ownRoutes(rt).map {
            ObservedRoute(destination: $0.destination, device: $0.oif.flatMap { names[$0] } ?? "?", table: $0.table,
                          protocolNumber: $0.protocolNumber, metric: $0.metric)
        }
        let addrs = try rt.addresses()
        let devices = links.filter(isOwnDevice).map { l in
            ObservedDevice(name: l.name, index: l.index, kind: l.kind, mtu: l.mtu, up: l.isUp,
                           addresses: addrs.filter { $0.index == l.index }.map(\.address).sorted(), rxPackets: l.rxPackets, txPackets: l.txPackets)
        }
        let jumps = try policy.integrations.compactMap { try t.observeIntegration($0) }
        return ObservedState(table: try t.observe(), routes: routes, devices: devices, integration: jumps)
    }

    func isOwnDevice(_ l: LinkInfo) -> Bool { policy.ownsDevice(l.name) && l.kind == "tun" }

    func ownRoutes(_ rt: Rtnetlink) throws -> [RouteInfo] {
        try rt.routes().filter { $0.protocolNumber == policy.routeProtocol && $0.table == policy.routeTable }
    }

    // MARK: NAT

    public func applyNAT(_ nat: NATState) throws -> ApplyReport {
        let t = try table()
        var report = try t.apply(TablePlan(nat, spec: policy.table))
        for i in policy.integrations where try t.ensureIntegration(i) {
            report.changed = true
            report.rewrittenChains.append("\(i.point) -> \(i.ownChain)")
        }
        return report
    }

    /// The current kernel NAT state plus `add` minus `remove`; the result is checked as a whole.
    public func updatedNAT(add: NATState, remove: NATState) throws -> NATState {
        let (current, bad) = try table().readNATState()
        guard bad.isEmpty else {
            throw HelperFailure("nat.undecodable", "the table holds entries the helper did not write (\(bad.prefix(3).joined(separator: "; "))): apply a full state with apply_nat")
        }
        var s = current
        func minus<T: Hashable>(_ a: [T], _ b: [T], _ what: String) throws -> [T] {
            let rm = Set(b)
            let missing = rm.subtracting(a)
            if let m = missing.first { throw HelperFailure("nat.not_found", "cannot remove \(what) \(m): it is not in the table") }
            return a.filter { !rm.contains($0) }
        }
        s.dnat = try minus(s.dnat, remove.dnat, "dnat entry") + add.dnat
        s.snat = try minus(s.snat, remove.snat, "snat entry") + add.snat
        s.dnatExact = try minus(s.dnatExact, remove.dnatExact, "dnatExact entry") + add.dnatExact
        s.snatExact = try minus(s.snatExact, remove.snatExact, "snatExact entry") + add.snatExact
        s.remote = try minus(s.remote, remove.remote, "remote prefix") + add.remote
        return s
    }

    // MARK: routes

    func deviceIndex(_ rt: Rtnetlink, _ name: String, links: [LinkInfo]) throws -> Int32 {
        guard let l = links.first(where: { $0.name == name }), isOwnDevice(l) else {
            throw HelperFailure("route.no_device", "device \(name) does not exist or is not a TUN device the helper created: open it with open_device first")
        }
        return l.index
    }

    /// `replace`: make these routes exist. Refuses to overwrite a route another owner has at the
    /// same destination, table and metric (the kernel's REPLACE would take it over), and to add one
    /// inside another owner's route (it would pull part of, say, a LAN's connected /24 into the
    /// device). Nothing is changed when any route is refused.
    public func replaceRoutes(_ routes: [RouteSpec]) throws -> Int {
        let rt = try Rtnetlink()
        let links = try rt.links()
        let all = try rt.routes().filter { $0.table == policy.routeTable }
        let foreign = all.filter { $0.protocolNumber != policy.routeProtocol }
        var todo: [(RouteSpec, Int32)] = []
        for r in routes {
            let oif = try deviceIndex(rt, r.device, links: links)
            let same = all.filter { $0.destination == r.destination && ($0.metric ?? 0) == (r.metric ?? defaultMetric(r.destination)) }
            if let f = same.first(where: { $0.protocolNumber != policy.routeProtocol }) {
                throw HelperFailure("route.not_owned", "a route to \(r.destination) in table \(policy.routeTable) already exists with protocol \(f.protocolNumber) (not the helper's \(policy.routeProtocol)): remove it, or give the helper another routes.table")
            }
            if let f = HelperPolicy.shadowed(by: r.destination, among: foreign.map(\.destination)),
               let info = foreign.first(where: { $0.destination == f }) {
                let dev = info.oif.flatMap { i in links.first { $0.index == i }?.name } ?? "?"
                throw HelperFailure("route.shadows", "a route to \(r.destination) would take traffic from \(f) dev \(dev) (protocol \(info.protocolNumber), not the helper's) in table \(policy.routeTable): Relay's routes may not cover part of another owner's route; choose virtual prefixes outside \(f)")
            }
            if same.contains(where: { $0.oif == oif }) { continue }
            todo.append((r, oif))
        }
        for (r, oif) in todo {
            try rt.routeReplace(r.destination, oif: oif, table: policy.routeTable, protocolNumber: policy.routeProtocol, metric: r.metric)
        }
        return todo.count
    }

    /// The kernel's default metric when none is given (IPv6 device routes get 1024).
    func defaultMetric(_ p: IPPrefix) -> UInt32 { p.family == .ipv6 ? 1024 : 0 }

    /// Deletes the helper's routes to these destinations (only routes carrying its protocol).
    public func deleteRoutes(_ routes: [RouteSpec]) throws -> Int {
        let rt = try Rtnetlink()
        let own = try ownRoutes(rt)
        var changed = 0
        for r in routes {
            for o in own where o.destination == r.destination && (r.metric == nil || o.metric == r.metric) {
                try rt.routeDelete(o.destination, oif: o.oif, table: policy.routeTable, protocolNumber: policy.routeProtocol, metric: o.metric)
                changed += 1
            }
        }
        return changed
    }

    /// Declarative: exactly these routes (own routes not listed are deleted).
    public func applyRoutes(_ routes: [RouteSpec]) throws -> Int {
        let rt = try Rtnetlink()
        let links = try rt.links()
        let names = Dictionary(links.map { ($0.index, $0.name) }, uniquingKeysWith: { a, _ in a })
        var changed = 0
        for o in try ownRoutes(rt) {
            let wanted = routes.contains {
                $0.destination == o.destination && o.oif.flatMap({ names[$0] }) == $0.device && ($0.metric ?? defaultMetric($0.destination)) == (o.metric ?? 0)
            }
            if !wanted {
                try rt.routeDelete(o.destination, oif: o.oif, table: policy.routeTable, protocolNumber: policy.routeProtocol, metric: o.metric)
                changed += 1
            }
        }
        return changed + (try replaceRoutes(routes))
    }

    // MARK: devices

    /// Creates (or adopts) the TUN device, sets MTU, addresses (without derived prefix routes) and
    /// up; returns it and its fd. The device is persistent (it outlives relayd's restarts), so one
    /// a crash left behind is adopted and reconfigured as a whole, or removed and created anew when
    /// it cannot be adopted (another type or queue mode). A device this call cannot configure
    /// completely is removed: never left half-configured.
    public func openDevice(_ d: DeviceSpec) throws -> (ObservedDevice, Int32, changed: Bool) {
        let rt = try Rtnetlink()
        var links = try rt.links()
        if let l = links.first(where: { $0.name == d.name }), l.kind != "tun" {
            throw HelperFailure("device.not_owned", "a \(l.kind ?? "non-TUN") device named \(d.name) exists: the helper only opens TUN devices it created")
        }
        var existed = links.contains { $0.name == d.name }
        if !existed && links.filter(isOwnDevice).count >= policy.maxDevices {
            throw HelperFailure("policy.refused", "the helper already has \(policy.maxDevices) devices (devices.max_devices)")
        }
        var out = [CChar](repeating: 0, count: 16)
        var fd = CRelayShim_tun_open(d.name, 1, d.offload ? 1 : 0, &out)
        if fd == -EINVAL && existed, let l = links.first(where: { $0.name == d.name }), !l.hasCarrier {
            // A leftover of another shape (a TAP device, multiqueue): nobody uses it; replace it.
            try rt.linkDelete(index: l.index)
            existed = false
            fd = CRelayShim_tun_open(d.name, 1, d.offload ? 1 : 0, &out)
        }
        guard fd >= 0 else {
            let e = -fd
            if e == EBUSY { throw HelperFailure("device.busy", "TUN device \(d.name) is attached to another process: close it there first") }
            throw HelperFailure("device.open_failed", "cannot open TUN device \(d.name): \(String(cString: strerror(e))) (errno \(e))")
        }
        do {
            // Segmentation offload: without it a vnet fd still carries virtio headers, only
            // unsegmented. Off is set explicitly: a persistent device keeps its features.
            _ = CRelayShim_tun_set_tso(fd, d.offload ? 1 : 0)
            links = try rt.links()
            guard let l = links.first(where: { $0.name == d.name }) else { throw HelperFailure("device.open_failed", "TUN device \(d.name) vanished after opening") }
            var changed = !existed
            // No IPv6 link-local address (and so no fe80::/64 route); one already there goes below.
            // A kernel without IPv6 has nothing to turn off.
            do { try rt.linkNoAddrGen(index: l.index) } catch let e as NetlinkError where e.errno == EAFNOSUPPORT {}
            if l.mtu != d.mtu || !l.isUp { try rt.linkSet(index: l.index, mtu: d.mtu, up: true); changed = true }
            let have = try rt.addresses().filter { $0.index == l.index }
            for a in have {
                // Unwanted, or added by someone else with its prefix route: remove (and re-add below).
                if !d.addresses.contains(a.address) || a.flags & RTNL.IFA_F_NOPREFIXROUTE == 0 {
                    try rt.addressDelete(a.address, index: l.index); changed = true
                }
            }
            let kept = Set(have.filter { d.addresses.contains($0.address) && $0.flags & RTNL.IFA_F_NOPREFIXROUTE != 0 }.map(\.address))
            for a in d.addresses where !kept.contains(a) { try rt.addressReplace(a, index: l.index); changed = true }
            let now = try rt.links().first { $0.index == l.index } ?? l
            let addrs = try rt.addresses().filter { $0.index == l.index }.map(\.address).sorted()
            return (ObservedDevice(name: now.name, index: now.index, kind: now.kind, mtu: now.mtu, up: now.isUp, addresses: addrs,
                                   rxPackets: now.rxPackets, txPackets: now.txPackets), fd, changed)
        } catch {
            close(fd)
            // Half-configured: remove it (its routes go with it); the next request creates it anew.
            if let l = try? rt.links().first(where: { $0.name == d.name }), isOwnDevice(l), !l.hasCarrier {
                try? rt.linkDelete(index: l.index)
            }
            throw error
        }
    }

    /// Deletes one of the helper's TUN devices (its routes go with it). False when absent.
    public func deleteDevice(_ name: String) throws -> Bool {
        let rt = try Rtnetlink()
        guard let l = try rt.links().first(where: { $0.name == name }) else { return false }
        guard isOwnDevice(l) else { throw HelperFailure("device.not_owned", "device \(name) is not a TUN device the helper owns") }
        try rt.linkDelete(index: l.index)
        return true
    }

    // MARK: cleanup

    /// Removes everything the helper owns, and nothing else. Returns what went.
    public func cleanup() throws -> [String] {
        var removed: [String] = []
        let t = try table()
        for i in policy.integrations where try t.removeIntegration(i) { removed.append("jump in \(i.point) and chain \(i.ownChain)") }
        if try t.delete() { removed.append("table inet \(policy.table.name)") }
        let rt = try Rtnetlink()
        for o in try ownRoutes(rt) {
            do {
                try rt.routeDelete(o.destination, oif: o.oif, table: policy.routeTable, protocolNumber: policy.routeProtocol, metric: o.metric)
                removed.append("route \(o.destination)")
            } catch let e as NetlinkError where e.errno == ESRCH {}
        }
        for l in try rt.links() where isOwnDevice(l) {
            try rt.linkDelete(index: l.index)
            removed.append("device \(l.name)")
        }
        return removed
    }
}

/// A refusal or failure with a wire code, raised inside the helper.
public struct HelperFailure: Error, CustomStringConvertible {
    public var code: String
    public var message: String
    public init(_ code: String, _ message: String) { self.code = code; self.message = message }
    public var description: String { "\(code): \(message)" }
}



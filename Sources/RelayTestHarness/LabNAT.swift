/// NAT routers that behave as each RFC 4787 kind, built with nftables (../shared/REFERENCES.md, "NAT
/// behaviour of Linux routers"). The same rulesets are classified by `turnutils_natdiscovery` and by
/// relayd's RFC 5780 discovery in the reflection tests, and used by the hole-punching matrix.
///
/// Every router drops unsolicited UDP to itself on its WAN side, as home routers' firewalls do.
/// Without that, Linux confirms a conntrack entry for a peer's early probe that reached the router
/// itself, and the host's own mapping towards that peer then clashes with it and gets another port
/// (the mapping stops being endpoint-independent for exactly the peer one is punching towards).
public enum LabNAT: String, CaseIterable, Sendable, CustomStringConvertible {
    /// Routed, no translation, no filtering.
    case none
    /// Endpoint-independent mapping and filtering ("full cone", 1:1 for UDP).
    case fullCone = "full-cone"
    /// Endpoint-independent mapping, address-dependent filtering.
    case restrictedCone = "restricted-cone"
    /// Endpoint-independent mapping, address-and-port-dependent filtering (plain masquerade).
    case masquerade
    /// Endpoint-dependent mapping (a fresh port per destination), address-and-port-dependent filtering.
    case fullyRandom = "fully-random"

    public var description: String { rawValue }

    /// RFC 4787 words for the router.
    public var mappingIndependent: Bool { self != .fullyRandom }
    public var filtering: String {
        switch self {
        case .none, .fullCone: return "endpoint-independent"
        case .restrictedCone: return "address-dependent"
        case .masquerade, .fullyRandom: return "address-and-port-dependent"
        }
    }

    /// The router's nftables for one inside host `host` behind `lan` (WAN interfaces `wan*`);
    /// `hairpin` also lets inside hosts reach the host through the router's WAN address (full cone).
    public func ruleset(host: String, lan: String = "lan0", hairpin: Bool = false) -> String? {
        let guardInput = """
            chain input_ { type filter hook input priority 0; policy accept;
                iifname "wan*" meta l4proto udp ct state new drop
            }
        """
        switch self {
        case .none: return nil
        case .masquerade, .fullyRandom:
            return """
            table ip labnat {
            \(guardInput)
                chain post { type nat hook postrouting priority 100; policy accept;
                    oifname "wan*" masquerade\(self == .fullyRandom ? " fully-random" : "")
                }
            }
            """
        case .fullCone, .restrictedCone:
            let from = self == .restrictedCone ? "udp dport . ip saddr @contacted " : ""
            return """
            table ip labnat {
                set contacted { type inet_service . ipv4_addr; flags dynamic, timeout; timeout 120s; }
            \(guardInput)
                chain forward_ { type filter hook forward priority 0; policy accept;
                    iifname "\(lan)" meta l4proto udp update @contacted { udp sport . ip daddr }
                }
                chain pre { type nat hook prerouting priority -100; policy accept;
                    iifname "wan*" \(from)meta l4proto udp dnat ip to \(host)
                    \(hairpin ? "iifname \"\(lan)\" fib daddr type local meta l4proto udp dnat ip to \(host)" : "")
                }
                chain post { type nat hook postrouting priority 100; policy accept;
                    oifname "wan*" masquerade
                    \(hairpin ? "ip saddr \(host) oifname \"\(lan)\" masquerade" : "")
                }
            }
            """
        }
    }

    /// Whether two nodes behind these routers can go direct with simultaneous probes and
    /// peer-reflexive learning (REFERENCES.md: every pair with endpoint-independent mapping on both
    /// sides; endpoint-dependent against endpoint-independent or address-dependent filtering;
    /// never endpoint-dependent against port-dependent filtering or against itself).
    public static func expectDirect(_ a: LabNAT, _ b: LabNAT) -> Bool {
        if a.mappingIndependent && b.mappingIndependent { return true }
        if !a.mappingIndependent && !b.mappingIndependent { return false }
        let other = a.mappingIndependent ? a : b
        return other.filtering != "address-and-port-dependent"
    }
}

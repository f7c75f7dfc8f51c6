/// A device's callsign at a relay: 3 to 32 characters of A-Z, 0-9 and "-", compared without case
/// (kept in upper case), not one of the reserved names. A relay's directory, not an identity:
/// authorization elsewhere uses keys.
public enum Callsign {
    public static let reserved: Set<String> = ["ADMIN", "ADMINISTRATOR", "RELAY", "RELAYD", "STATUS", "ROOT", "SYSTEM", "API", "DEVICES",
                                               "WWW", "HOST", "LOCALHOST", "SUPPORT", "SECURITY", "ABUSE", "POSTMASTER", "HOSTMASTER", "NOC"]

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case length(Int), character(Character), hyphenAtEnd, reserved(String)
        public var description: String {
            switch self {
            case .length(let n): return "a callsign has 3 to 32 characters, not \(n)"
            case .character(let c): return "a callsign uses only A-Z, 0-9 and '-', not '\(c)'"
            case .hyphenAtEnd: return "a callsign does not begin or end with '-'"
            case .reserved(let s): return "\(s) is reserved"
            }
        }
    }

    /// The callsign in its canonical (upper-case) form, or why it is not one.
    public static func normalize(_ text: String) -> Result<String, Problem> {
        let s = text.uppercased()
        guard (3...32).contains(s.count) else { return .failure(.length(s.count)) }
        if let bad = s.first(where: { !(("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "-") || !$0.isASCII }) { return .failure(.character(bad)) }
        guard s.first != "-" && s.last != "-" else { return .failure(.hyphenAtEnd) }
        guard !reserved.contains(s) else { return .failure(.reserved(s)) }
        return .success(s)
    }
}

import Foundation

/// Default locations: system-wide as root, per-user (XDG) otherwise. relayd and relayctl agree on them.
public enum RelayPaths {
    static var isRoot: Bool { getuid() == 0 }
    static var env: [String: String] { ProcessInfo.processInfo.environment }

    public static var defaultConfig: String { "/etc/relay/relayd.toml" }

    public static var defaultStateDirectory: String {
        if isRoot { return "/var/lib/relay" }
        if let x = env["XDG_STATE_HOME"], !x.isEmpty { return x + "/relay" }
        return (env["HOME"] ?? "/tmp") + "/.local/state/relay"
    }

    public static var defaultControlSocket: String {
        if let s = env["RELAYD_SOCKET"], !s.isEmpty { return s }
        if isRoot { return "/run/relay/relayd.sock" }
        if let x = env["XDG_RUNTIME_DIR"], !x.isEmpty { return x + "/relay/relayd.sock" }
        return "/tmp/relay-\(getuid())/relayd.sock"
    }

    public static var defaultHelperSocket: String { "/run/relay/helper.sock" }
}

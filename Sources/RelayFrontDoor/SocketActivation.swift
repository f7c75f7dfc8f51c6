#if canImport(Glibc)
import Glibc
#endif

/// systemd socket activation (sd_listen_fds(3)): when LISTEN_PID is this process and LISTEN_FDS
/// is at least 1, the first passed descriptor (3) is a listening socket for the front door. The
/// variables are cleared so that children do not take them.
public enum SocketActivation {
    /// True when systemd passed this process a socket (before `listeningSocket` takes it).
    public static var passed: Bool {
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }), let pid = Int32(pidText), pid == getpid() else { return false }
        return (getenv("LISTEN_FDS").map { Int(String(cString: $0)) ?? 0 } ?? 0) >= 1
    }

    static func listeningSocket() -> Int32? {
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }), let pid = Int32(pidText), pid == getpid(),
              let nText = getenv("LISTEN_FDS").map({ String(cString: $0) }), let n = Int(nText), n >= 1 else { return nil }
        unsetenv("LISTEN_PID"); unsetenv("LISTEN_FDS"); unsetenv("LISTEN_FDNAMES")
        let fd: Int32 = 3
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }
}

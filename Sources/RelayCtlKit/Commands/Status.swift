import ArgumentParser
import Foundation
import RelayControlAPI

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show relayd's node id, uptime, configuration and helper connection.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runCtl {
            let s = try connection.client.get(.status, as: StatusResponse.self)
            if connection.json { printJSON(s); return }
            var lines = [
                "node      \(s.nodeName)",
                "id        \(s.publicKey)",
                "version   \(s.version), up \(Int(s.uptimeSeconds))s",
                "config    \(s.config.path ?? "embedded default (no file)"), loaded \(ago(s.config.loadedAt))",
            ]
            if let e = s.config.lastReloadError { lines.append("          last reload REFUSED \(ago(s.config.lastReloadAttempt)): \(e.split(separator: "\n").first ?? "")") }
            for w in s.config.warnings { lines.append("          warning: \(w.key): \(w.message)") }
            lines.append("helper    \(s.helper.connected ? "connected" : "NOT connected") (\(s.helper.socket))" + (s.helper.lastAppliedAt.map { ", applied \(ago($0))" } ?? ""))
            if let e = s.helper.lastError { lines.append("          last error: \(e)") }
            if let d = s.helper.device { lines.append("device    \(d)") }
            lines.append("sites     \(s.sites)   peers \(s.peers)")
            if let t = s.tunnel {
                lines.append("tunnel    UDP \(s.tunnelPort.map(String.init) ?? "-"); handshakes \(t.handshakesCompleted) completed / \(t.handshakesSent) sent")
                if let p = s.packetPath {
                    let threads = "\(p.threads) packet thread\(p.threads == 1 ? "" : "s")" + (p.threadsSetting == "auto" ? " (auto, \(p.cpus) CPUs)" : "")
                    lines.append("          \(threads), offloads \(p.offload ? "on" : "off"), busy_poll \(p.busyPollMicroseconds > 0 ? "\(p.busyPollMicroseconds) µs" : (p.adaptivePoll ? "adaptive" : "off")), ChaCha20-Poly1305 \(p.aead)")
                }
                lines.append("          dropped: \(t.malformed) malformed, \(t.authFailed) unauthenticated, \(t.unknownIndex) unknown index, \(t.unknownPeer) unknown peer, \(t.replayedInitiation) replayed handshakes, \(t.badMAC) handshakes not for us, \(t.handshakesDropped) handshakes over the queue or rate, \(t.cookiesSent) cookies sent under load, \(t.spoofedSource) spoofed sources, \(t.notExported) to addresses this site does not export, \(t.noRoute) without a route, \(t.queueOverflow) queue overflow")
            }
            print(lines.joined(separator: "\n"))
        }
    }
}

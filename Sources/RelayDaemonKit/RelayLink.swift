import Crypto
import Foundation
import RelayCore
import RelayTunnel

/// This node's link to one relay, as a state machine (driven by `PeerTable` under the tunnel's
/// lock): register when wanted (Noise IK against the relay's pinned key; the DH runs in the loop,
/// unlocked), heartbeat, notice the relay is gone, register again with exponential backoff and
/// jitter, leave when no longer wanted. While registered it frames what the node sends through the
/// relay and checks what comes back. Which links are wanted (the home relay, relays a peer is
/// reached through, relays searched for a missing peer) is `PeerTable`'s decision.
final class RelayLink {
    /// The relay's UDP address (configured).
    let udpEndpoint: Endpoint
    /// Where its messages go now: `udpEndpoint`, or the local stand-in of the WebSocket transport.
    private(set) var endpoint: Endpoint
    let publicKey: [UInt8]
    let mac1Key: SymmetricKey
    let token: [UInt8]
    /// The relay's front door (`wss://...`), for when UDP to it is blocked.
    let webSocket: RelayServerConfig?

    enum Transport: Equatable { case udp, webSocketOpening, webSocket }
    private(set) var transport = Transport.udp
    /// Registrations over UDP that got no answer in a row (two, with a front door: WebSocket).
    private(set) var udpSilences = 0
    /// Over the WebSocket: a register sent over UDP now and then; its answer brings the link back.
    var probe: (initiator: Noise.Initiator, index: UInt32, sentAt: Double)?
    var nextProbe: Double = 0
    static let probeInterval: Double = 30

    enum Phase: Equatable { case idle, registering, registered }
    private(set) var phase = Phase.idle
    /// A registration asked of the loop (`.register`) and not made yet.
    var working = false
    var nextAttempt: Double = 0
    private(set) var failures = 0
    var lastError: String?
    var pending: (initiator: Noise.Initiator, index: UInt32, sentAt: Double)?

    // Registered:
    /// Our id at the relay (node-to-relay frames carry it; other nodes send to it).
    private(set) var id: UInt32 = 0
    /// Our index (relay-to-node frames carry it).
    private(set) var localIndex: UInt32 = 0
    private(set) var sendKey: SymmetricKey?
    private var sendCounter: UInt64 = 0
    private(set) var receiveKey: SymmetricKey?
    private var window = ReplayWindow()
    private(set) var heartbeat: Double = 2
    private var lastPing: Double = 0
    private(set) var lastHeard: Double = 0
    private(set) var registeredAt: Double?
    private(set) var observed: Endpoint?
    /// Lookups in flight or answered recently: key -> when asked.
    var lookups: [[UInt8]: Double] = [:]
    /// The relay's answer to our callsign claim (since we registered), and when we asked.
    var claim: (RelayClaimResult, String)?
    var claimAskedAt: Double = -100
    /// Peers this relay said are not here (since we registered).
    var absent: Set<[UInt8]> = []
    /// Left for lack of use after a search found nothing: not searched again before this time.
    var standbyUntil: Double = 0

    init(endpoint: Endpoint, publicKey: [UInt8], token: String?, webSocket: RelayServerConfig? = nil) {
        self.udpEndpoint = endpoint; self.endpoint = endpoint; self.publicKey = publicKey
        mac1Key = HandshakeMAC.key(receiver: publicKey)
        self.token = Array((token ?? "").utf8)
        self.webSocket = webSocket?.webSocket == nil ? nil : webSocket
    }

    /// Messages from `e` are this relay's (over UDP, or from the WebSocket's stand-in).
    func isAt(_ e: Endpoint) -> Bool { e == endpoint || e == udpEndpoint }

    /// UDP to the relay went unanswered twice and it has a front door: time for the WebSocket.
    var wantsWebSocket: Bool { transport == .udp && webSocket != nil && udpSilences >= 2 }

    func openingWebSocket() { transport = .webSocketOpening }

    /// The WebSocket transport is up at `local`: register over it at once.
    func webSocketUp(local: Endpoint, now: Double) {
        transport = .webSocket
        endpoint = local
        _ = leave()
        nextProbe = now + RelayLink.probeInterval
        lastError = nil
    }

    /// The WebSocket transport is gone: back to UDP (and to the WebSocket after two silences).
    func webSocketDown(_ reason: String, now: Double) {
        transport = .udp
        endpoint = udpEndpoint
        udpSilences = 0
        probe = nil
        lastError = reason
        backOff(now: now)
    }

    /// The probe over UDP was answered: UDP works again; the link continues on it.
    func backOnUDP() {
        transport = .udp
        endpoint = udpEndpoint
        udpSilences = 0
        probe = nil
    }

    var isRegistered: Bool { phase == .registered }

    /// The Noise payload of a register: the timestamp (as in tunnel initiations), then the token.
    func payload(now: Double) -> [UInt8] {
        var stamp = [UInt8](); put64be(UInt64(now * 1e9), &stamp)
        return stamp + token
    }

    /// The loop made the register (`initiator`, message 1): it goes out with index `index`.
    func registerMade(_ initiator: Noise.Initiator, _ noise: [UInt8], index: UInt32, now: Double) -> [UInt8] {
        working = false
        phase = .registering
        pending = (initiator, index, now)
        lastRegister = (noise, RelayMessage.register(sender: index, noise: noise, mac1Key: mac1Key, cookie: cookie.flatMap { now - $0.at < 120 ? $0.value : nil }))
        return lastRegister!.wire
    }

    /// The last register sent (its Noise message, and the whole datagram for its mac1).
    private(set) var lastRegister: (noise: [UInt8], wire: [UInt8])?
    /// A cookie from the relay under load (valid two minutes).
    private var cookie: (value: [UInt8], at: Double)?

    /// The relay answered our pending register with a cookie: the same register again, with mac2.
    func cookieReceived(receiver: UInt32, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, now: Double) -> [UInt8]? {
        guard let p = pending, p.index == receiver, let last = lastRegister,
              let c = HandshakeMAC.openCookie(nonce: nonce, sealed: sealed, mac1: Array(HandshakeMAC.mac1(of: last.wire[...])), key: HandshakeMAC.cookieKey(sender: publicKey)) else { return nil }
        cookie = (c, now)
        let wire = RelayMessage.register(sender: p.index, noise: last.noise, mac1Key: mac1Key, cookie: c)
        lastRegister = (last.noise, wire)
        return wire
    }

    /// The relay answered (DH done by the caller): registered, first ping at once (it proves our
    /// address to the relay, which activates the registration).
    func registered(_ transport: Noise.Transport, grant: RelayGrant, now: Double) -> [UInt8]? {
        guard let p = pending else { return nil }
        pending = nil
        phase = .registered
        id = grant.id; localIndex = p.index
        sendKey = transport.send.key; sendCounter = 0
        receiveKey = transport.receive.key; window = ReplayWindow()
        heartbeat = Double(max(1, grant.heartbeatSeconds))
        lastHeard = now; registeredAt = now; failures = 0; lastError = nil
        if self.transport == .udp { udpSilences = 0 }
        lookups = [:]; absent = []; claim = nil; claimAskedAt = -100
        lastPing = now
        return frame(.ping, [][...])
    }

    /// The relay refused: back off (longer when we are not admitted: that needs an operator).
    func refused(_ reason: RelayRefusal, now: Double) {
        pending = nil
        lastError = "refused: \(reason)"
        backOff(now: now, minimum: reason == .notAdmitted ? 30 : 1)
    }

    /// Registration failed or the relay went silent: idle until the next attempt, 1 s doubling up
    /// to 60 s, with up to 25% jitter.
    func backOff(now: Double, minimum: Double = 1) {
        phase = .idle
        pending = nil
        sendKey = nil; receiveKey = nil; registeredAt = nil
        let base = min(60, max(minimum, pow(2, Double(failures))))
        failures += 1
        nextAttempt = now + base * Double.random(in: 1...1.25)
    }

    /// A frame to the relay (the caller sends it to `endpoint`).
    func frame(_ kind: RelayFrameKind, _ body: ArraySlice<UInt8>) -> [UInt8]? {
        guard let k = sendKey else { return nil }
        let f = RelayMessage.frame(kind, session: id, counter: sendCounter, body: body, key: k)
        sendCounter += 1
        return f
    }

    /// `count` consecutive counters for forward frames the data path builds itself.
    func reserve(_ count: Int) -> (key: SymmetricKey, counter: UInt64, session: UInt32)? {
        guard let k = sendKey else { return nil }
        let n = sendCounter
        sendCounter += UInt64(count)
        return (k, n, id)
    }

    /// A frame from the relay whose tag the caller verified with `receiveKey`: fresh?
    func accept(counter: UInt64, now: Double) -> Bool {
        guard window.accept(counter) else { return false }
        lastHeard = now
        return true
    }

    func pong(_ body: ArraySlice<UInt8>) { observed = RelayAddress.decode(body) }

    /// Leaves the relay (it drops our registration at once); idle, and ready to register again as
    /// soon as it is wanted. Returns the leave frame.
    func leave() -> [UInt8]? {
        let f = isRegistered ? frame(.leave, [][...]) : nil
        phase = .idle
        pending = nil
        sendKey = nil; receiveKey = nil; registeredAt = nil
        failures = 0; nextAttempt = 0; lastError = nil
        return f
    }

    /// Timers: register when due and `wanted`, heartbeat, notice silence (two heartbeats and a
    /// second: the relay is gone). Returns what to send; `dead` is true when the link just went down.
    func tick(now: Double, wanted: Bool = true) -> (send: [UInt8]?, register: Bool, dead: Bool) {
        switch phase {
        case .idle:
            return (nil, wanted && now >= nextAttempt && !working, false)
        case .registering:
            if let p = pending, now - p.sentAt >= 5 {
                lastError = "no answer from the relay"
                if transport == .udp { udpSilences += 1 }
                backOff(now: now, minimum: wantsWebSocket ? 0 : 1)
            }
            return (nil, false, false)
        case .registered:
            if now - lastHeard > heartbeat * 2 + 1 {
                lastError = "the relay stopped answering"
                backOff(now: now)
                failures = 0
                nextAttempt = now   // try again at once (it may be back), then back off
                return (nil, false, true)
            }
            if now - lastPing >= heartbeat {
                lastPing = now
                return (frame(.ping, [][...]), false, false)
            }
            return (nil, false, false)
        }
    }
}

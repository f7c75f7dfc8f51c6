import Crypto
import Foundation
import Logging
import RelayControlAPI
import RelayCore
import RelayTunnel

/// The node's side of the tunnel as a state machine: its peers (one `PeerMachine` each), the
/// receiver-index table, what the site exports, the counters, and the actions the loops owe.
/// Pure (no sockets, no clock, no lock of its own): the tunnel's loops call it under their lock
/// and perform `take()`'s actions after releasing it. The steps that cost a Diffie-Hellman are
/// split in two around it (`beginResponse`/`responded`, `answerable`/`answered`,
/// `makeInitiation`/`initiationMade`), so no DH runs under the lock.
final class PeerTable {
    let staticKey: Curve25519.KeyAgreement.PrivateKey
    let ownPublic: [UInt8]
    private(set) var peers: [PeerMachine] = []
    private(set) var byIndex: [UInt32: PeerMachine] = [:]
    var counters = TunnelCounters()
    /// What this site exports to its peers: its virtual prefixes. A peer's packet to anything else
    /// (the gateway's own addresses, the underlay, another routed network) is dropped.
    var exported: [IPPrefix] = []
    /// Actions owed to the loops, in order (see `take`).
    var actions: [PeerAction] = []

    init(staticKey: Curve25519.KeyAgreement.PrivateKey) {
        self.staticKey = staticKey
        ownPublic = Array(staticKey.publicKey.rawRepresentation)
    }

    /// The actions owed since the last call (nothing allocated when there are none).
    func take() -> [PeerAction] {
        guard !actions.isEmpty else { return [] }
        var out: [PeerAction] = []
        swap(&out, &actions)
        return out
    }

    // MARK: indices

    /// A fresh random receiver index for `p` (an attacker cannot guess a pending one).
    func bind(_ p: PeerMachine) -> UInt32 {
        while true {
            let i = UInt32.random(in: 1...UInt32.max)
            if byIndex[i] == nil { byIndex[i] = p; return i }
        }
    }
    func bind(_ p: PeerMachine, index: UInt32) { byIndex[index] = p }
    func unbind(_ index: UInt32) { byIndex[index] = nil }

    // MARK: configuration

    struct PeerConfig { var name: String; var publicKey: [UInt8]; var endpoint: Endpoint?; var prefixes: [IPPrefix] }

    /// Reload: peers whose key stays keep their machine (and sessions); new keys get one (with the
    /// greatest initiation timestamp kept for them, `stamp`); removed keys lose their indices.
    func configure(_ list: [PeerConfig], exported: [IPPrefix], stamp: ([UInt8]) -> UInt64) {
        var next: [PeerMachine] = []
        for c in list {
            if let old = peers.first(where: { $0.publicKey == c.publicKey }) {
                old.reload(name: c.name, prefixes: c.prefixes, endpoint: c.endpoint)
                next.append(old)
            } else {
                let m = PeerMachine(name: c.name, publicKey: c.publicKey, endpoint: c.endpoint, prefixes: c.prefixes)
                m.lastInitiationStamp = stamp(c.publicKey)
                next.append(m)
            }
        }
        for old in peers where !next.contains(where: { $0 === old }) { old.removed(self) }
        peers = next
        self.exported = exported
    }

    /// The peer whose sites hold `dst`.
    func route(_ dst: IPAddress) -> PeerMachine? { peers.first { p in p.prefixes.contains { $0.contains(dst) } } }

    func peer(key: [UInt8]) -> PeerMachine? { peers.first { $0.publicKey == key } }

    var endpoints: [Endpoint] { peers.compactMap(\.endpoint) }

    // MARK: events

    /// Start: every peer we know how to reach gets an initiation, so after a restart the peers
    /// learn at once that our old sessions are gone (not after their 15-second no-answer timer).
    func hello() { for p in peers where p.endpoint != nil && p.current == nil && p.pending == nil { p.askHandshake(self) } }

    func tick(now: Double) { for p in peers { p.tick(now: now, self) } }

    /// A response (mac1 already checked) to our initiation `receiver`: the machine and a copy of
    /// its initiator, for `readMessage2` outside the lock; nil (counted) for an unknown index.
    func beginResponse(receiver: UInt32) -> (PeerMachine, Noise.Initiator)? {
        guard let p = byIndex[receiver], let pend = p.pending, pend.index == receiver else { counters.unknownIndex += 1; return nil }
        return (p, pend.initiator)
    }

    /// A cookie reply for our initiation `receiver`: opened with the mac1 we sent, then kept.
    func cookieReply(receiver: UInt32, nonce: ArraySlice<UInt8>, sealed: ArraySlice<UInt8>, now: Double) {
        guard let p = byIndex[receiver], let pend = p.pending, pend.index == receiver,
              let cookie = HandshakeMAC.openCookie(nonce: nonce, sealed: sealed, mac1: p.lastMac1, key: HandshakeMAC.cookieKey(sender: p.publicKey))
        else { counters.unknownIndex += 1; return }
        p.cookieReceived(cookie, now: now, self)
    }

    /// An initiation whose message 1 was read (outside the lock) from `remoteStatic` with
    /// timestamp `stamp`: the peer when it is configured and the timestamp is newer than any
    /// accepted from it (kept across restarts), else nil (counted).
    func answerable(remoteStatic: [UInt8], stamp: UInt64) -> PeerMachine? {
        guard let p = peer(key: remoteStatic) else { counters.unknownPeer += 1; return nil }
        guard p.admits(stamp: stamp) else { counters.replayedInitiation += 1; return nil }
        return p
    }

    /// The response to that initiation is made (message 2, outside the lock): it gets an index and
    /// its MACs, and goes out after the timestamp is kept.
    func answered(_ p: PeerMachine, stamp: UInt64, sender: UInt32, message: [UInt8], transport: Noise.Transport, from: Endpoint, now: Double) {
        guard peers.contains(where: { $0 === p }), p.admits(stamp: stamp) else { counters.replayedInitiation += 1; return }
        let index = bind(p)
        let wire = TunnelMessage.response(sender: index, receiver: sender, noise: message, mac1Key: p.mac1Key)
        p.answered(stamp: stamp, sender: sender, index: index, transport: transport, response: wire, to: from, now: now, self)
    }

    /// The initiation for a `.initiate` action: key generation and two DH (outside the lock), the
    /// timestamp in its payload.
    static func makeInitiation(_ staticKey: Curve25519.KeyAgreement.PrivateKey, to remote: [UInt8], now: Double) throws -> (Noise.Initiator, [UInt8]) {
        var ini = try Noise.Initiator(staticKey: staticKey, remoteStatic: remote)
        var stamp = [UInt8](); put64be(UInt64(now * 1e9), &stamp)
        let msg = try ini.writeMessage1(payload: stamp)
        return (ini, msg)
    }

    /// The responder's side of an initiation, outside the lock: message 1 read (DH), its
    /// timestamp. nil when it does not authenticate.
    static func readInitiation(_ staticKey: Curve25519.KeyAgreement.PrivateKey, _ noise: [UInt8]) -> (Noise.Responder, UInt64)? {
        var r = Noise.Responder(staticKey: staticKey)
        guard let payload = try? r.readMessage1(noise), payload.count == 8 else { return nil }
        return (r, payload.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }
}

func put64be(_ v: UInt64, _ out: inout [UInt8]) { for i in (0..<8).reversed() { out.append(UInt8(truncatingIfNeeded: v >> (UInt64(i) * 8))) } }

import Crypto
import Foundation
import Testing
import RelayCore
import RelayTunnel
import RelayConfig
@testable import RelayDaemonKit

/// Which relays a node registers at, without sockets: two nodes' `PeerTable`s and two relays'
/// `RelayRegistry`s exchange what their actions ask for, on a virtual clock; a relay can be cut off
/// (it neither receives nor answers).
@Suite("relay links: home relay, on-demand relays, failover, peer cache")
struct RelayHomeTests {
    final class World {
        let relayKeys = [Curve25519.KeyAgreement.PrivateKey(), Curve25519.KeyAgreement.PrivateKey()]
        let relayAt = [Endpoint("100.64.9.9:51821")!, Endpoint("100.64.8.8:51821")!]
        let registries: [RelayRegistry]
        let keys = [Curve25519.KeyAgreement.PrivateKey(), Curve25519.KeyAgreement.PrivateKey()]
        let at = [Endpoint("100.64.1.2:40000")!, Endpoint("100.64.2.2:40000")!]
        let tables: [PeerTable]
        var alive = [true, true]
        /// Per relay: answers to node i held back until released (who answers first).
        var hold: [Set<Int>] = [[], []]
        var held: [([UInt8], Int, Int)] = []   // (datagram, relay, node)
        var now = 1000.0

        init(handshakesPerSecond: Double = 4000) {
            registries = relayKeys.map { k in
                var p = RelayRegistry.Policy(); p.tokens = [Array("token-0123456789".utf8)]
                p.handshakesPerSecond = handshakesPerSecond
                return RelayRegistry(staticKey: k, policy: p)
            }
            tables = keys.map { PeerTable(staticKey: $0) }
            let relays = (0..<2).map { RelayServerConfig(address: relayAt[$0], publicKey: Data(relayKeys[$0].publicKey.rawRepresentation).base64EncodedString(), token: "token-0123456789") }
            for i in 0..<2 {
                let other = keys[1 - i].publicKey.rawRepresentation
                tables[i].configure([.init(name: "peer", publicKey: Array(other), endpoint: nil, prefixes: [IPPrefix("240.\(2 - i).0.0/16")!])],
                                    exported: [IPPrefix("240.\(i + 1).0.0/16")!], stamp: { _ in 0 })
                tables[i].configureRelays(relays, now: now)
            }
        }

        var peers: [PeerMachine] { tables.map { $0.peers[0] } }

        /// Node `i`'s actions, carried out as TunnelService does (registers made here, datagrams
        /// to relays delivered).
        func perform(_ i: Int, _ actions: [PeerAction]) {
            for a in actions {
                switch a {
                case .send(let bytes, let to):
                    guard case .direct(let e) = to, let r = relayAt.firstIndex(of: e), alive[r] else { continue }
                    registries[r].receive(bytes[...], from: at[i], now: now)
                    for (out, dst) in registries[r].take() {
                        guard let n = at.firstIndex(of: dst) else { continue }
                        if hold[r].contains(n) { held.append((out, r, n)) } else { deliver(out, relay: r, to: n) }
                    }
                case .register(let link):
                    var ini = try! Noise.Initiator(staticKey: keys[i], remoteStatic: link.publicKey)
                    let msg = try! ini.writeMessage1(payload: link.payload(now: now))
                    tables[i].registerMade(link, ini, msg, now: now)
                    perform(i, tables[i].take())
                default: break
                }
            }
        }

        /// A datagram from relay `r` at node `n`, as TunnelService.receiveFromRelay takes it.
        func deliver(_ b: [UInt8], relay r: Int, to n: Int) {
            let t = tables[n]
            switch RelayMessage.parse(b[...]) {
            case .registered(let sender, let receiver, let noise)?:
                guard let (link, ini0) = t.beginRegistered(receiver: receiver, from: relayAt[r]) else { return }
                var ini = ini0
                guard let (payload, transport) = try? ini.readMessage2(Array(noise)), let grant = RelayGrant(payload), grant.id == sender else { return }
                t.registered(link, receiver: receiver, transport: transport, grant: grant, now: now)
            case .cookie(let receiver, let nonce, let sealed)?:
                t.relayCookie(receiver: receiver, nonce: nonce, sealed: sealed, from: relayAt[r], now: now)
            case .frame(let kind, let session, let counter, let body)?:
                guard let (link, key) = t.relayKey(session: session, from: relayAt[r]), RelayMessage.verify(b[...], key: key) else { return }
                if let (_, route) = t.relayFrame(link, kind: kind, counter: counter, body: body, now: now) { peers[n].proved(route, now: now) }
            default: break
            }
            perform(n, t.take())
        }

        func release() {
            let h = held; held = []; hold = [[], []]
            for (b, r, n) in h where alive[r] { deliver(b, relay: r, to: n) }
        }

        /// `seconds` of ticks, 100 ms apart (relays tick once a second).
        func run(_ seconds: Double) {
            let end = now + seconds
            while now < end {
                now += 0.1
                for i in 0..<2 { tables[i].tick(now: now); perform(i, tables[i].take()) }
                if Int(now * 10) % 10 == 0 { for (r, reg) in registries.enumerated() where alive[r] { reg.tick(now: now) } }
            }
        }

        func registeredAt(_ r: Int) -> Int { registries[r].active }
        func home(_ i: Int) -> Endpoint? { tables[i].home?.endpoint }
        func route(_ i: Int) -> Route? { peers[i].route }
    }

    @Test("both nodes stay at the relay that answered first; the other relay is left once unused; each reaches the other through the home relay")
    func homeIsFirstToAnswer() {
        let w = World()
        w.hold[0] = [0, 1]          // relay 1 (100.64.9.9) answers late: relay 2 answers first
        w.run(0.2)
        w.release()
        w.run(1.5)                  // a missing peer is looked up every second
        #expect(w.home(0) == w.relayAt[1] && w.home(1) == w.relayAt[1])
        #expect(w.route(0) == .relay(w.relayAt[1], id: w.tables[1].home!.id))
        w.run(12)                   // relay 1 held both until now, unused: both left it
        #expect(w.registeredAt(0) == 0 && w.registeredAt(1) == 2, "relay 1 holds \(w.registeredAt(0)), relay 2 holds \(w.registeredAt(1))")
        #expect(w.registries[0].counters.left == 2)
        #expect(w.tables[0].relays[0].phase == .idle)
    }

    @Test("both relays answer at once and both know the peer: traffic goes through home, and the other relay is left by both nodes")
    func preferHome() {
        let w = World()
        w.run(2)
        let h = w.home(0)
        #expect(h != nil && w.home(1) == h)
        #expect(w.route(0).map { if case .relay(let r, _) = $0 { return r == h } else { return false } } == true, "\(String(describing: w.route(0)))")
        w.run(12)
        let other = w.relayAt.firstIndex { $0 != h }!
        #expect(w.registeredAt(other) == 0 && w.registeredAt(1 - other) == 2)
    }

    @Test("among relay paths the one through home is taken, whatever was found first; a proven direct path still wins")
    func routeThroughHome() {
        let r1 = Endpoint("100.64.9.9:51821")!, r2 = Endpoint("100.64.8.8:51821")!, direct = Endpoint("100.64.2.2:40000")!
        let m = PeerMachine(name: "B", publicKey: [UInt8](repeating: 1, count: 32), endpoint: nil, prefixes: [])
        let t = PeerTable(staticKey: .init())
        m.addRelayPath(r2, id: 7, t)
        m.addRelayPath(r1, id: 9, t)
        #expect(m.route == .relay(r2, id: 7))
        m.prefer(home: r1)
        #expect(m.route == .relay(r1, id: 9))
        m.proved(.relay(r2, id: 7), now: 5)       // the peer's data came through the other relay
        #expect(m.route == .relay(r1, id: 9))
        m.proved(.direct(direct), now: 6)
        #expect(m.route == .direct(direct))
        m.prefer(home: nil)
        m.removeRelayPaths(via: r1)
        #expect(m.route == .direct(direct))
    }

    @Test("under load a relay answers registers with cookies (no Diffie-Hellman, smaller than the register); the nodes come back with mac2 and register")
    func cookiesUnderLoad() {
        let w = World(handshakesPerSecond: 1)
        w.run(2)
        #expect(w.registries[0].counters.cookiesSent + w.registries[1].counters.cookiesSent > 0, "no cookie was needed")
        #expect(w.home(0) != nil && w.home(1) != nil, "both registered")
        #expect(w.tables[0].counters.cookiesReceived > 0 || w.tables[1].counters.cookiesReceived > 0)
        #expect(RelayMessage.cookieSize < RelayMessage.registerSize)
    }

    @Test("failover: the home relay is cut off; both nodes re-home at the other relay within 8 s and reach each other through it; the old relay, back, is not used")
    func failover() {
        let w = World()
        w.alive[1] = false          // only relay 1 at first...
        w.run(0.5)
        #expect(w.home(0) == w.relayAt[0] && w.home(1) == w.relayAt[0])
        // Relay 1 dies, relay 2 comes up.
        w.alive[0] = false; w.alive[1] = true
        w.run(8)
        #expect(w.home(0) == w.relayAt[1] && w.home(1) == w.relayAt[1], "failover: homes \(String(describing: w.home(0))) \(String(describing: w.home(1)))")
        #expect(w.route(0).map { if case .relay(let r, _) = $0 { return r == w.relayAt[1] } else { return false } } == true)
        // Relay 1 comes back: nobody needs it, nobody registers there.
        w.alive[0] = true
        w.run(15)
        #expect(w.registeredAt(0) == 0 && w.registeredAt(1) == 2)
    }

    @Test("a missing peer is searched for at the other relays (registered on demand), found there, and that relay kept while in use")
    func searchElsewhere() {
        let w = World()
        // A can only reach relay 1 at first; B only relay 2 (A's registers to relay 2 are lost).
        w.alive = [true, false]
        w.tables[1].configureRelays([], now: w.now)      // B: no relays yet
        w.run(1)
        #expect(w.home(0) == w.relayAt[0])
        w.alive = [true, true]
        let relays = (0..<2).map { RelayServerConfig(address: w.relayAt[$0], publicKey: Data(w.relayKeys[$0].publicKey.rawRepresentation).base64EncodedString(), token: "token-0123456789") }
        w.tables[1].configureRelays([relays[1]], now: w.now)   // B knows relay 2 only
        w.run(9)                    // A's first register at relay 2 was lost: 5 s without an answer, then backoff
        #expect(w.home(1) == w.relayAt[1])
        // A's peer is missing at home (relay 1 says not here): A registers at relay 2 and finds B.
        #expect(w.tables[0].relays[1].isRegistered)
        #expect(w.route(0).map { if case .relay(let r, _) = $0 { return r == w.relayAt[1] } else { return false } } == true, "\(String(describing: w.route(0)))")
        w.run(15)
        #expect(w.home(0) == w.relayAt[0] && w.tables[0].relays[1].isRegistered, "relay 2 stays while A reaches B through it")
    }

    @Test("the peer cache picks the home relay: the preferred relay alone for 3 s, then every relay")
    func cachePrefers() {
        let bKey = Array(Curve25519.KeyAgreement.PrivateKey().publicKey.rawRepresentation)
        let cache = RelayPeerCache.preferred([bKey: Endpoint("100.64.8.8:51821")!], peers: [bKey], candidates: [Endpoint("100.64.9.9:51821")!, Endpoint("100.64.8.8:51821")!])
        #expect(cache == Endpoint("100.64.8.8:51821")!)
        #expect(RelayPeerCache.preferred([:], peers: [bKey], candidates: [Endpoint("100.64.9.9:51821")!]) == nil)
        // A world whose node A prefers relay 2: only relay 2 gets A's register at first.
        let v = World()
        let bPub = Array(v.keys[1].publicKey.rawRepresentation)
        let relays = (0..<2).map { RelayServerConfig(address: v.relayAt[$0], publicKey: Data(v.relayKeys[$0].publicKey.rawRepresentation).base64EncodedString(), token: "token-0123456789") }
        let fresh = PeerTable(staticKey: v.keys[0])
        fresh.configure([.init(name: "peer", publicKey: bPub, endpoint: nil, prefixes: [IPPrefix("240.2.0.0/16")!])], exported: [IPPrefix("240.1.0.0/16")!], stamp: { _ in 0 })
        fresh.configureRelays(relays, cache: [bPub: v.relayAt[1]], now: 0)
        fresh.tick(now: 0.1)
        let first = fresh.take().compactMap { if case .register(let l) = $0 { return l.endpoint } else { return nil } }
        #expect(first == [v.relayAt[1]])
        fresh.tick(now: 3.2)
        let later = fresh.take().compactMap { if case .register(let l) = $0 { return l.endpoint } else { return nil } }
        #expect(later == [v.relayAt[0]], "after 3 s without a home, the other relay too")
    }
}

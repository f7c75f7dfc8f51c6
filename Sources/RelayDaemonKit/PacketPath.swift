import Foundation
import RelayCore
import RelayIPC
import RelayTunnel
import CRelayShim
#if canImport(Glibc)
import Glibc
#endif

/// The TUN descriptor relayd got from the helper, and whether it carries virtio_net_hdr (offloads).
public struct TunHandle: Sendable {
    /// Keeps the descriptor open while this handle exists: a packet thread that took a handle can
    /// never read or write a descriptor that was closed (and perhaps reused for another file) under
    /// it, however the device is replaced meanwhile.
    public let descriptor: TunDescriptor?
    public var vnetHeader: Bool
    @inline(__always) public var fd: Int32 { descriptor?.fd ?? -1 }
    /// A descriptor the caller owns and closes (tests).
    public init(fd: Int32, vnetHeader: Bool) {
        descriptor = fd >= 0 ? TunDescriptor(fd: fd, owned: false) : nil; self.vnetHeader = vnetHeader
    }
    public init(descriptor: TunDescriptor?, vnetHeader: Bool) { self.descriptor = descriptor; self.vnetHeader = vnetHeader }
}

/// An open TUN descriptor, closed when its last holder lets go of it.
public final class TunDescriptor: @unchecked Sendable {
    public let fd: Int32
    let owned: Bool
    public init(fd: Int32, owned: Bool = true) { self.fd = fd; self.owned = owned }
    deinit { if owned && fd >= 0 { close(fd) } }
}

/// Sealed datagrams on their way out: up to 64 messages for one sendmmsg, each message a train of
/// datagrams to one endpoint, all of one size but the last, sent with UDP GSO (one skb per train
/// through the kernel). Preallocated once per loop; nothing here allocates per packet.
struct TxBatch {
    static let messages = 64
    static let capacity = 64 * 65536
    static let maxDatagrams = 4096
    /// How much of each inner packet is kept, to build an ICMP "too big" if its datagram bounces.
    static let quote = 256
    static let maxTrain = 65000

    let tx = UnsafeMutablePointer<UInt8>.allocate(capacity: TxBatch.capacity)
    let quotes = UnsafeMutablePointer<UInt8>.allocate(capacity: TxBatch.maxDatagrams * TxBatch.quote)
    var quoteLens = [Int32](repeating: 0, count: TxBatch.maxDatagrams)
    var innerLens = [Int32](repeating: 0, count: TxBatch.maxDatagrams)
    var offsets = [Int](repeating: 0, count: TxBatch.messages)
    var lens = [Int32](repeating: 0, count: TxBatch.messages)
    var segs = [Int32](repeating: 0, count: TxBatch.messages)
    var firstDatagram = [Int](repeating: 0, count: TxBatch.messages)
    var addrs = [sockaddr_in6](repeating: sockaddr_in6(), count: TxBatch.messages)
    var count = 0, used = 0, datagrams = 0
    /// Whether the last message's train is closed (its last datagram was shorter).
    var closed = false
    var gso = true

    func deallocate() { tx.deallocate(); quotes.deallocate() }

    var isFull: Bool { count == TxBatch.messages || datagrams == TxBatch.maxDatagrams || used + 65536 > TxBatch.capacity }

    /// Seals `inner` straight into the batch (the caller flushes first when `isFull`).
    mutating func add(_ inner: UnsafeRawBufferPointer, sealing s: TunnelService.Sealing) {
        guard let r = s.relay else {
            let n = TunnelSession.seal(inner, key: s.key, counter: s.counter, remoteIndex: s.remote, into: tx + used)
            place(n, to: s.ep, inner: inner)
            return
        }
        // Through a relay: a forward frame around the sealed datagram (header, the peer's id at the
        // relay, the datagram, a tag over all of it under the relay link's key).
        let start = UnsafeMutableRawPointer(tx + used)
        RelayMessage.writeHeader(.forward, session: r.session, counter: r.counter, into: start)
        (start + RelayMessage.frameHeader).storeBytes(of: r.id.littleEndian, as: UInt32.self)
        let body = RelayMessage.frameHeader + 4
        let n = body + TunnelSession.seal(inner, key: s.key, counter: s.counter, remoteIndex: s.remote, into: start + body)
        RelayMessage.tag(key: r.key, UnsafeRawBufferPointer(start: UnsafeRawPointer(start), count: n), into: start + n)
        place(n + RelayMessage.tagSize, to: s.ep, inner: inner)
    }

    /// Books the `n` bytes just written at `tx + used` as one datagram to `ep`.
    mutating func place(_ n: Int, to ep: sockaddr_in6, inner: UnsafeRawBufferPointer) {
        let last = count - 1
        if gso, count > 0, !closed, n <= Int(segs[last]), Int(lens[last]) + n <= TxBatch.maxTrain,
           datagrams - firstDatagram[last] < 64, sameEndpoint(addrs[last], ep) {
            lens[last] += Int32(n)
            if n < Int(segs[last]) { closed = true }
        } else {
            offsets[count] = used; lens[count] = Int32(n); segs[count] = Int32(n); addrs[count] = ep
            firstDatagram[count] = datagrams
            count += 1
            closed = false
        }
        used += n
        let q = min(inner.count, TxBatch.quote)
        (quotes + datagrams * TxBatch.quote).update(from: inner.baseAddress!.assumingMemoryBound(to: UInt8.self), count: q)
        quoteLens[datagrams] = Int32(q); innerLens[datagrams] = Int32(inner.count)
        datagrams += 1
    }

    mutating func reset() { count = 0; used = 0; datagrams = 0; closed = false }

    func sameEndpoint(_ a: sockaddr_in6, _ b: sockaddr_in6) -> Bool {
        var a = a, b = b
        return memcmp(&a, &b, MemoryLayout<sockaddr_in6>.size) == 0
    }
}

/// The TUN direction's buffers (one set per thread that drains the device).
final class TunPump {
    var batch = TxBatch()
    var buf = [UInt8](repeating: 0, count: 65536 + 64)
    var seg = [UInt8](repeating: 0, count: 65536 + 64)
    var xlat = [UInt8](repeating: 0, count: 65536 + 64)
    var nonBlockingFD: Int32 = -1
    func deallocate() { batch.deallocate() }
    /// Reads must not block (the helper link sets O_NONBLOCK too, on every descriptor it receives).
    func nonBlocking(_ fd: Int32) {
        guard fd != nonBlockingFD else { return }
        if fcntl(fd, F_GETFL) & O_NONBLOCK == 0 { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        nonBlockingFD = fd
    }
}

/// The UDP direction's receive buffers (the UDP thread's).
final class UDPPump {
    static let batch = 64, slot = 65536
    var rx = [UInt8](repeating: 0, count: UDPPump.batch * UDPPump.slot)
    var lens = [Int32](repeating: 0, count: UDPPump.batch), segs = [Int32](repeating: 0, count: UDPPump.batch)
    var from = [sockaddr_in6](repeating: sockaddr_in6(), count: UDPPump.batch)
    let gro: Bool
    init(gro: Bool) { self.gro = gro }
}

extension TunnelService {
    var tunHandle: TunHandle { tun() }

    /// Writes one packet to the TUN device (with an empty virtio header when the device has them).
    func tunWrite(_ h: TunHandle, _ p: UnsafeRawBufferPointer) {
        guard h.fd >= 0 else { return }
        if h.vnetHeader {
            var zero = (UInt64(0), UInt16(0))
            withUnsafeMutableBytes(of: &zero) { z in
                var iov = [iovec(iov_base: z.baseAddress, iov_len: VirtioNetHeader.size),
                           iovec(iov_base: UnsafeMutableRawPointer(mutating: p.baseAddress), iov_len: p.count)]
                _ = writev(h.fd, &iov, 2)
            }
        } else {
            _ = write(h.fd, p.baseAddress, p.count)
        }
    }

    /// TUN to peers, the thread's loop: waits for the device, then drains it. With busy polling on,
    /// the UDP thread carries both directions (one thread to keep awake instead of two) and this one
    /// idles.
    func tunLoop() {
        let pump = TunPump()
        defer { pump.deallocate() }
        var pfd = [pollfd(fd: -1, events: Int16(POLLIN), revents: 0)]
        var waiter = AdaptivePoll()
        while !isStopped {
            if singleThread { usleep(50_000); continue }
            let h = tunHandle
            guard h.fd >= 0 else { usleep(100_000); continue }
            pump.nonBlocking(h.fd)
            pfd[0].fd = h.fd; pfd[0].revents = 0
            guard waiter.wait(&pfd, count: 1, fixed: busyPollNanos, adaptive: adaptivePolling) else { continue }
            drainTun(pump, h)
        }
    }

    /// Reads every queued packet from the TUN device (with offloads, one read can be a TCP burst of
    /// up to 64 KB, split here into segments as the kernel's GSO would), seals each, and sends them
    /// with one sendmmsg per batch: trains of equal-size datagrams to one peer go as one UDP GSO
    /// message.
    func drainTun(_ p: TunPump, _ h: TunHandle) {
        lock.lock(); let t = translator.value; lock.unlock()
        var reads = 0
        while reads < 1024 {
            let n = read(h.fd, &p.buf, p.buf.count)
            guard n > 0 else { break }
            reads += 1
            if p.batch.isFull { flush(&p.batch) }
            // One packet: translate (SIIT) if it goes to another family, seal, queue.
            func seal(_ pkt: ArraySlice<UInt8>) {
                guard let sealing = reserve(pkt) else { return }
                if p.batch.isFull { flush(&p.batch) }
                pkt.withUnsafeBytes { p.batch.add($0, sealing: sealing) }
            }
            func one(_ pkt: ArraySlice<UInt8>) {
                var pkt = pkt
                if t.isActive {
                    guard let x = translateOutbound(pkt, t, into: &p.xlat) else { return }
                    if x > 0 { pkt = p.xlat[0..<x] }
                }
                seal(pkt)
            }
            guard h.vnetHeader else { one(p.buf[0..<n]); continue }
            guard n > VirtioNetHeader.size else { continue }
            let vh = p.buf.withUnsafeBytes { VirtioNetHeader($0) }
            if vh.isGSO {
                let plan = p.buf.withUnsafeBytes { try? TSOPlan(UnsafeRawBufferPointer(rebasing: $0[VirtioNetHeader.size..<n]), vh) }
                guard let plan else { lock.lock(); counters.malformed += 1; lock.unlock(); continue }
                // The segments of one burst share their addresses: the same translation and
                // the same peer. One lookup and consecutive counters for all of them.
                var train: Sealing?
                for i in 0..<plan.count {
                    let len = p.buf.withUnsafeBytes { src in p.seg.withUnsafeMutableBytes { plan.build(i, from: UnsafeRawBufferPointer(rebasing: src[VirtioNetHeader.size..<n]), into: $0) } }
                    var pkt = p.seg[0..<len]
                    if t.isActive {
                        guard let x = translateOutbound(pkt, t, into: &p.xlat) else { continue }
                        if x > 0 { pkt = p.xlat[0..<x] }
                    }
                    if i == 0 {
                        train = reserve(pkt, count: plan.count, bytes: plan.totalBytes - (len - pkt.count) * plan.count)
                        if train == nil { continue }  // queued for a handshake, or refused: the rest one by one
                    }
                    guard let s = train else { seal(pkt); continue }
                    if p.batch.isFull { flush(&p.batch) }
                    pkt.withUnsafeBytes { p.batch.add($0, sealing: s.advanced(by: i)) }
                }
            } else {
                if vh.flags & VirtioNetHeader.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                    let ok = p.buf.withUnsafeMutableBytes { (try? TunOffload.completeChecksum(UnsafeMutableRawBufferPointer(rebasing: $0[VirtioNetHeader.size..<n]), vh)) != nil }
                    guard ok else { lock.lock(); counters.malformed += 1; lock.unlock(); continue }
                }
                one(p.buf[VirtioNetHeader.size..<n])
            }
        }
        flush(&p.batch)
    }

    /// Sends what the batch holds. A message the kernel refuses is retried datagram by datagram to
    /// learn why (EMSGSIZE: the path is narrower, the inner sender gets "too big"); a refused GSO
    /// train turns GSO off for this socket.
    func flush(_ b: inout TxBatch) {
        guard b.count > 0 else { return }
        var start = 0
        while start < b.count {
            var err: Int32 = 0
            let n = b.offsets.withUnsafeBufferPointer { off in
                b.lens.withUnsafeBufferPointer { lens in
                    b.segs.withUnsafeBufferPointer { segs in
                        b.addrs.withUnsafeBytes { a in
                            Int(CRelayShim_send_batch_gso(socketFD, b.tx, off.baseAddress! + start, Int32(b.count - start), lens.baseAddress! + start,
                                                          segs.baseAddress! + start, a.baseAddress! + start * MemoryLayout<sockaddr_in6>.stride, &err))
                        }
                    }
                }
            }
            if n == b.count - start { break }
            let failed = start + max(n, 0)
            // EIO / EINVAL are what udp_send_skb answers when the route cannot take GSO.
            if b.lens[failed] > b.segs[failed] && (err == EIO || err == EINVAL) {
                if b.gso { logger.warning("UDP GSO refused (\(String(cString: strerror(err)))): sending datagrams one by one from now on") }
                b.gso = false
            }
            // One by one, to learn which and why.
            let first = b.firstDatagram[failed], end = failed + 1 < b.count ? b.firstDatagram[failed + 1] : b.datagrams
            var at = b.offsets[failed]
            for d in first..<end {
                let len = d == end - 1 ? Int(b.lens[failed]) - (at - b.offsets[failed]) : Int(b.segs[failed])
                var a = b.addrs[failed]
                let r = withUnsafePointer(to: &a) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(socketFD, b.tx + at, len, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
                }
                if r < 0 && errno == EMSGSIZE {
                    let q = Array(UnsafeBufferPointer(start: b.quotes + d * TxBatch.quote, count: Int(b.quoteLens[d])))
                    answerTooBig(q[...], size: Int(b.innerLens[d]), to: b.addrs[failed])
                }
                at += len
            }
            start = failed + 1
        }
        b.reset()
    }

    /// Peers to TUN, the thread's loop. With one packet thread (node.threads, or busy polling) it
    /// carries the TUN direction too: one poll on both descriptors, kept spinning for busy_poll
    /// after the last packet when that is set.
    func udpLoop() {
        let pump = UDPPump(gro: CRelayShim_udp_enable_gro(socketFD) == 0), tunPump = TunPump()
        defer { tunPump.deallocate() }
        var pfds = [pollfd(fd: socketFD, events: Int16(POLLIN), revents: 0), pollfd(fd: -1, events: Int16(POLLIN), revents: 0)]
        var waiter = AdaptivePoll()
        while !isStopped {
            guard singleThread else {
                pfds[0].revents = 0
                guard waiter.wait(&pfds, count: 1, fixed: busyPollNanos, adaptive: adaptivePolling) else { continue }
                drainUDP(pump)
                continue
            }
            let h = tunHandle
            if h.fd >= 0 { tunPump.nonBlocking(h.fd) }
            pfds[0].revents = 0; pfds[1].fd = h.fd; pfds[1].revents = 0
            guard waiter.wait(&pfds, count: h.fd >= 0 ? 2 : 1, fixed: busyPollNanos, adaptive: adaptivePolling) else { continue }
            if pfds[0].revents != 0 { drainUDP(pump) }
            if h.fd >= 0 && pfds[1].revents != 0 { drainTun(tunPump, h) }
        }
    }

    /// recvmmsg up to 64 datagrams per syscall (with UDP GRO, each can be a train of datagrams from
    /// one peer), then each is opened; with offloads, TCP segments and UDP datagrams of one flow
    /// that follow on are coalesced into one large packet per write.
    func drainUDP(_ p: UDPPump) {
        let slot = UDPPump.slot, batch = UDPPump.batch
        let h = tunHandle
        rxTun = h
        lock.lock(); rxTranslator = translator; lock.unlock()
        for _ in 0..<16 {
            let n = p.rx.withUnsafeMutableBufferPointer { r in
                p.from.withUnsafeMutableBytes { f in
                    Int(CRelayShim_recv_batch_gro(socketFD, r.baseAddress!, slot, Int32(batch), &p.lens, &p.segs, f.baseAddress, Int32(MSG_DONTWAIT)))
                }
            }
            guard n > 0 else { break }
            for i in 0..<n where p.lens[i] > 0 {
                let base = i * slot, total = Int(p.lens[i])
                let step = p.gro && p.segs[i] > 0 ? Int(p.segs[i]) : total
                if step >= total { receive(p.rx[base..<(base + total)], from: p.from[i]) }
                else { receiveTrain(p, base: base, total: total, step: step, from: p.from[i]) }
            }
            flushCoalesced()
            if n < batch { break }
        }
    }

    /// The segments of one GRO train (one source; `step` bytes each but the last): runs of data
    /// messages to one session go through handleDataRun together, anything else one by one.
    func receiveTrain(_ p: UDPPump, base: Int, total: Int, step: Int, from: sockaddr_in6) {
        let now = clock()
        let maxRun = min(rxLens.count, (rxPlain.count - 65536) / step + 1)
        func receiver(at o: Int) -> UInt32? {
            p.rx.withUnsafeBytes { TunnelMessage.dataReceiver(UnsafeRawBufferPointer(rebasing: $0[(base + o)..<(base + min(o + step, total))])) }
        }
        var off = 0
        while off < total {
            if let rr = relayedData(p, at: base + off, length: min(step, total - off)) {
                // Deliver frames from a relay, each carrying a data message of one session.
                var k = 1
                while k < maxRun, off + k * step < total, relayedData(p, at: base + off + k * step, length: min(step, total - off - k * step)) == rr { k += 1 }
                receiveRelayedRun(p, at: base + off, count: k, step: step, end: base + total, key: rr, from: from, now: now)
                off += k * step
                continue
            }
            guard let r = receiver(at: off) else {
                receive(p.rx[(base + off)..<(base + min(off + step, total))], from: from)
                off += step
                continue
            }
            var k = 1
            while k < maxRun, off + k * step < total, receiver(at: off + k * step) == r { k += 1 }
            p.rx.withUnsafeBytes { rx in
                handleDataRun(receiver: r, count: k, stride: step, from: from, now: now) { j in
                    let m = UnsafeRawBufferPointer(rebasing: rx[(base + off + j * step)..<(base + min(off + (j + 1) * step, total))])
                    return (m.loadUnaligned(fromByteOffset: 8, as: UInt64.self).littleEndian, UnsafeRawBufferPointer(rebasing: m[16...]))
                }
            }
            off += k * step
        }
    }

    /// What identifies a run of relayed data: the relay session, the sender's id there, the tunnel
    /// session the data message is for.
    struct RelayedKey: Equatable { let session: UInt32, source: UInt32, receiver: UInt32 }

    /// A deliver frame (from a relay) whose datagram is a tunnel data message: its run key.
    func relayedData(_ p: UDPPump, at o: Int, length n: Int) -> RelayedKey? {
        guard n >= RelayMessage.forwardOverhead + TunnelLimits.overhead else { return nil }
        return p.rx.withUnsafeBytes { rx -> RelayedKey? in
            let b = UnsafeRawBufferPointer(rebasing: rx[o..<(o + n)])
            guard b[0] == RelayMessage.frameType, b[1] == RelayFrameKind.deliver.rawValue, b[2] == 0, b[3] == 0 else { return nil }
            let inner = UnsafeRawBufferPointer(rebasing: b[(RelayMessage.frameHeader + 4)..<(n - RelayMessage.tagSize)])
            guard let r = TunnelMessage.dataReceiver(inner) else { return nil }
            return RelayedKey(session: b.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian,
                              source: b.loadUnaligned(fromByteOffset: RelayMessage.frameHeader, as: UInt32.self).littleEndian, receiver: r)
        }
    }

    /// `count` deliver frames `step` apart from one relay, one sender, for one tunnel session: their
    /// tags checked without the lock, their relay counters accepted under one lock, then the data
    /// messages inside opened as one run (as direct data is). Any frame that fails takes the
    /// one-by-one path instead, before anything was accepted.
    func receiveRelayedRun(_ p: UDPPump, at start: Int, count k: Int, step: Int, end: Int, key rr: RelayedKey, from: sockaddr_in6, now: Double) {
        func segment(_ j: Int) -> Range<Int> { (start + j * step)..<min(start + (j + 1) * step, end) }
        guard let relay = TunnelService.endpoint(from) else { return }
        lock.lock(); let keyed = table.relayKey(session: rr.session, from: relay); lock.unlock()
        let allValid = keyed.map { (_, key) in
            p.rx.withUnsafeBytes { rx in (0..<k).allSatisfy { RelayMessage.verify(UnsafeRawBufferPointer(rebasing: rx[segment($0)]), key: key) } }
        } ?? false
        guard allValid, let (link, _) = keyed else {
            for j in 0..<k { receive(p.rx[segment(j)], from: from) }
            return
        }
        var accepted = 0
        lock.lock()
        p.rx.withUnsafeBytes { rx in
            for j in 0..<k {
                let c = UnsafeRawBufferPointer(rebasing: rx[segment(j)]).loadUnaligned(fromByteOffset: 8, as: UInt64.self).littleEndian
                if link.accept(counter: c, now: now) { accepted += 1; rxRelayAccepted[j] = true } else { counters.authFailed += 1; rxRelayAccepted[j] = false }
            }
        }
        lock.unlock()
        let route = Route.relay(link.endpoint, id: rr.source)
        let inner = RelayMessage.frameHeader + 4
        guard accepted == k else {
            for j in 0..<k where rxRelayAccepted[j] {
                let r = segment(j)
                receive(p.rx[(r.lowerBound + inner)..<(r.upperBound - RelayMessage.tagSize)], route: route)
            }
            return
        }
        p.rx.withUnsafeBytes { rx in
            handleDataRun(receiver: rr.receiver, count: k, stride: step, route: route, now: now) { j in
                let r = segment(j)
                let m = UnsafeRawBufferPointer(rebasing: rx[(r.lowerBound + inner)..<(r.upperBound - RelayMessage.tagSize)])
                return (m.loadUnaligned(fromByteOffset: 8, as: UInt64.self).littleEndian, UnsafeRawBufferPointer(rebasing: m[16...]))
            }
        }
    }

    /// Delivers one opened packet to the TUN device (UDP thread only): through the coalescer when
    /// the device takes offloads, else written at once.
    func deliver(_ p: UnsafeRawBufferPointer) {
        let h = rxTun
        guard h.fd >= 0 else { return }
        guard h.vnetHeader else { _ = write(h.fd, p.baseAddress, p.count); return }
        coalescer.push(p) { out in _ = write(h.fd, out.baseAddress, out.count) }
    }

    func flushCoalesced() {
        flows.flush(&rxFlows)
        let h = rxTun
        guard h.fd >= 0, h.vnetHeader else { return }
        coalescer.flush { out in _ = write(h.fd, out.baseAddress, out.count) }
    }
}

import Foundation
import Testing
import RelayControlAPI
import RelayTestHarness

/// The TLS front door against independent clients: openssl s_client (TLS version, ALPN,
/// certificate), curl (HTTP/2 and HTTP/1.1), Python `websockets` and `h2` (the relay's WebSocket
/// transport, RFC 6455 and RFC 8441), raw sockets for the abuse bounds. Loopback only.
@Suite("component: the TLS front door", .serialized)
struct FrontDoorTests {
    static let client = RelayProtocolTests.client
    static let token = "a-token-of-twenty-chars"

    /// A free TCP port on 127.0.0.1.
    static func freeTCPPort() -> Int {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0); defer { close(s) }
        var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); a.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) } }
        return Int(UInt16(bigEndian: a.sin_port))
    }

    struct Cert: Decodable { var certificate: String; var privateKey: String; var spkiSHA256: String }

    /// `relayctl relay cert --self-signed NAME` into `dir`.
    static func cert(_ name: String, _ dir: String) throws -> Cert {
        let r = try Command.run([try Binaries.path("relayctl"), "relay", "cert", "--self-signed", name, "--out", dir, "--json"], check: false)
        #expect(r.status == 0, "\(r.stderr)")
        return try JSONDecoder().decode(Cert.self, from: Data(r.stdout.utf8))
    }

    final class Setup {
        let dir: String, port: Int, cert: Cert, d: RelaydProcess
        /// A relay with its front door on 127.0.0.1, its certificate made for `name`.
        init(extra: String = "", name: String = "relay.test") throws {
            dir = NSTemporaryDirectory() + "frontdoor-\(getpid())-\(UUID().uuidString.prefix(6))"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            cert = try FrontDoorTests.cert(name, dir)
            port = FrontDoorTests.freeTCPPort()
            d = try RelaydProcess(config: """
                [node]
                name = "relay"
                listen_port = 0
                [reflector]
                enabled = false
                [relay]
                enabled = true
                port = 0
                tokens = ["\(FrontDoorTests.token)"]
                [front_door]
                enabled = true
                listen = "127.0.0.1:\(port)"
                certificate = "\(cert.certificate)"
                private_key = "\(cert.privateKey)"
                \(extra)
                """)
            try waitUntil("front door listening", timeout: 10) { (try? self.d.json(StatusResponse.self, "status"))?.frontDoor?.port == self.port }
        }
        deinit { try? FileManager.default.removeItem(atPath: dir) }

        func sClient(_ args: [String]) throws -> String {
            let r = try Command.run(["openssl", "s_client", "-connect", "127.0.0.1:\(port)", "-servername", "relay.test"] + args, timeout: 10, check: false, stdin: "")
            return r.stdout + r.stderr
        }

        func curl(_ args: [String], _ path: String) throws -> (status: String, body: String) {
            let r = try Command.run(["curl", "-s", "--cacert", cert.certificate, "--resolve", "relay.test:\(port):127.0.0.1", "-w", "\n%{http_version} %{http_code}"]
                                    + args + ["https://relay.test:\(port)\(path)"], timeout: 10, check: false)
            let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            return (String(lines.last ?? ""), lines.dropLast().joined(separator: "\n"))
        }
    }

    @Test("TLS 1.3 only, ALPN h2 and http/1.1, the certificate relayctl made; GET / over HTTP/2 and HTTP/1.1 (curl); unknown paths get JSON 404s")
    func tlsAndRoutes() throws {
        let s = try Setup()
        let st = try s.d.json(StatusResponse.self, "status")
        let v12 = try s.sClient(["-tls1_2"])
        #expect(v12.contains("alert protocol version") || v12.contains("no protocols available"), "TLS 1.2 was not refused: \(v12.suffix(600))")
        let h2 = try s.sClient(["-alpn", "h2", "-CAfile", s.cert.certificate, "-verify_return_error"])
        #expect(h2.contains("ALPN protocol: h2") && h2.contains("TLSv1.3") && h2.contains("CN = relay.test") && h2.contains("Verify return code: 0 (ok)"), "\(h2.suffix(1500))")
        let h1 = try s.sClient(["-alpn", "http/1.1"])
        #expect(h1.contains("ALPN protocol: http/1.1"), "\(h1.suffix(600))")
        for version in ["--http2", "--http1.1"] {
            let (status, body) = try s.curl([version], "/")
            #expect(status == (version == "--http2" ? "2 200" : "1.1 200"), "\(version): \(status) \(body)")
            let summary = try JSONDecoder().decode(PublicStatus.self, from: Data(body.utf8))
            #expect(summary.service == "relayd" && summary.relay?.publicKey == st.publicKey && summary.relay?.webSocketPath == "/relay")
            let (nf, nfBody) = try s.curl([version], "/nope")
            #expect(nf.hasSuffix(" 404") && nfBody.contains("\"not_found\""), "\(nf) \(nfBody)")
        }
        let (ws, wsBody) = try s.curl(["--http1.1"], "/relay")
        #expect(ws.hasSuffix(" 426") && wsBody.contains("Upgrade"), "\(ws) \(wsBody)")
        let c = try #require(try s.d.json(StatusResponse.self, "status").frontDoor)
        #expect(c.tls && c.certificateSubject == "CN=relay.test" && c.counters.requestsHTTP2 >= 2 && c.counters.requestsHTTP1 >= 2 && c.counters.notFound >= 2, "\(c)")
    }

    @Test("the relay over WebSocket: nodes on UDP, on a WebSocket (Python websockets) and on an RFC 8441 WebSocket over HTTP/2 (Python h2) reach each other through one relay, claim callsigns over both WebSockets, send bundles and get bundles back; a malformed bundle ends its connection with 1007")
    func webSocketTransport() throws {
        let s = try Setup()
        let st = try s.d.json(StatusResponse.self, "status")
        let udp = try #require(st.relay?.port)
        let r = try Command.run(["python3", Self.client, "--front-door", "127.0.0.1", String(udp), String(s.port), st.publicKey, Self.token, s.cert.certificate, "relay.test"],
                                timeout: 60, check: false)
        #expect(r.status == 0, "\(r.stderr.suffix(1500))")
        let out = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout)")
        for src in ["udp", "ws", "h2"] {
            #expect((out["register_\(src)"] as? [String: Any])?["id"] != nil, "\(src) registered: \(out)")
            for dst in ["udp", "ws", "h2"] where dst != src {
                let x = out["\(src)_to_\(dst)"] as? [String: Any]
                #expect(x?["count"] as? Int == 5 && x?["all_deliver"] as? Bool == true && x?["from"] as? Bool == true && x?["in_order"] as? Bool == true, "\(src) to \(dst): \(String(describing: x))")
            }
        }
        // Callsigns claimed over both WebSockets; bundles both ways; a malformed bundle ends its connection.
        for (t, call) in [("ws", "WS-NODE1"), ("h2", "H2-NODE1")] {
            let c = out["claim_\(t)"] as? [Any]
            #expect(c?.count == 3 && c?[0] as? Int == 10 && c?[1] as? Int == 0 && c?[2] as? String == call, "\(t): \(String(describing: c))")
        }
        let b = try #require(out["bundle"] as? [String: Any])
        #expect(b["delivered"] as? [String] == ["bundled 0", "bundled 1", "bundled 2"] && b["answers"] as? [String] == ["back 0", "back 1", "back 2"], "\(b)")
        #expect(b["bundles_before"] as? Int == 0 && (b["bundles_after"] as? Int ?? 0) >= 1, "the relay answers in bundles only after the client sent one: \(b)")
        #expect(out["malformed_bundle"] as? Int == 1007, "\(String(describing: out["malformed_bundle"]))")
        let status = try s.d.json(RelayStatusResponse.self, "relay", "status")
        #expect(status.relay.counters.forwarded == 36 && status.relay.counters.registrations == 4, "\(status.relay.counters)")
        #expect((status.frontDoor?.counters.webSocketsOpened ?? 0) == 3 && (status.frontDoor?.counters.webSocketProtocolErrors ?? 0) >= 1, "\(String(describing: status.frontDoor))")
        // The WebSocket nodes' registrations ended with their connections.
        try waitUntil("WebSocket nodes gone", timeout: 5) { try s.d.json(RelayStatusResponse.self, "relay", "status").relay.nodes <= 1 }
    }

    @Test("SIGHUP rereads the certificate: new connections get the new one while a WebSocket node stays connected and keeps its pongs; a broken certificate keeps the old one")
    func certificateReload() throws {
        let s = try Setup()
        let st = try s.d.json(StatusResponse.self, "status")
        let holder = try Spawn.start(["python3", Self.client, "--hold", "127.0.0.1", String(st.relay!.port), String(s.port), st.publicKey, Self.token, s.cert.certificate, "relay.test", "6"],
                                     stdoutPath: s.dir + "/hold.log", stderrPath: s.dir + "/hold.err")
        defer { kill(holder, SIGKILL); _ = Spawn.reap(holder, block: true) }
        try waitUntil("holder registered", timeout: 15) { ((try? String(contentsOfFile: s.dir + "/hold.log", encoding: .utf8)) ?? "").contains("registered") }
        // A new pair replaces the files in place; SIGHUP.
        let next = s.dir + "/next"
        try FileManager.default.createDirectory(atPath: next, withIntermediateDirectories: true)
        let c2 = try Self.cert("relay2.test", next)
        for (from, to) in [(c2.certificate, s.cert.certificate), (c2.privateKey, s.cert.privateKey)] { #expect(rename(from, to) == 0) }
        kill(s.d.pid, SIGHUP)
        try waitUntil("new certificate served", timeout: 10) { try s.sClient([]).contains("CN = relay2.test") }
        // A broken certificate file: the reload is reported, the current certificate stays.
        try "not a certificate".write(toFile: s.cert.certificate, atomically: true, encoding: .utf8)
        kill(s.d.pid, SIGHUP)
        try waitUntil("reload error logged", timeout: 10) { s.d.log.contains("the front door keeps its certificate") }
        #expect(try s.sClient([]).contains("CN = relay2.test"))
        var st2: Int32? = nil
        try waitUntil("holder done", timeout: 20) { st2 = Spawn.reap(holder, block: false); return st2 != nil }
        let out = (try? String(contentsOfFile: s.dir + "/hold.log", encoding: .utf8)) ?? ""
        let last = try #require(out.split(separator: "\n").last.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }, "\(out)")
        #expect(last["error"] is NSNull && (last["sent"] as? Int ?? 0) >= 20 && last["pongs"] as? Int == last["sent"] as? Int, "the WebSocket node was disturbed: \(last)")
    }

    @Test("abuse bounds: connections per address capped, a client that sends nothing is closed after header_seconds, an oversized WebSocket message closes its connection with 1009, HTTP/2 rapid reset ends with GOAWAY; the relay keeps serving")
    func abuseBounds() throws {
        let s = try Setup(extra: "max_connections_per_address = 4\nheader_seconds = 2\nmax_message_bytes = 4096")
        // Six silent connections: four admitted, two refused at once; the four closed after 2 s.
        var fds: [Int32] = []
        defer { for f in fds { close(f) } }
        for _ in 0..<6 {
            let f = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); a.sin_addr.s_addr = inet_addr("127.0.0.1"); a.sin_port = UInt16(s.port).bigEndian
            _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(f, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            fds.append(f)
        }
        try waitUntil("two refused", timeout: 5) { (try s.d.json(StatusResponse.self, "status").frontDoor?.counters.refusedPerAddress ?? 0) >= 2 }
        try waitUntil("silent ones closed", timeout: 8) { (try s.d.json(StatusResponse.self, "status").frontDoor?.counters.headerTimeouts ?? 0) >= 4 }
        // Every one of the six reads end of stream now.
        for f in fds {
            var tv = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(f, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var b = [UInt8](repeating: 0, count: 16)
            #expect(recv(f, &b, 16, 0) <= 0)
        }
        // An oversized WebSocket message.
        let script = """
            import socket, ssl, sys
            from websockets.sync.client import connect
            from websockets.exceptions import ConnectionClosed
            ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.set_alpn_protocols(["http/1.1"])
            ws = connect("wss://relay.test:%s/relay" % sys.argv[1], sock=socket.create_connection(("127.0.0.1", int(sys.argv[1]))), ssl=ctx, server_hostname="relay.test", max_size=None).__enter__()
            ws.send(b"\\xd4" * 5000)
            try:
                ws.recv(timeout=3); print("no close")
            except ConnectionClosed as e:
                print("closed", e.rcvd.code if e.rcvd else None)
            """
        let big = try Command.run(["python3", "-c", script, String(s.port), s.cert.certificate], timeout: 20, check: false)
        #expect(big.stdout.contains("closed 1009"), "\(big.stdout) \(big.stderr.suffix(800))")
        // HTTP/2 rapid reset (CVE-2023-44487): streams opened and reset at once are cut off by
        // swift-nio-http2's reset heuristics with GOAWAY ENHANCE_YOUR_CALM.
        let rapid = """
            import socket, ssl, sys, time, h2.connection, h2.config, h2.events
            ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.set_alpn_protocols(["h2"])
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="relay.test")
            c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
            c.initiate_connection(); s.sendall(c.data_to_send())
            goaway, sent = None, 0
            s.settimeout(0.05)
            try:
                for i in range(3000):
                    sid = c.get_next_available_stream_id()
                    c.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "relay.test")])
                    c.reset_stream(sid)
                    sent += 1
                    if i % 50 == 49:
                        s.sendall(c.data_to_send())
                        try:
                            data = s.recv(65536)
                            if not data: break
                            for e in c.receive_data(data):
                                if isinstance(e, h2.events.ConnectionTerminated): goaway = int(e.error_code)
                        except socket.timeout: pass
                        if goaway is not None: break
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError): pass
            # A slow relay (a sanitizer build) may read the resets after the client sent them all:
            # wait for its verdict (GOAWAY, or the connection closed) up to 10 s.
            closed = False
            s.settimeout(0.5)
            end = time.time() + 10
            while goaway is None and not closed and time.time() < end:
                try:
                    data = s.recv(65536)
                    if not data: closed = True; break
                    for e in c.receive_data(data):
                        if isinstance(e, h2.events.ConnectionTerminated): goaway = int(e.error_code)
                except socket.timeout: pass
                except (ConnectionResetError, ssl.SSLError, OSError): closed = True
            print("goaway", goaway, "sent", sent, "closed", closed)
            """
        let rr = try Command.run(["python3", "-c", rapid, String(s.port), s.cert.certificate], timeout: 30, check: false)
        // Cut off: GOAWAY 11 (ENHANCE_YOUR_CALM), or the connection closed when the client reads
        // after the close. (How many resets went out first depends on the relay's speed.)
        let words = rr.stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(words.count >= 6 && (words[1] == "11" || words[5] == "True"), "\(rr.stdout) \(rr.stderr.suffix(600))")
        #expect((try s.d.json(StatusResponse.self, "status").frontDoor?.counters.http2ConnectionErrors ?? 0) >= 1)
        // Still serving.
        #expect(try s.curl(["--http2"], "/").status == "2 200")
    }

    @Test("idle and stream bounds: a WebSocket that sends nothing is closed after idle_seconds, one that pings stays; HTTP/2 advertises max_streams and refuses a stream over it; the relay keeps serving")
    func idleAndStreamBounds() throws {
        let s = try Setup(extra: "idle_seconds = 5\nmax_streams = 3")
        // Two WebSockets: one silent (closed after 5 s without a byte), one pinging every second.
        let idle = """
            import socket, ssl, sys, threading, time
            from websockets.sync.client import connect
            from websockets.exceptions import ConnectionClosed
            ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.set_alpn_protocols(["http/1.1"])
            def open_ws():
                return connect("wss://relay.test:%s/relay" % sys.argv[1], sock=socket.create_connection(("127.0.0.1", int(sys.argv[1]))), ssl=ctx,
                               server_hostname="relay.test", ping_interval=None).__enter__()
            silent, busy = open_ws(), open_ws()
            t0 = time.time()
            result = {}
            def watch():
                try:
                    silent.recv(timeout=15); result["silent"] = "message"
                except ConnectionClosed:
                    result["silent"] = "closed after %.1f" % (time.time() - t0)
                except TimeoutError:
                    result["silent"] = "open"
            th = threading.Thread(target=watch); th.start()
            alive = True
            for _ in range(9):
                time.sleep(1)
                try:
                    busy.ping().wait(2)
                except Exception:
                    alive = False; break
            th.join()
            print(result["silent"], "| busy", "open" if alive else "closed")
            """
        let r = try Command.run(["python3", "-c", idle, String(s.port), s.cert.certificate], timeout: 40, check: false)
        let parts = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: " | ")
        let after = parts.first.flatMap { $0.hasPrefix("closed after ") ? Double($0.dropFirst("closed after ".count)) : nil }
        #expect(after != nil && after! >= 4 && after! <= 9, "the silent WebSocket: \(r.stdout) \(r.stderr.suffix(600))")
        #expect(parts.last == "busy open", "the pinging WebSocket: \(r.stdout)")
        #expect((try s.d.json(StatusResponse.self, "status").frontDoor?.counters.idleTimeouts ?? 0) >= 1)
        // HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS = 3; three WebSocket streams open, a fourth is refused.
        let streams = """
            import socket, ssl, sys, time, h2.connection, h2.config, h2.events, h2.settings
            ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.set_alpn_protocols(["h2"])
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="relay.test")
            c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
            c.initiate_connection(); s.sendall(c.data_to_send())
            s.settimeout(0.5)
            advertised, statuses, resets, goaway = None, {}, {}, None
            def pump(seconds):
                global advertised, goaway
                end = time.time() + seconds
                while time.time() < end:
                    try:
                        data = s.recv(65536)
                    except socket.timeout:
                        continue
                    if not data: break
                    for e in c.receive_data(data):
                        if isinstance(e, h2.events.RemoteSettingsChanged) and h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS in e.changed_settings:
                            advertised = e.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value
                        elif isinstance(e, h2.events.ResponseReceived):
                            statuses[e.stream_id] = dict(e.headers).get(b":status", b"").decode()
                        elif isinstance(e, h2.events.StreamReset):
                            resets[e.stream_id] = int(e.error_code)
                        elif isinstance(e, h2.events.ConnectionTerminated):
                            goaway = int(e.error_code)
                    s.sendall(c.data_to_send())
            pump(1)
            # h2 itself would hold back a stream over the server's limit: lift the client-side check.
            c.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100; c.remote_settings.acknowledge()
            for i in range(4):
                sid = c.get_next_available_stream_id()
                c.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":path", "/relay"),
                                     (":authority", "relay.test"), ("sec-websocket-version", "13")])
            s.sendall(c.data_to_send())
            pump(2)
            print("advertised", advertised, "ok", sorted(k for k, v in statuses.items() if v == "200"), "reset", resets, "goaway", goaway)
            """
        let h = try Command.run(["python3", "-c", streams, String(s.port), s.cert.certificate], timeout: 30, check: false)
        #expect(h.stdout.hasPrefix("advertised 3 ok [1, 3, 5]"), "\(h.stdout) \(h.stderr.suffix(800))")
        #expect(h.stdout.contains("reset {7: 7}") || (h.stdout.contains("goaway") && !h.stdout.contains("goaway None")), "the fourth stream is refused: \(h.stdout)")
        #expect(try s.curl(["--http2"], "/").status == "2 200")
    }

    @Test("systemd socket activation (systemd-socket-activate): relayd serves the front door on the socket it is handed, and says so")
    func socketActivation() throws {
        let dir = NSTemporaryDirectory() + "frontdoor-sa-\(getpid())-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try Self.cert("relay.test", dir)
        let port = Self.freeTCPPort()
        // front_door.listen names another port: the passed socket wins.
        try """
            [node]
            name = "relay"
            listen_port = 0
            [reflector]
            enabled = false
            [front_door]
            enabled = true
            listen = "127.0.0.1:1"
            certificate = "\(c.certificate)"
            private_key = "\(c.privateKey)"
            """.write(toFile: dir + "/relayd.toml", atomically: true, encoding: .utf8)
        let pid = try Spawn.start(["systemd-socket-activate", "-l", "127.0.0.1:\(port)", try Binaries.path("relayd"), "--config", dir + "/relayd.toml",
                                   "--state-dir", dir + "/state", "--socket", dir + "/relayd.sock", "--helper-socket", dir + "/none.sock"],
                                  stdoutPath: dir + "/log", stderrPath: dir + "/log")
        defer { kill(pid, SIGTERM); _ = Spawn.reap(pid, block: true) }
        try waitUntil("systemd-socket-activate listening", timeout: 10) { try Command.run(["ss", "-ltnH"]).stdout.contains("127.0.0.1:\(port)") }
        // The first connection starts relayd, which accepts it on the passed socket.
        let r = try Command.run(["curl", "-s", "--retry", "5", "--retry-connrefused", "--max-time", "15", "--cacert", c.certificate, "--resolve", "relay.test:\(port):127.0.0.1",
                                 "https://relay.test:\(port)/"], timeout: 30, check: false)
        #expect(r.stdout.contains("\"service\" : \"relayd\""), "\(r.stdout) \(r.stderr) \((try? String(contentsOfFile: dir + "/log", encoding: .utf8)) ?? "")")
        let st = try Command.run([try Binaries.path("relayctl"), "status", "--json", "--socket", dir + "/relayd.sock"], check: false)
        let status = try ControlJSON.decoder().decode(StatusResponse.self, from: Data(st.stdout.utf8))
        #expect(status.frontDoor?.listen == "socket activation (fd 3)" && status.frontDoor?.port == port, "\(String(describing: status.frontDoor))")
        let log = (try? String(contentsOfFile: dir + "/log", encoding: .utf8)) ?? ""
        #expect(log.contains("systemd passed a listening socket"), "\(log.suffix(1500))")
    }

    @Test("callsigns in the relay store: claims over the relay protocol (taken, reserved, malformed, over quota answered as such), relayctl relay devices, GET /devices/NAME only when listed or with a token, claims survive a restart, release, a blocked key is refused, a corrupt store is kept aside and reported")
    func callsignsAndStore() throws {
        let s = try Setup()
        let st = try s.d.json(StatusResponse.self, "status")
        let udp = String(try #require(st.relay?.port))
        let r = try Command.run(["python3", Self.client, "--claims", "127.0.0.1", udp, st.publicKey, Self.token], timeout: 30, check: false)
        #expect(r.status == 0, "\(r.stderr.suffix(1200))")
        let out = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        func result(_ k: String) -> Int { ((out[k] as? [Any])?.first as? Int) ?? -1 }
        #expect(result("a_first") == 0 && result("a_again") == 1 && result("b_taken") == 2, "\(out)")
        #expect(result("b_reserved") == 3 && result("b_short") == 3 && result("b_bad_char") == 3, "\(out)")
        #expect(result("a_second") == 0 && result("a_third") == 0 && result("a_over_quota") == 4 && result("c_listed") == 0, "\(out)")
        let keys = try #require(out["keys"] as? [String: String])
        let dev = try s.d.json(DevicesResponse.self, "relay", "devices")
        #expect(Set(dev.devices.map(\.callsign)) == ["N0CALL", "A-TWO", "A-THREE", "LISTED1"], "\(dev)")
        #expect(dev.devices.first { $0.callsign == "N0CALL" }?.publicKey == keys["a"] && dev.storeProblem == nil)
        // GET /devices/NAME: a listed device for anyone; another only with a token.
        let listed = try s.curl(["--http2"], "/devices/listed1")
        #expect(listed.status == "2 200" && listed.body.contains("\"callsign\" : \"LISTED1\"") && listed.body.contains("\"services\""), "\(listed)")
        #expect(try s.curl(["--http2"], "/devices/N0CALL").status == "2 404")
        let withToken = try s.curl(["--http2", "-H", "Authorization: Bearer \(Self.token)"], "/devices/N0CALL")
        #expect(withToken.status == "2 200" && withToken.body.contains("N0CALL"), "\(withToken)")
        #expect(try s.curl(["--http2", "-H", "Authorization: Bearer wrong-token-0123456789"], "/devices/N0CALL").status == "2 404")
        // Claims survive a restart.
        _ = s.d.stop()
        try s.d.start()
        #expect(Set(try s.d.json(DevicesResponse.self, "relay", "devices").devices.map(\.callsign)).contains("N0CALL"))
        // Release; unknown names are an error.
        #expect(try s.d.ctl("relay", "release", "n0call").status == 0)
        #expect(!(try s.d.json(DevicesResponse.self, "relay", "devices").devices.map(\.callsign).contains("N0CALL")))
        let again = try s.d.ctl("relay", "release", "N0CALL")
        #expect(again.status != 0 && again.stderr.contains("nobody holds"), "\(again.stderr)")
        // Block C by its callsign: its key may not register any more.
        #expect(try s.d.ctl("relay", "admit", "block", "LISTED1").status == 0)
        let st2 = try s.d.json(StatusResponse.self, "status")
        let blocked = try Command.run(["python3", Self.client, "--register-priv", "127.0.0.1", String(st2.relay!.port), st2.publicKey, Self.token, keys["c_priv"]!], timeout: 30, check: false)
        #expect(blocked.stdout.contains("\"refused\": 1"), "\(blocked.stdout) \(blocked.stderr.suffix(600))")
        #expect(try s.d.json(RelayStatusResponse.self, "relay", "status").relay.counters.blocked >= 1)
        #expect(s.d.log.contains("relay event=refused") && s.d.log.contains("reason=blocked") && s.d.log.contains("relay event=claim"), "structured event lines")
        #expect(try s.d.ctl("relay", "admit", "block", "LISTED1", "--remove").status == 0)
        let ok = try Command.run(["python3", Self.client, "--register-priv", "127.0.0.1", String(st2.relay!.port), st2.publicKey, Self.token, keys["c_priv"]!], timeout: 30, check: false)
        #expect(ok.stdout.contains("\"id\""), "\(ok.stdout)")
        // A corrupt store: kept aside, reported, a new one in its place; the relay serves.
        _ = s.d.stop()
        let db = s.d.dir + "/state/relay.sqlite"
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: db + suffix) }
        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: db))
        try s.d.start()
        let dev2 = try s.d.json(DevicesResponse.self, "relay", "devices")
        #expect(dev2.storeProblem?.contains("kept aside") == true && dev2.devices.isEmpty, "\(dev2)")
        let aside = try FileManager.default.contentsOfDirectory(atPath: s.d.dir + "/state").filter { $0.hasPrefix("relay.sqlite.corrupt-") }
        #expect(!aside.isEmpty, "the corrupt file was kept")
        #expect(s.d.log.contains("was corrupt"))
        let human = try s.d.ctl("relay", "devices")
        #expect(human.stdout.contains("store: the relay store was corrupt"), "\(human.stdout)")
    }

    @Test("a node whose relay's UDP does not answer registers over the front door's WebSocket, checking the certificate against a CA bundle (ca_file); a wrong bundle is refused")
    func nodeWithCABundle() throws {
        let s = try Setup(name: "localhost")
        try FileManager.default.createDirectory(atPath: s.dir + "/other", withIntermediateDirectories: true)
        let c = s.cert, port = s.port, relay = s.d
        let wrong = try Self.cert("localhost", s.dir + "/other")
        let key = try relay.json(StatusResponse.self, "status").publicKey
        // UDP to the relay goes to port 9 (discard: nothing answers there).
        func node(_ ca: String) throws -> RelaydProcess {
            try RelaydProcess(config: "[node]\nname = \"n\"\nlisten_port = 0\n[reflector]\nenabled = false\n[[relays]]\naddress = \"127.0.0.1:9\"\npublic_key = \"\(key)\"\ntoken = \"\(Self.token)\"\nwebsocket = \"wss://localhost:\(port)/relay\"\nca_file = \"\(ca)\"\n")
        }
        let good = try node(c.certificate)
        try waitUntil("registered over the WebSocket", timeout: 30) {
            let l = try good.json([RelayLinkView].self, "relay", "links").first
            return l?.transport == "websocket" && l?.state == "registered"
        }
        #expect(try relay.json(RelayStatusResponse.self, "relay", "status").nodes.first?.address.hasPrefix("websocket from 127.0.0.1:") == true)
        let bad = try node(wrong.certificate)
        try waitUntil("the wrong bundle refused", timeout: 30) { bad.log.contains("WebSocket transport down") }
        #expect(bad.log.contains("CERTIFICATE_VERIFY_FAILED") || bad.log.contains("handshakeFailed"), "\(bad.log.suffix(800))")
        #expect(try bad.json([RelayLinkView].self, "relay", "links").first?.state != "registered")
    }

    @Test("a LAN relay without TLS (front_door.tls = false): a node registers over plain ws://, and both sides warn")
    func plainWebSocket() throws {
        let s = try Setup(extra: "tls = false")
        #expect(s.d.log.contains("without TLS"), "\(s.d.log.suffix(600))")
        let key = try s.d.json(StatusResponse.self, "status").publicKey
        let node = try RelaydProcess(config: "[node]\nname = \"n\"\nlisten_port = 0\n[reflector]\nenabled = false\n[[relays]]\naddress = \"127.0.0.1:9\"\npublic_key = \"\(key)\"\ntoken = \"\(Self.token)\"\nwebsocket = \"ws://127.0.0.1:\(s.port)/relay\"\n")
        try waitUntil("registered over ws://", timeout: 30) {
            let l = try node.json([RelayLinkView].self, "relay", "links").first
            return l?.transport == "websocket" && l?.state == "registered"
        }
        #expect(node.log.contains("ws:// is not encrypted") && node.log.contains("ws://127.0.0.1:\(s.port)/relay"), "\(node.log.suffix(800))")
        #expect(try s.d.json(RelayStatusResponse.self, "relay", "status").nodes.first?.address.hasPrefix("websocket from 127.0.0.1:") == true)
    }
}

import Foundation
import Testing
import RelayCore
import RelayStore

@Suite("relay store: callsigns and admission in SQLite")
struct RelayStoreTests {
    static func tempDir() throws -> String {
        let d = NSTemporaryDirectory() + "relaystore-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }
    let keyA = String(repeating: "A", count: 43) + "=", keyB = String(repeating: "B", count: 43) + "="

    @Test("callsign rules: 3-32 of A-Z 0-9 -, case folded, no leading or trailing hyphen, reserved names refused")
    func rules() throws {
        #expect(try Callsign.normalize("n0call-7").get() == "N0CALL-7")
        #expect(Callsign.normalize("ab") == .failure(.length(2)))
        #expect(Callsign.normalize(String(repeating: "X", count: 33)) == .failure(.length(33)))
        #expect(Callsign.normalize("no_call") == .failure(.character("_")))
        #expect(Callsign.normalize("ÄBC") == .failure(.character("Ä")))
        #expect(Callsign.normalize("-abc") == .failure(.hyphenAtEnd))
        #expect(Callsign.normalize("Status") == .failure(.reserved("STATUS")))
    }

    @Test("claims bind a callsign to the first key; another key is refused; quota per key; release; unused ones expire; everything survives reopening")
    func claims() throws {
        let dir = try Self.tempDir(); defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = try RelayStore(directory: dir)
        #expect(try s.claim("n0call", key: keyA, listed: false, quota: 2, now: 100) == .claimed("N0CALL"))
        #expect(try s.claim("N0CALL", key: keyA, listed: true, quota: 2, now: 110) == .alreadyYours("N0CALL"))
        #expect(try s.claim("N0Call", key: keyB, listed: false, quota: 2, now: 120) == .taken("N0CALL"))
        #expect(try s.claim("two", key: keyA, listed: false, quota: 2, now: 130) == .claimed("TWO"))
        #expect(try s.claim("three", key: keyA, listed: false, quota: 2, now: 140) == .quota(2))
        #expect(try s.claim("relay", key: keyB, listed: false, quota: 2, now: 150) == .invalid(.reserved("RELAY")))
        #expect(try s.record("n0call")?.listed == true)
        let reopened = try RelayStore(directory: dir)
        #expect(try reopened.callsigns().map(\.callsign) == ["N0CALL", "TWO"] && reopened.setAside == nil)
        let first = try reopened.release("two"), second = try reopened.release("two")
        #expect(first && !second)
        try reopened.touch(key: keyA, now: 1000)
        #expect(try reopened.expire(unusedFor: 500, now: 1200) == [])
        #expect(try reopened.expire(unusedFor: 100, now: 1200) == ["N0CALL"])
    }

    @Test("admission: keys and callsigns on the allow and block lists; a blocked callsign blocks its key and cannot be claimed")
    func admission() throws {
        let dir = try Self.tempDir(); defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = try RelayStore(directory: dir)
        _ = try s.claim("gw-b", key: keyB, listed: false, quota: 3, now: 1)
        try s.setAdmission(.allow, keyA, on: true, now: 2)
        try s.setAdmission(.block, "gw-b", on: true, now: 3)
        try s.setAdmission(.block, "free-name", on: true, now: 4)
        let (allowed, blocked) = try s.admissionKeys()
        #expect(allowed == [keyA] && blocked == [keyB])
        #expect(try s.claim("FREE-NAME", key: keyA, listed: false, quota: 3, now: 5) == .blocked("FREE-NAME"))
        try s.setAdmission(.block, "GW-B", on: false, now: 6)
        #expect(try s.admissionKeys().blocked.isEmpty)
    }

    @Test("a corrupt database is moved aside (not replaced silently) and a new one opens")
    func corrupt() throws {
        let dir = try Self.tempDir(); defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(repeating: 0x5a, count: 4096).write(to: URL(fileURLWithPath: dir + "/relay.sqlite"))
        let s = try RelayStore(directory: dir)
        let aside = try #require(s.setAside)
        #expect(FileManager.default.fileExists(atPath: aside.path) && aside.path.hasPrefix(dir + "/relay.sqlite.corrupt-"))
        #expect((try? Data(contentsOf: URL(fileURLWithPath: aside.path)))?.first == 0x5a)
        #expect(try s.claim("fresh", key: keyA, listed: false, quota: 1, now: 1) == .claimed("FRESH"))
    }
}

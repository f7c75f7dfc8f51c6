/// Checks that a document is well-formed TOML 1.0 before it reaches the TOML parser (toml++ through
/// TOMLKit). That parser asserts, instead of reporting an error, on several malformed shapes (found
/// by `make fuzz`, kept in Fuzz/crashes: a control character, `[#` as a table header, `}` where an
/// array element belongs); in a release build the same shapes are undefined behaviour. So nothing
/// malformed reaches it: this recogniser accepts exactly TOML's grammar (values are checked as far
/// as their shape; their meaning stays the parser's), and says where the first problem is.
public enum TOMLText {
    public struct Problem: Error, Equatable, CustomStringConvertible, Sendable {
        public var line: Int
        public var column: Int
        public var message: String
        public var description: String { "line \(line), column \(column): \(message)" }
    }

    /// Nil when the text is well-formed TOML, else what is wrong and where.
    public static func check(_ text: String) -> Problem? {
        var r = Recogniser(Array(text.utf8))
        guard let m = r.document() else { return nil }
        return Problem(line: r.line, column: r.i - r.lineStart + 1, message: m)
    }

    /// `check` as text ("line L, column C: what").
    public static func problem(_ text: String) -> String? { check(text)?.description }

    struct Recogniser {
        let b: [UInt8]
        var i = 0
        var line = 1
        var lineStart = 0

        init(_ bytes: [UInt8]) { b = bytes }

        var atEnd: Bool { i >= b.count }
        var c: UInt8 { i < b.count ? b[i] : 0 }
        func peek(_ k: Int) -> UInt8 { i + k < b.count ? b[i + k] : 0 }

        func describe(_ x: UInt8) -> String {
            if i >= b.count { return "the end of the file" }
            if x == 0x0a { return "the end of the line" }
            if x < 0x20 || x == 0x7f { return "control character U+\(hex4(x))" }
            if x >= 0x80 { return "a non-ASCII character" }
            return "'\(Character(Unicode.Scalar(x)))'"
        }
        func hex4(_ x: UInt8) -> String { let h = String(x, radix: 16, uppercase: true); return String(repeating: "0", count: 4 - h.count) + h }
        func fail(_ what: String) -> String { what }

        static func isBare(_ x: UInt8) -> Bool {
            (x >= 0x61 && x <= 0x7a) || (x >= 0x41 && x <= 0x5a) || (x >= 0x30 && x <= 0x39) || x == 0x5f || x == 0x2d
        }

        mutating func newline() -> Bool {
            if c == 0x0a { i += 1; line += 1; lineStart = i; return true }
            if c == 0x0d && peek(1) == 0x0a { i += 2; line += 1; lineStart = i; return true }
            return false
        }
        mutating func blanks() { while c == 0x20 || c == 0x09 { i += 1 } }
        /// A comment to the end of the line; every character but tab must be printable.
        mutating func comment() -> String? {
            guard c == 0x23 else { return nil }
            while !atEnd && c != 0x0a {
                if c == 0x0d && peek(1) == 0x0a { break }
                if (c < 0x20 && c != 0x09) || c == 0x7f { return fail("\(describe(c)) is not allowed in TOML (is this a binary file?)") }
                i += 1
            }
            return nil
        }
        /// Blanks, comments and newlines (inside arrays).
        mutating func space() -> String? {
            while true {
                blanks()
                if let e = comment() { return e }
                if !newline() { return nil }
            }
        }
        /// The rest of a line after a statement: blanks, a comment, then a newline or the end.
        mutating func endOfLine() -> String? {
            blanks()
            if let e = comment() { return e }
            if atEnd || newline() { return nil }
            return fail("expected the end of the line, found \(describe(c))")
        }

        mutating func document() -> String? {
            if b.starts(with: [0xef, 0xbb, 0xbf]) { i = 3; lineStart = 3 }  // a UTF-8 byte order mark
            while !atEnd {
                blanks()
                if let e = comment() { return e }
                if newline() { continue }
                if atEnd { break }
                if c == 0x5b {  // [table] or [[array of tables]]
                    let double = peek(1) == 0x5b
                    i += double ? 2 : 1
                    blanks()
                    if let e = key() { return e }
                    blanks()
                    guard c == 0x5d, !double || peek(1) == 0x5d else { return fail("expected '\(double ? "]]" : "]")' to close the table header, found \(describe(c))") }
                    i += double ? 2 : 1
                } else {
                    if let e = keyValue() { return e }
                }
                if let e = endOfLine() { return e }
            }
            return nil
        }

        mutating func simpleKey() -> String? {
            if c == 0x22 || c == 0x27 {
                if peek(1) == c && peek(2) == c { return fail("a key cannot be a multi-line string") }
                return string()
            }
            guard Recogniser.isBare(c) else { return fail("expected a key (letters, digits, _, - or a quoted name), found \(describe(c))") }
            while Recogniser.isBare(c) { i += 1 }
            return nil
        }

        mutating func key() -> String? {
            while true {
                if let e = simpleKey() { return e }
                blanks()
                guard c == 0x2e else { return nil }
                i += 1
                blanks()
            }
        }

        mutating func keyValue() -> String? {
            if let e = key() { return e }
            blanks()
            guard c == 0x3d else { return fail("expected '=' after the key, found \(describe(c))") }
            i += 1
            blanks()
            return value()
        }

        mutating func value() -> String? {
            switch c {
            case 0x22, 0x27: return string()
            case 0x5b: return array()
            case 0x7b: return inlineTable()
            default: return scalar()
            }
        }

        mutating func array() -> String? {
            i += 1
            if let e = space() { return e }
            if c == 0x5d { i += 1; return nil }
            while true {
                if let e = value() { return e }
                if let e = space() { return e }
                if c == 0x2c {
                    i += 1
                    if let e = space() { return e }
                    if c == 0x5d { i += 1; return nil }
                    continue
                }
                if c == 0x5d { i += 1; return nil }
                return fail("expected ',' or ']' in the array, found \(describe(c))")
            }
        }

        mutating func inlineTable() -> String? {
            i += 1
            blanks()
            if c == 0x7d { i += 1; return nil }
            while true {
                if let e = keyValue() { return e }
                blanks()
                if c == 0x2c { i += 1; blanks(); continue }
                if c == 0x7d { i += 1; return nil }
                return fail("expected ',' or '}' in the inline table (which must fit on one line), found \(describe(c))")
            }
        }

        /// Strings: basic and literal, single- and multi-line; escapes checked in basic ones.
        mutating func string() -> String? {
            let q = c
            let multi = peek(1) == q && peek(2) == q
            i += multi ? 3 : 1
            if multi { _ = newline() }  // a newline right after the opening quotes is trimmed
            while true {
                if atEnd { return fail("the string is not closed") }
                if multi && c == q && peek(1) == q && peek(2) == q {
                    i += 3
                    // Up to two more quotes may close it (they belong to the content).
                    var extra = 0
                    while c == q && extra < 2 { i += 1; extra += 1 }
                    return nil
                }
                if !multi && c == q { i += 1; return nil }
                if c == 0x0a || (c == 0x0d && peek(1) == 0x0a) {
                    if !multi { return fail("the string is not closed before the end of the line") }
                    _ = newline(); continue
                }
                if (c < 0x20 && c != 0x09) || c == 0x7f { return fail("\(describe(c)) is not allowed in TOML (is this a binary file?)") }
                if q == 0x22 && c == 0x5c {  // escape
                    i += 1
                    switch c {
                    case 0x62, 0x74, 0x6e, 0x66, 0x72, 0x22, 0x5c: i += 1
                    case 0x75, 0x55:
                        let n = c == 0x75 ? 4 : 8
                        i += 1
                        for _ in 0..<n {
                            guard (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46) else { return fail("\\u and \\U take \(n == 4 ? "4" : "8") hex digits") }
                            i += 1
                        }
                    case 0x20, 0x09, 0x0a, 0x0d:  // line-ending backslash (multi-line strings only)
                        guard multi else { return fail("unknown escape sequence \\\(describe(c))") }
                        blanks()
                        guard newline() else { return fail("a backslash that ends a line may only be followed by blanks") }
                        while true { blanks(); if !newline() { break } }
                    default: return fail("unknown escape sequence \\\(describe(c))")
                    }
                    continue
                }
                i += 1
            }
        }

        /// Numbers, booleans, dates and times: a run of their characters (a date and a time may be
        /// separated by one space), with the shape of one of them.
        mutating func scalar() -> String? {
            let start = i
            func isTokenByte(_ x: UInt8) -> Bool {
                Recogniser.isBare(x) || x == 0x2b || x == 0x2e || x == 0x3a
            }
            while isTokenByte(c) { i += 1 }
            // "1979-05-27 07:32:00": a space between a full date and a time.
            if c == 0x20, i - start == 10, b[start + 4] == 0x2d, b[start + 7] == 0x2d,
               (peek(1) >= 0x30 && peek(1) <= 0x39), (peek(2) >= 0x30 && peek(2) <= 0x39), peek(3) == 0x3a {
                i += 1
                while isTokenByte(c) { i += 1 }
            }
            guard i > start else { return fail("expected a value (a string, number, boolean, date, array or inline table), found \(describe(c))") }
            let t = String(decoding: b[start..<i], as: UTF8.self)
            if Recogniser.wellShaped(t) { return nil }
            i = start
            return fail("'\(t.prefix(40))' is not a TOML value (strings need quotes)")
        }

        static func wellShaped(_ t: String) -> Bool {
            if t == "true" || t == "false" { return true }
            var s = Substring(t)
            if let f = s.first, f == "+" || f == "-" { s = s.dropFirst() }
            if s == "inf" || s == "nan" { return true }
            func digits(_ x: Substring, _ ok: (Character) -> Bool) -> Bool {
                // Digits with single underscores between them.
                guard let f = x.first, let l = x.last, ok(f), ok(l) else { return false }
                var prevUnderscore = false
                for ch in x {
                    if ch == "_" { if prevUnderscore { return false }; prevUnderscore = true; continue }
                    guard ok(ch) else { return false }
                    prevUnderscore = false
                }
                return true
            }
            let dec: (Character) -> Bool = { $0.isASCII && $0.isNumber }
            if s.count > 2 && s.hasPrefix("0") && t.first != "+" && t.first != "-" {
                let body = s.dropFirst(2)
                switch s.dropFirst().first {
                case "x": return digits(body) { $0.isHexDigit }
                case "o": return digits(body) { ("0"..."7").contains($0) }
                case "b": return digits(body) { $0 == "0" || $0 == "1" }
                default: break
                }
            }
            // Integer or float: int part, optional .frac, optional e[+-]exp.
            var rest = s
            let intPart = rest.prefix { dec($0) || $0 == "_" }
            if !intPart.isEmpty && digits(intPart, dec) && !(intPart.count > 1 && intPart.first == "0") {
                rest = rest.dropFirst(intPart.count)
                if rest.isEmpty { return true }
                if rest.first == "." {
                    rest = rest.dropFirst()
                    let frac = rest.prefix { dec($0) || $0 == "_" }
                    guard !frac.isEmpty, digits(frac, dec) else { return false }
                    rest = rest.dropFirst(frac.count)
                    if rest.isEmpty { return true }
                }
                if rest.first == "e" || rest.first == "E" {
                    rest = rest.dropFirst()
                    if let f = rest.first, f == "+" || f == "-" { rest = rest.dropFirst() }
                    return digits(rest, dec)
                }
            }
            // Dates and times (offset date-time, local date-time, local date, local time): their
            // characters only, starting with a digit; the parser checks the fields.
            guard t.first.map(dec) == true, t.contains(":") || t.contains("-") else { return false }
            return t.allSatisfy { dec($0) || "-:.TtZz+ ".contains($0) }
        }
    }
}

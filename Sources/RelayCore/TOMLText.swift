/// Checks a TOML document's text before it reaches the TOML parser (toml++ through TOMLKit), for
/// shapes on which that parser traps instead of reporting an error (found by `make fuzz`, kept in
/// Fuzz/crashes): a control character anywhere (TOML allows none but tab, line feed and carriage
/// return, in comments and strings included), and a [table] header whose name does not start
/// with a key character (`[#`, `[=`: toml++ asserts that it does).
public enum TOMLText {
    /// Nil when the text is safe to hand to the parser, else what is wrong and where.
    public static func problem(_ text: String) -> String? {
        controlCharacter(text) ?? tableHeader(text)
    }

    static func controlCharacter(_ text: String) -> String? {
        var line = 1, column = 1
        for u in text.unicodeScalars {
            if u == "\n" { line += 1; column = 1; continue }
            let v = u.value
            if (v < 0x20 && u != "\t" && u != "\r") || v == 0x7f {
                let hex = String(v, radix: 16, uppercase: true)
                return "line \(line), column \(column): control character U+\(String(repeating: "0", count: 4 - hex.count))\(hex) is not allowed in TOML (is this a binary file?)"
            }
            column += 1
        }
        return nil
    }

    static func isKeyStart(_ c: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || c == "_" || c == "-" || c == "\"" || c == "'"
    }

    /// Walks the document as far as TOML's structure goes (comments, strings, the brackets of
    /// values) to find the lines that are table headers, and checks each header's first character.
    static func tableHeader(_ text: String) -> String? {
        let s = Array(text.unicodeScalars)
        var i = 0, line = 1, depth = 0, lineStart = true
        func skipBlanks(_ k: inout Int) { while k < s.count && (s[k] == " " || s[k] == "\t") { k += 1 } }
        func toEndOfLine() { while i < s.count && s[i] != "\n" { i += 1 } }
        while i < s.count {
            if lineStart {
                lineStart = false
                if depth == 0 {
                    var j = i
                    skipBlanks(&j)
                    if j < s.count && s[j] == "[" {
                        var k = j + 1
                        if k < s.count && s[k] == "[" { k += 1 }
                        skipBlanks(&k)
                        if k < s.count && !isKeyStart(s[k]) && s[k] != "]" {
                            return "line \(line): a [table] header must start with a name (a letter, digit, _, - or a quoted name), not '\(s[k].escaped(asASCII: true))'"
                        }
                        i = k
                        toEndOfLine()  // the header (names cannot span lines)
                        continue
                    }
                    i = j
                    continue
                }
            }
            let c = s[i]
            switch c {
            case "\n": line += 1; lineStart = true; i += 1
            case "#": toEndOfLine()
            case "\"", "'":
                let triple = i + 2 < s.count && s[i + 1] == c && s[i + 2] == c
                i += triple ? 3 : 1
                while i < s.count {
                    if c == "\"" && s[i] == "\\" { i += 2; continue }
                    if s[i] == "\n" { if !triple { break }; line += 1 }
                    if s[i] == c && (!triple || (i + 2 < s.count && s[i + 1] == c && s[i + 2] == c)) { i += triple ? 3 : 1; break }
                    i += 1
                }
            case "[", "{": depth += 1; i += 1
            case "]", "}": depth = max(0, depth - 1); i += 1
            default: i += 1
            }
        }
        return nil
    }
}

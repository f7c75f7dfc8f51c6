/// Checks a TOML document's text before it reaches the TOML parser. TOML allows no control
/// characters but tab, line feed and carriage return anywhere in a document (in comments and
/// strings included), and the parser's own checks trap on some (found by `make fuzz`): such text is
/// refused here with the position of the first one.
public enum TOMLText {
    /// Nil when the text holds no forbidden control character, else what and where.
    public static func problem(_ text: String) -> String? {
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
}

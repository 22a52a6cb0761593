//! Value normalization before comparison (normalization version 1).
//!
//! Predicted and target values are both mapped to a [`Norm`]; two values match when their
//! norms are equal. Strings are tried as a date first, then as a number or currency amount,
//! and are otherwise compared as text with case and whitespace folded. The rules are
//! listed in the crate README; changing them means bumping [`NORMALIZATION_VERSION`],
//! which changes the eval spec hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the rules in this module; part of the eval spec hash.
pub const NORMALIZATION_VERSION: u32 = 1;

/// How to read an all-numeric date such as `05/03/2024`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DateOrder {
    /// `05/03/2024` is 5 March 2024.
    #[default]
    DayFirst,
    /// `05/03/2024` is 3 May 2024.
    MonthFirst,
}

/// A value in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Norm {
    /// JSON null (an absent key normalizes to this too).
    Null,
    /// A boolean.
    Bool(bool),
    /// A decimal number: optional `-`, no leading zeros, no trailing fraction zeros.
    Number(String),
    /// A calendar date, `YYYY-MM-DD`.
    Date(String),
    /// Text, lowercased, whitespace runs collapsed to one space, trimmed.
    Text(String),
    /// An array, element-wise.
    Array(Vec<Norm>),
    /// An object; keys whose value is null are dropped.
    Object(BTreeMap<String, Norm>),
}

/// Normalizes a JSON value.
pub fn normalize(v: &Value, order: DateOrder) -> Norm {
    match v {
        Value::Null => Norm::Null,
        Value::Bool(b) => Norm::Bool(*b),
        Value::Number(n) => match canonical_plain_number(&n.to_string()) {
            Some(c) => Norm::Number(c),
            None => Norm::Text(n.to_string()),
        },
        Value::String(s) => normalize_str(s, order),
        Value::Array(a) => Norm::Array(a.iter().map(|x| normalize(x, order)).collect()),
        Value::Object(o) => Norm::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalize(v, order)))
                .collect(),
        ),
    }
}

/// Normalizes a string: date, else number/amount, else folded text.
pub fn normalize_str(s: &str, order: DateOrder) -> Norm {
    if let Some(d) = parse_date(s, order) {
        return Norm::Date(d);
    }
    if let Some(n) = parse_amount(s) {
        return Norm::Number(n);
    }
    Norm::Text(fold_text(s))
}

/// Lowercases and collapses whitespace (any Unicode whitespace) to single spaces.
pub fn fold_text(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

fn month_from_name(t: &str) -> Option<u32> {
    if t == "sept" {
        return Some(9);
    }
    MONTHS
        .iter()
        .position(|m| t == *m || (t.len() == 3 && m.starts_with(t)))
        .map(|i| i as u32 + 1)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        _ => 0,
    }
}

fn iso(y: u32, m: u32, d: u32) -> Option<String> {
    if !(1000..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    if d > days_in_month(y, m) {
        return None;
    }
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

fn num(t: &str, max_len: usize) -> Option<u32> {
    if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// A day token, with an optional English ordinal suffix (`5th`).
fn day(t: &str) -> Option<u32> {
    let t = ["st", "nd", "rd", "th"]
        .iter()
        .find_map(|s| t.strip_suffix(s))
        .unwrap_or(t);
    num(t, 2)
}

/// Parses a date into `YYYY-MM-DD`: `2024-03-05` (also `/` or `.` separators),
/// `05/03/2024` per `order` (also `-` or `.`), `5 Mar 2024`, `5-Mar-2024`,
/// `5th March 2024`, `March 5, 2024`, `Mar 5 2024`. Impossible dates are not dates.
pub fn parse_date(s: &str, order: DateOrder) -> Option<String> {
    let s = s.trim().to_lowercase();
    if s.is_empty() || s.len() > 40 {
        return None;
    }
    // All-numeric forms with one separator kind.
    for sep in ['-', '/', '.'] {
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() == 3 && parts.iter().all(|p| num(p, 4).is_some()) {
            let (a, b, c) = (parts[0], parts[1], parts[2]);
            if a.len() == 4 && b.len() <= 2 && c.len() <= 2 {
                return iso(num(a, 4)?, num(b, 2)?, num(c, 2)?);
            }
            if a.len() <= 2 && b.len() <= 2 && c.len() == 4 {
                let (x, y, year) = (num(a, 2)?, num(b, 2)?, num(c, 4)?);
                return match order {
                    DateOrder::DayFirst => iso(year, y, x),
                    DateOrder::MonthFirst => iso(year, x, y),
                };
            }
            return None;
        }
    }
    // Forms with a month name.
    let toks: Vec<&str> = s
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '-' | '/' | '.'))
        .filter(|t| !t.is_empty())
        .collect();
    if toks.len() != 3 {
        return None;
    }
    let year = num(toks[2], 4).filter(|_| toks[2].len() == 4)?;
    if let (Some(d), Some(m)) = (day(toks[0]), month_from_name(toks[1])) {
        return iso(year, m, d);
    }
    if let (Some(m), Some(d)) = (month_from_name(toks[0]), day(toks[1])) {
        return iso(year, m, d);
    }
    None
}

/// Currency symbols stripped from amounts.
const CURRENCY_SYMBOLS: &[&str] = &[
    "us$", "r$", "$", "€", "£", "¥", "₹", "₩", "₽", "₺", "₪", "฿", "₫", "₴", "₦",
];

/// ISO 4217 codes recognized around amounts (case-insensitive).
const CURRENCY_CODES: &[&str] = &[
    "USD", "EUR", "GBP", "JPY", "CNY", "CHF", "CAD", "AUD", "NZD", "INR", "KRW", "BRL", "MXN",
    "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "RUB", "TRY", "ZAR", "SGD", "HKD", "THB", "IDR",
    "MYR", "PHP", "VND", "AED", "SAR", "ILS", "NGN", "EGP", "RON", "BGN", "ISK", "UAH",
];

fn is_currency_code(s: &str) -> bool {
    CURRENCY_CODES.iter().any(|c| c.eq_ignore_ascii_case(s))
}

fn strip_currency_prefix(s: &str) -> Option<&str> {
    for sym in CURRENCY_SYMBOLS {
        if s.len() >= sym.len() && s.is_char_boundary(sym.len()) {
            let (head, rest) = s.split_at(sym.len());
            if head.eq_ignore_ascii_case(sym) {
                return Some(rest);
            }
        }
    }
    // An ISO 4217 code (USD, eur) followed by a space or a digit/sign.
    let b = s.as_bytes();
    if b.len() > 3 && s.is_char_boundary(3) && is_currency_code(&s[..3]) {
        let next = b[3];
        if next == b' ' || next.is_ascii_digit() || next == b'-' || next == b'+' {
            return Some(&s[3..]);
        }
    }
    None
}

fn strip_currency_suffix(s: &str) -> Option<&str> {
    for sym in CURRENCY_SYMBOLS {
        if s.len() >= sym.len() && s.is_char_boundary(s.len() - sym.len()) {
            let (rest, tail) = s.split_at(s.len() - sym.len());
            if tail.eq_ignore_ascii_case(sym) {
                return Some(rest);
            }
        }
    }
    let b = s.as_bytes();
    let n = b.len();
    if n > 3 && s.is_char_boundary(n - 3) && is_currency_code(&s[n - 3..]) {
        let prev = b[n - 4];
        if prev == b' ' || prev.is_ascii_digit() {
            return Some(&s[..n - 3]);
        }
    }
    None
}

fn is_group_sep(c: char) -> bool {
    matches!(c, ' ' | '\'' | '\u{a0}' | '\u{202f}' | '\u{2009}' | '’')
}

/// Parses a number or currency amount into canonical decimal form (see [`Norm::Number`]).
///
/// Accepts a sign (`-`, `+`, `−`, trailing `-`, or parentheses for negatives), a currency
/// symbol or ISO 4217 code (`USD`, `eur`) before or after, and thousands separators (`,` `.` space,
/// apostrophe, thin/no-break space) with groups of three digits. When both `,` and `.`
/// occur, the last one is the decimal separator; a lone `,` followed by exactly three
/// digits is a thousands separator, otherwise a decimal one; a lone `.` is always decimal.
pub fn parse_amount(s: &str) -> Option<String> {
    let mut s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let mut neg = false;
    if s.starts_with('(') && s.ends_with(')') {
        neg = true;
        s = s[1..s.len() - 1].trim();
    }
    // Signs and currency markers in any order around the digits.
    for _ in 0..4 {
        let before = s;
        if let Some(r) = s.strip_prefix('-').or_else(|| s.strip_prefix('−')) {
            neg = !neg;
            s = r.trim_start();
        } else if let Some(r) = s.strip_prefix('+') {
            s = r.trim_start();
        } else if let Some(r) = s.strip_suffix('-') {
            neg = !neg;
            s = r.trim_end();
        } else if let Some(r) = strip_currency_prefix(s) {
            s = r.trim_start();
        } else if let Some(r) = strip_currency_suffix(s) {
            s = r.trim_end();
        }
        if s == before {
            break;
        }
    }
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty()
        || !chars
            .iter()
            .all(|&c| c.is_ascii_digit() || c == '.' || c == ',' || is_group_sep(c))
        || !chars[0].is_ascii_digit()
        || !chars[chars.len() - 1].is_ascii_digit()
    {
        return None;
    }
    let last_dot = chars.iter().rposition(|&c| c == '.');
    let last_comma = chars.iter().rposition(|&c| c == ',');
    let dots = chars.iter().filter(|&&c| c == '.').count();
    let commas = chars.iter().filter(|&&c| c == ',').count();
    let decimal: Option<usize> = match (last_dot, last_comma) {
        (Some(d), Some(c)) => {
            let (pos, count) = if d > c { (d, dots) } else { (c, commas) };
            if count != 1 {
                return None;
            }
            Some(pos)
        }
        (Some(d), None) => (dots == 1).then_some(d),
        (None, Some(c)) => (commas == 1 && chars.len() - c - 1 != 3).then_some(c),
        (None, None) => None,
    };
    let (int_part, frac_part) = match decimal {
        Some(p) => (&chars[..p], &chars[p + 1..]),
        None => (&chars[..], &chars[chars.len()..]),
    };
    if !frac_part.iter().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // Integer part: digit groups split by one kind of thousands separator.
    let seps: Vec<char> = int_part
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_digit())
        .collect();
    if let Some(&first) = seps.first() {
        if seps.iter().any(|&c| c != first) {
            return None;
        }
        let groups: Vec<String> = int_part
            .split(|&c| c == first)
            .map(|g| g.iter().collect())
            .collect();
        if groups[0].is_empty() || groups[0].len() > 3 || groups[1..].iter().any(|g| g.len() != 3) {
            return None;
        }
    }
    let int_digits: String = int_part.iter().filter(|c| c.is_ascii_digit()).collect();
    let frac_digits: String = frac_part.iter().collect();
    Some(canonical_digits(neg, &int_digits, &frac_digits))
}

/// Canonical form of a decimal given its sign, integer digits and fraction digits.
fn canonical_digits(neg: bool, int_digits: &str, frac_digits: &str) -> String {
    let int = int_digits.trim_start_matches('0');
    let frac = frac_digits.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let body = if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    };
    if neg && body != "0" {
        format!("-{body}")
    } else {
        body
    }
}

/// Canonical form of a plain number as JSON writes it: `-12`, `1234.5`, `1e20`, `1.5E-3`.
pub fn canonical_plain_number(s: &str) -> Option<String> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (mant, exp) = match s.find(['e', 'E']) {
        Some(p) => (&s[..p], s[p + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    if !(-400..=400).contains(&exp) {
        return None;
    }
    let (int, frac) = match mant.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mant, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Shift the decimal point by `exp`.
    let digits = format!("{int}{frac}");
    let point = int.len() as i64 + exp as i64;
    let (i, f) = if point <= 0 {
        (
            String::new(),
            format!("{}{digits}", "0".repeat((-point) as usize)),
        )
    } else if point as usize >= digits.len() {
        (
            format!("{digits}{}", "0".repeat(point as usize - digits.len())),
            String::new(),
        )
    } else {
        (
            digits[..point as usize].to_string(),
            digits[point as usize..].to_string(),
        )
    };
    Some(canonical_digits(neg, &i, &f))
}

/// Levenshtein distance over Unicode scalar values.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.is_empty() {
        return b.len();
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Normalized Levenshtein similarity as ANLS scores one answer: `1 - NL` when the
/// normalized distance `NL = lev / max(len)` is below `threshold`, else 0. Both strings are
/// folded ([`fold_text`]) first; two empty strings score 1.
pub fn nls(pred: &str, target: &str, threshold: f64) -> f64 {
    let (p, t) = (fold_text(pred), fold_text(target));
    let len = p.chars().count().max(t.chars().count());
    if len == 0 {
        return 1.0;
    }
    let nl = levenshtein(&p, &t) as f64 / len as f64;
    if nl < threshold {
        1.0 - nl
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn amt(s: &str) -> Option<String> {
        parse_amount(s)
    }

    #[test]
    fn amounts_in_many_spellings_are_one_decimal() {
        for s in [
            "1,234.50",
            "1.234,50",
            "$1234.5",
            "USD 1 234.50",
            "1234.5 EUR",
            "€1.234,5",
            "1'234.50",
            "1\u{a0}234,50",
            "+1234.50",
            "1234.500",
            "usd1234.5",
        ] {
            assert_eq!(amt(s).as_deref(), Some("1234.5"), "{s}");
        }
        assert_eq!(
            normalize(&json!(1234.5), DateOrder::DayFirst),
            Norm::Number("1234.5".into())
        );
        assert_eq!(
            normalize(&json!("1,234.50"), DateOrder::DayFirst),
            normalize(&json!(1234.50), DateOrder::DayFirst)
        );
    }

    #[test]
    fn amount_signs_and_edge_cases() {
        assert_eq!(amt("-12.00").as_deref(), Some("-12"));
        assert_eq!(amt("(12.00)").as_deref(), Some("-12"));
        assert_eq!(amt("12.00-").as_deref(), Some("-12"));
        assert_eq!(amt("-$12").as_deref(), Some("-12"));
        assert_eq!(amt("$-12").as_deref(), Some("-12"));
        assert_eq!(amt("−0.00").as_deref(), Some("0"));
        assert_eq!(amt("007").as_deref(), Some("7"));
        assert_eq!(amt("0.05").as_deref(), Some("0.05"));
        // A lone comma before three digits groups thousands, otherwise it is decimal.
        assert_eq!(amt("1,234").as_deref(), Some("1234"));
        assert_eq!(amt("12,5").as_deref(), Some("12.5"));
        assert_eq!(amt("1.234").as_deref(), Some("1.234"));
        assert_eq!(amt("1.234.567").as_deref(), Some("1234567"));
        assert_eq!(amt("1,234,567.89").as_deref(), Some("1234567.89"));
        // Not numbers.
        for s in [
            "",
            "abc",
            "12 34",
            "1,23,4",
            "1.2.3,4,5",
            "INV-0012",
            "1..2",
            ".5",
            "12a",
            "$",
            "1,234 567",
            "pay 123",
            "INV 123",
            "123 abc",
        ] {
            assert_eq!(amt(s), None, "{s}");
        }
    }

    #[test]
    fn json_numbers_with_exponents() {
        assert_eq!(canonical_plain_number("1e3").as_deref(), Some("1000"));
        assert_eq!(canonical_plain_number("1.5E-3").as_deref(), Some("0.0015"));
        assert_eq!(canonical_plain_number("-0.0").as_deref(), Some("0"));
        assert_eq!(canonical_plain_number("120").as_deref(), Some("120"));
        assert_eq!(canonical_plain_number("1e999"), None);
    }

    #[test]
    fn dates_in_several_formats() {
        let d = DateOrder::DayFirst;
        for s in [
            "2024-03-05",
            "2024/03/05",
            "2024.3.5",
            "05/03/2024",
            "5.3.2024",
            "05-03-2024",
            "5 Mar 2024",
            "5-Mar-2024",
            "5th March 2024",
            "March 5, 2024",
            "Mar 5 2024",
            "  MARCH 5, 2024 ",
        ] {
            assert_eq!(parse_date(s, d).as_deref(), Some("2024-03-05"), "{s}");
        }
        let m = DateOrder::MonthFirst;
        assert_eq!(parse_date("03/05/2024", m).as_deref(), Some("2024-03-05"));
        assert_eq!(parse_date("03/05/2024", d).as_deref(), Some("2024-05-03"));
        // ISO and month-name forms do not depend on the convention.
        assert_eq!(parse_date("5 Mar 2024", m).as_deref(), Some("2024-03-05"));
        assert_eq!(parse_date("2024-03-05", m).as_deref(), Some("2024-03-05"));
        // Impossible or ambiguous-beyond-repair dates are not dates.
        for s in [
            "2023-02-29",
            "31/04/2024",
            "13/13/2024",
            "5 Foo 2024",
            "05/03/24",
            "2024-03",
            "hello",
        ] {
            assert_eq!(parse_date(s, d), None, "{s}");
        }
        assert_eq!(parse_date("2024-02-29", d).as_deref(), Some("2024-02-29"));
        assert_eq!(
            normalize(&json!("March 5, 2024"), d),
            Norm::Date("2024-03-05".into())
        );
    }

    #[test]
    fn strings_fold_case_and_whitespace() {
        let d = DateOrder::DayFirst;
        assert_eq!(
            normalize(&json!("  ACME\t  Corp\n"), d),
            Norm::Text("acme corp".into())
        );
        assert_eq!(
            normalize(&json!("Acme Corp"), d),
            normalize(&json!("acme   corp"), d)
        );
        assert_ne!(
            normalize(&json!("Acme Corp"), d),
            normalize(&json!("Acme Co"), d)
        );
        // Null-valued keys vanish from objects.
        assert_eq!(
            normalize(&json!({"a": null, "b": "X"}), d),
            normalize(&json!({"b": "x"}), d)
        );
    }

    #[test]
    fn anls_similarity() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(nls("ACME Corp", "acme corp", 0.5), 1.0);
        // One edit in ten characters: 0.9.
        assert!((nls("acme corpx", "acme corpy", 0.5) - 0.9).abs() < 1e-12);
        // Half or more wrong: 0.
        assert_eq!(nls("abcd", "wxyz", 0.5), 0.0);
        assert_eq!(nls("ab", "ax", 0.5), 0.0);
        assert_eq!(nls("", "", 0.5), 1.0);
    }
}

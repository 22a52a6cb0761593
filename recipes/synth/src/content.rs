//! What a document says: random but consistent values (totals add up), the
//! ground-truth target (normalized: ISO dates, amounts as "1234.50" strings,
//! ISO currency codes) and the printed strings (in the document's date and
//! currency formats).

use serde_json::{json, Map, Value};

use crate::rng::Rng;
use crate::DocType;

const COMPANY: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Northwind",
    "Contoso",
    "Fabrikam",
    "Tailspin",
    "Blue Harbor",
    "Silverline",
    "Redwood",
    "Granite",
    "Summit",
    "Pioneer",
    "Atlas",
    "Nimbus",
    "Vertex",
    "Orion",
    "Cobalt",
    "Maple",
    "Crescent",
    "Lumen",
    "Keystone",
    "Evergreen",
];
const COMPANY_SUFFIX: &[&str] = &[
    "Ltd", "GmbH", "Inc.", "LLC", "S.A.", "B.V.", "& Co.", "Corp.", "Trading", "Supplies",
];
const MERCHANT: &[&str] = &[
    "Corner Cafe",
    "FreshMart",
    "City Books",
    "Green Grocer",
    "Metro Pharmacy",
    "Sunny Bakery",
    "Quick Fuel",
    "Tech Hub",
    "Daily Deli",
    "Blue Bottle",
    "Market Hall",
    "Noodle Bar",
];
const BANK: &[&str] = &[
    "First National Bank",
    "Union Savings",
    "Alpine Credit",
    "Harbor Trust",
    "Crown Bank",
    "Meridian Bank",
    "Northern Mutual",
    "Civic Bank",
];
const FIRST: &[&str] = &[
    "Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kara",
    "Liam", "Maya", "Noah", "Olga", "Paul",
];
const LAST: &[&str] = &[
    "Smith", "Müller", "García", "Novak", "Rossi", "Kim", "Okafor", "Dubois", "Jensen", "Silva",
    "Tanaka", "Brown", "Weber", "Costa",
];
const PRODUCT: &[&str] = &[
    "Steel bolts M8",
    "Printer paper A4",
    "Consulting hours",
    "Office chairs",
    "LED panels",
    "Cable ties",
    "Software licence",
    "Maintenance fee",
    "Shipping",
    "Safety gloves",
    "Toner cartridge",
    "Laptop stand",
    "Desk lamp",
    "Copper wire 2mm",
    "Hydraulic pump",
    "Cleaning service",
    "Pallet rental",
    "Network switch",
];
const GOODS: &[&str] = &[
    "Coffee",
    "Croissant",
    "Milk 1L",
    "Bread",
    "Apples",
    "Sandwich",
    "Water",
    "Notebook",
    "Pen set",
    "Bananas",
    "Cheese",
    "Orange juice",
    "Soup",
    "Tea",
    "Batteries",
];
const TX: &[&str] = &[
    "Card payment GROCERY",
    "Salary ACME",
    "Transfer to savings",
    "ATM withdrawal",
    "Rent payment",
    "Utility bill",
    "Online shop",
    "Restaurant",
    "Interest",
    "Insurance premium",
    "Refund",
    "Phone bill",
];
const STREET: &[&str] = &[
    "Main", "Oak", "Market", "High", "Station", "Park", "Mill", "Church",
];
const CITY: &[&str] = &[
    "Springfield",
    "Berlin",
    "Lyon",
    "Leeds",
    "Porto",
    "Utrecht",
    "Zurich",
    "Austin",
];
const PAYMENT: &[&str] = &["Cash", "Visa", "Mastercard", "Amex", "Debit card"];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A currency: ISO code and how its amounts are decorated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Currency {
    code: &'static str,
    symbol: &'static str,
}

const CURRENCIES: &[Currency] = &[
    Currency {
        code: "USD",
        symbol: "$",
    },
    Currency {
        code: "EUR",
        symbol: "€",
    },
    Currency {
        code: "GBP",
        symbol: "£",
    },
    Currency {
        code: "CHF",
        symbol: "CHF",
    },
    Currency {
        code: "CAD",
        symbol: "CA$",
    },
];

/// How dates are printed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum DateStyle {
    /// 2024-03-15
    Iso,
    /// 15/03/2024
    Dmy,
    /// 03/15/2024
    Mdy,
    /// 15.03.2024
    Dotted,
    /// 15 Mar 2024
    DayMon,
    /// March 15, 2024
    MonthDay,
}

const DATE_STYLES: &[DateStyle] = &[
    DateStyle::Iso,
    DateStyle::Dmy,
    DateStyle::Mdy,
    DateStyle::Dotted,
    DateStyle::DayMon,
    DateStyle::MonthDay,
];

/// How amounts are printed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MoneyStyle {
    /// 1234.56
    Plain,
    /// $1,234.56
    UsSymbol,
    /// 1.234,56 €
    EuSymbol,
    /// USD 1,234.56
    CodePrefix,
    /// 1 234,56 CHF
    CodeSuffix,
}

const MONEY_STYLES: &[MoneyStyle] = &[
    MoneyStyle::Plain,
    MoneyStyle::UsSymbol,
    MoneyStyle::EuSymbol,
    MoneyStyle::CodePrefix,
    MoneyStyle::CodeSuffix,
];

/// Days since 1970-01-01 → (year, month, day) (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A date as days since the epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Date(i64);

impl Date {
    fn random(r: &mut Rng) -> Self {
        // 2019-01-01 .. 2026-12-31
        Date(r.range(17_897, 20_818))
    }
    fn plus(self, days: i64) -> Self {
        Date(self.0 + days)
    }
    /// ISO form, as targets store it.
    pub fn iso(self) -> String {
        let (y, m, d) = civil(self.0);
        format!("{y:04}-{m:02}-{d:02}")
    }
    /// As printed in `style`.
    pub fn print(self, style: DateStyle) -> String {
        let (y, m, d) = civil(self.0);
        let name = MONTHS[(m - 1) as usize];
        match style {
            DateStyle::Iso => self.iso(),
            DateStyle::Dmy => format!("{d:02}/{m:02}/{y}"),
            DateStyle::Mdy => format!("{m:02}/{d:02}/{y}"),
            DateStyle::Dotted => format!("{d:02}.{m:02}.{y}"),
            DateStyle::DayMon => format!("{d} {} {y}", &name[..3]),
            DateStyle::MonthDay => format!("{name} {d}, {y}"),
        }
    }
}

/// Cents → "1234.56" (the target form).
pub(crate) fn money_target(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

fn group(mut n: u64, sep: &str) -> String {
    let mut parts = Vec::new();
    loop {
        if n < 1000 {
            parts.push(n.to_string());
            break;
        }
        parts.push(format!("{:03}", n % 1000));
        n /= 1000;
    }
    parts.reverse();
    parts.join(sep)
}

/// The formats one document uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Formats {
    pub date: DateStyle,
    pub money: MoneyStyle,
    pub currency: Currency,
}

impl Formats {
    fn random(r: &mut Rng, plain: bool) -> Self {
        let currency = r.pick(CURRENCIES);
        if plain {
            return Formats {
                date: DateStyle::Iso,
                money: MoneyStyle::Plain,
                currency,
            };
        }
        Formats {
            date: r.pick(DATE_STYLES),
            money: r.pick(MONEY_STYLES),
            currency,
        }
    }

    /// An amount as printed.
    pub fn money(&self, cents: i64) -> String {
        let sign = if cents < 0 { "-" } else { "" };
        let c = cents.unsigned_abs();
        let (units, frac) = (c / 100, c % 100);
        let code = self.currency.code;
        let sym = self.currency.symbol;
        match self.money {
            MoneyStyle::Plain => format!("{sign}{units}.{frac:02}"),
            MoneyStyle::UsSymbol => format!("{sign}{sym}{}.{frac:02}", group(units, ",")),
            MoneyStyle::EuSymbol => format!("{sign}{},{frac:02} {sym}", group(units, ".")),
            MoneyStyle::CodePrefix => format!("{code} {sign}{}.{frac:02}", group(units, ",")),
            MoneyStyle::CodeSuffix => format!("{sign}{},{frac:02} {code}", group(units, " ")),
        }
    }

    /// Whether amounts alone do not show the currency.
    pub fn currency_hidden(&self) -> bool {
        self.money == MoneyStyle::Plain
    }
}

/// Everything a document shows, keyed by schema field names.
#[derive(Debug, Clone)]
pub(crate) struct Content {
    /// The issuing party (vendor, merchant, bank, buyer).
    pub issuer: String,
    /// Address lines under the issuer (not part of the target).
    pub issuer_lines: Vec<String>,
    /// The other party: (target field or "" for a distractor, name, lines).
    pub party: Option<(&'static str, String, Vec<String>)>,
    /// Key/value fields (target field, printed value).
    pub fields: Vec<(&'static str, String)>,
    /// Item table column keys.
    pub columns: &'static [&'static str],
    /// Item rows: printed cells in `columns` order.
    pub items: Vec<Vec<String>>,
    /// Totals block (target field or a label key, printed value).
    pub totals: Vec<(&'static str, String)>,
    /// The full ground truth.
    pub target: Map<String, Value>,
}

fn company(r: &mut Rng) -> String {
    format!("{} {}", r.pick(COMPANY), r.pick(COMPANY_SUFFIX))
}

fn person(r: &mut Rng) -> String {
    format!("{} {}", r.pick(FIRST), r.pick(LAST))
}

fn address(r: &mut Rng) -> Vec<String> {
    vec![
        format!("{} {} Street", r.range(1, 240), r.pick(STREET)),
        format!("{} {}", r.range(10_000, 99_999), r.pick(CITY)),
    ]
}

fn digits(r: &mut Rng, n: u32) -> String {
    let lo = 10i64.pow(n - 1);
    r.range(lo, lo * 10 - 1).to_string()
}

/// Generates the content of one document. `short` keeps values short and
/// plain (the tiny profile): digit-only numbers, ISO dates, plain amounts,
/// one to three items.
pub(crate) fn generate(doc_type: DocType, r: &mut Rng, short: bool) -> Content {
    let f = Formats::random(r, short);
    let cur = f.currency.code;
    let max_items = if short { 3 } else { 7 };
    match doc_type {
        DocType::Invoice | DocType::PurchaseOrder => {
            let n_items = r.range(1, max_items);
            let mut items = Vec::new();
            let mut rows = Vec::new();
            let mut subtotal = 0i64;
            let price_max = if short { 9_999 } else { 250_000 };
            for _ in 0..n_items {
                let desc = r.pick(PRODUCT);
                let qty = r.range(1, if short { 9 } else { 40 });
                let unit = r.range(100, price_max);
                let amount = qty * unit;
                subtotal += amount;
                items.push(json!({"description": desc, "qty": qty, "unit_price": money_target(unit), "amount": money_target(amount)}));
                rows.push(vec![
                    desc.to_string(),
                    qty.to_string(),
                    f.money(unit),
                    f.money(amount),
                ]);
            }
            let date = Date::random(r);
            let later = date.plus(r.pick(&[7, 14, 15, 30, 45, 60]));
            let issuer = company(r);
            if doc_type == DocType::Invoice {
                let rate = r.pick(&[0i64, 5, 7, 10, 19, 20]);
                let tax = (subtotal * rate + 50) / 100;
                let total = subtotal + tax;
                let number = if short {
                    digits(r, 5)
                } else {
                    match r.below(4) {
                        0 => format!("INV-{}", digits(r, 5)),
                        1 => format!(
                            "INV-{}-{:04}",
                            date.iso().get(..4).unwrap_or("2024"),
                            r.range(1, 9999)
                        ),
                        2 => format!("{}{}", r.pick(&["A", "B", "F"]), digits(r, 6)),
                        _ => digits(r, 7),
                    }
                };
                let mut target = Map::new();
                target.insert("vendor".into(), json!(issuer));
                target.insert("invoice_number".into(), json!(number));
                target.insert("date".into(), json!(date.iso()));
                target.insert("due_date".into(), json!(later.iso()));
                target.insert("currency".into(), json!(cur));
                target.insert("subtotal".into(), json!(money_target(subtotal)));
                target.insert("tax".into(), json!(money_target(tax)));
                target.insert("total".into(), json!(money_target(total)));
                target.insert("line_items".into(), Value::Array(items));
                let mut fields = vec![
                    ("invoice_number", number),
                    ("date", date.print(f.date)),
                    ("due_date", later.print(f.date)),
                ];
                if f.currency_hidden() || r.chance(0.3) {
                    fields.push(("currency", cur.to_string()));
                }
                Content {
                    issuer,
                    issuer_lines: address(r),
                    party: Some(("", company(r), address(r))),
                    fields,
                    columns: &["description", "qty", "unit_price", "amount"],
                    items: rows,
                    totals: vec![
                        ("subtotal", f.money(subtotal)),
                        (
                            "tax",
                            if short {
                                f.money(tax)
                            } else {
                                format!("{} ({rate}%)", f.money(tax))
                            },
                        ),
                        ("total", f.money(total)),
                    ],
                    target,
                }
            } else {
                let number = if short {
                    digits(r, 5)
                } else {
                    match r.below(3) {
                        0 => format!("PO-{}", digits(r, 5)),
                        1 => format!("PO{}", digits(r, 7)),
                        _ => format!("{}/{}", digits(r, 4), digits(r, 3)),
                    }
                };
                let supplier = company(r);
                let mut target = Map::new();
                target.insert("buyer".into(), json!(issuer));
                target.insert("supplier".into(), json!(supplier));
                target.insert("po_number".into(), json!(number));
                target.insert("date".into(), json!(date.iso()));
                target.insert("delivery_date".into(), json!(later.iso()));
                target.insert("currency".into(), json!(cur));
                target.insert("total".into(), json!(money_target(subtotal)));
                target.insert("line_items".into(), Value::Array(items));
                let mut fields = vec![
                    ("po_number", number),
                    ("date", date.print(f.date)),
                    ("delivery_date", later.print(f.date)),
                ];
                if f.currency_hidden() || r.chance(0.3) {
                    fields.push(("currency", cur.to_string()));
                }
                Content {
                    issuer,
                    issuer_lines: address(r),
                    party: Some(("supplier", supplier, address(r))),
                    fields,
                    columns: &["description", "qty", "unit_price", "amount"],
                    items: rows,
                    totals: vec![("total", f.money(subtotal))],
                    target,
                }
            }
        }
        DocType::Receipt => {
            let n_items = r.range(1, max_items);
            let mut items = Vec::new();
            let mut rows = Vec::new();
            let mut subtotal = 0i64;
            for _ in 0..n_items {
                let desc = r.pick(GOODS);
                let qty = r.range(1, if short { 3 } else { 6 });
                let amount = qty * r.range(50, 2_500);
                subtotal += amount;
                items
                    .push(json!({"description": desc, "qty": qty, "amount": money_target(amount)}));
                rows.push(vec![desc.to_string(), qty.to_string(), f.money(amount)]);
            }
            let rate = r.pick(&[0i64, 5, 7, 8, 10, 20]);
            let tax = (subtotal * rate + 50) / 100;
            let total = subtotal + tax;
            let date = Date::random(r);
            let time = format!("{:02}:{:02}", r.range(7, 22), r.range(0, 59));
            let pay = r.pick(PAYMENT);
            let merchant = r.pick(MERCHANT).to_string();
            let mut target = Map::new();
            target.insert("merchant".into(), json!(merchant));
            target.insert("date".into(), json!(date.iso()));
            target.insert("time".into(), json!(time));
            target.insert("currency".into(), json!(cur));
            target.insert("subtotal".into(), json!(money_target(subtotal)));
            target.insert("tax".into(), json!(money_target(tax)));
            target.insert("total".into(), json!(money_target(total)));
            target.insert("payment_method".into(), json!(pay));
            target.insert("line_items".into(), Value::Array(items));
            let mut fields = vec![("date", date.print(f.date)), ("time", time)];
            if f.currency_hidden() || r.chance(0.3) {
                fields.push(("currency", cur.to_string()));
            }
            Content {
                issuer: merchant,
                issuer_lines: address(r),
                party: None,
                fields,
                columns: &["description", "qty", "amount"],
                items: rows,
                totals: vec![
                    ("subtotal", f.money(subtotal)),
                    ("tax", f.money(tax)),
                    ("total", f.money(total)),
                    ("payment_method", pay.to_string()),
                ],
                target,
            }
        }
        DocType::BankStatement => {
            let start = Date::random(r);
            let end = start.plus(r.range(27, 30));
            let opening = r.range(-50_000, 2_000_000);
            let mut balance = opening;
            let n = r.range(2, if short { 3 } else { 9 });
            let mut txs = Vec::new();
            let mut rows = Vec::new();
            let mut day = 0;
            for _ in 0..n {
                day += r.range(0, 27 / n.max(1));
                let d = start.plus(day);
                let desc = r.pick(TX);
                let amount = if r.chance(0.25) {
                    r.range(1_000, 400_000)
                } else {
                    -r.range(100, 150_000)
                };
                balance += amount;
                txs.push(json!({"date": d.iso(), "description": desc, "amount": money_target(amount), "balance": money_target(balance)}));
                rows.push(vec![
                    d.print(f.date),
                    desc.to_string(),
                    f.money(amount),
                    f.money(balance),
                ]);
            }
            let holder = person(r);
            let account = if short {
                digits(r, 8)
            } else {
                match r.below(3) {
                    0 => format!("{} {} {}", digits(r, 4), digits(r, 4), digits(r, 4)),
                    1 => format!("****{}", digits(r, 4)),
                    _ => digits(r, 10),
                }
            };
            let bank = r.pick(BANK).to_string();
            let mut target = Map::new();
            target.insert("bank".into(), json!(bank));
            target.insert("account_holder".into(), json!(holder));
            target.insert("account_number".into(), json!(account));
            target.insert("period_start".into(), json!(start.iso()));
            target.insert("period_end".into(), json!(end.iso()));
            target.insert("currency".into(), json!(cur));
            target.insert("opening_balance".into(), json!(money_target(opening)));
            target.insert("closing_balance".into(), json!(money_target(balance)));
            target.insert("transactions".into(), Value::Array(txs));
            let mut fields = vec![
                ("account_number", account),
                ("period_start", start.print(f.date)),
                ("period_end", end.print(f.date)),
            ];
            if f.currency_hidden() || r.chance(0.3) {
                fields.push(("currency", cur.to_string()));
            }
            Content {
                issuer: bank,
                issuer_lines: address(r),
                party: Some(("account_holder", holder, address(r))),
                fields,
                columns: &["date", "description", "amount", "balance"],
                items: rows,
                totals: vec![
                    ("opening_balance", f.money(opening)),
                    ("closing_balance", f.money(balance)),
                ],
                target,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_money_print_as_documented() {
        let d = Date(19_797); // 2024-03-15
        assert_eq!(d.iso(), "2024-03-15");
        assert_eq!(d.print(DateStyle::Dmy), "15/03/2024");
        assert_eq!(d.print(DateStyle::Mdy), "03/15/2024");
        assert_eq!(d.print(DateStyle::Dotted), "15.03.2024");
        assert_eq!(d.print(DateStyle::DayMon), "15 Mar 2024");
        assert_eq!(d.print(DateStyle::MonthDay), "March 15, 2024");
        assert_eq!(Date(0).iso(), "1970-01-01");
        assert_eq!(Date(11_016).iso(), "2000-02-29");
        let f = |money, currency| Formats {
            date: DateStyle::Iso,
            money,
            currency,
        };
        let eur = CURRENCIES[1];
        let usd = CURRENCIES[0];
        let chf = CURRENCIES[3];
        assert_eq!(f(MoneyStyle::Plain, eur).money(123_456_789), "1234567.89");
        assert_eq!(
            f(MoneyStyle::UsSymbol, usd).money(123_456_789),
            "$1,234,567.89"
        );
        assert_eq!(f(MoneyStyle::UsSymbol, usd).money(-4_520), "-$45.20");
        assert_eq!(f(MoneyStyle::EuSymbol, eur).money(123_456), "1.234,56 €");
        assert_eq!(
            f(MoneyStyle::CodePrefix, usd).money(100_000),
            "USD 1,000.00"
        );
        assert_eq!(
            f(MoneyStyle::CodeSuffix, chf).money(123_456),
            "1 234,56 CHF"
        );
        assert_eq!(money_target(-5), "-0.05");
        assert_eq!(money_target(123_400), "1234.00");
    }
}

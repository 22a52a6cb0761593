//! Layout families: where blocks sit, label wording, field order, table
//! column order and rules, fonts. Four families per document type
//! (`invoice-a` … `invoice-d`), each drawn by the standard renderer (full
//! pages) and by the tiny renderer (a few large fields on a small card).

use crate::content::Content;
use crate::render::{Canvas, FontId};
use crate::rng::Rng;
use crate::{DocType, SynthConfig};

/// Horizontal placement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Align {
    Left,
    Center,
    Right,
}

/// One layout family.
#[derive(Debug)]
pub(crate) struct Family {
    /// `invoice-a` …
    pub name: &'static str,
    /// Its document type.
    pub doc_type: DocType,
    /// 0..=3 (a..d): picks label wording and ordering variants.
    pub variant: usize,
    /// Body font.
    pub font: FontId,
    /// Title text.
    pub title: &'static str,
    /// Title placement.
    pub title_align: Align,
    /// Key/value block in a right-hand column (else below the issuer).
    pub kv_right: bool,
    /// Labels above values (else `Label: value` on one line).
    pub stacked: bool,
    /// Table column order (indices into the content's columns).
    pub col_order: &'static [usize],
    /// Ruled table.
    pub ruled: bool,
    /// Totals block flush right (else left).
    pub totals_right: bool,
}

macro_rules! fam {
    ($name:literal, $t:ident, $v:literal, $font:ident, $title:literal, $ta:ident, $kvr:literal, $st:literal, $cols:expr, $ruled:literal, $tr:literal) => {
        Family {
            name: $name,
            doc_type: DocType::$t,
            variant: $v,
            font: FontId::$font,
            title: $title,
            title_align: Align::$ta,
            kv_right: $kvr,
            stacked: $st,
            col_order: $cols,
            ruled: $ruled,
            totals_right: $tr,
        }
    };
}

/// Every layout family.
pub(crate) static FAMILIES: &[Family] = &[
    fam!(
        "invoice-a",
        Invoice,
        0,
        Mono,
        "INVOICE",
        Right,
        true,
        false,
        &[0, 1, 2, 3],
        true,
        true
    ),
    fam!(
        "invoice-b",
        Invoice,
        1,
        Serif,
        "Tax Invoice",
        Left,
        false,
        true,
        &[1, 0, 2, 3],
        false,
        true
    ),
    fam!(
        "invoice-c",
        Invoice,
        2,
        Mono,
        "Invoice",
        Center,
        false,
        false,
        &[0, 2, 1, 3],
        true,
        false
    ),
    fam!(
        "invoice-d",
        Invoice,
        3,
        Serif,
        "BILL",
        Left,
        true,
        true,
        &[0, 1, 2, 3],
        false,
        false
    ),
    fam!(
        "receipt-a",
        Receipt,
        0,
        Mono,
        "RECEIPT",
        Center,
        false,
        false,
        &[0, 1, 2],
        false,
        true
    ),
    fam!(
        "receipt-b",
        Receipt,
        1,
        Serif,
        "Sales Receipt",
        Left,
        false,
        true,
        &[1, 0, 2],
        true,
        true
    ),
    fam!(
        "receipt-c",
        Receipt,
        2,
        Mono,
        "Thank you!",
        Center,
        false,
        false,
        &[0, 2, 1],
        true,
        false
    ),
    fam!(
        "receipt-d",
        Receipt,
        3,
        Serif,
        "Till Slip",
        Right,
        false,
        false,
        &[0, 1, 2],
        false,
        false
    ),
    fam!(
        "bank_statement-a",
        BankStatement,
        0,
        Mono,
        "ACCOUNT STATEMENT",
        Left,
        true,
        false,
        &[0, 1, 2, 3],
        true,
        true
    ),
    fam!(
        "bank_statement-b",
        BankStatement,
        1,
        Serif,
        "Statement of Account",
        Center,
        false,
        true,
        &[0, 1, 2, 3],
        false,
        true
    ),
    fam!(
        "bank_statement-c",
        BankStatement,
        2,
        Mono,
        "Bank Statement",
        Right,
        false,
        false,
        &[1, 0, 3, 2],
        true,
        false
    ),
    fam!(
        "bank_statement-d",
        BankStatement,
        3,
        Serif,
        "Monthly Statement",
        Left,
        true,
        true,
        &[0, 1, 3, 2],
        false,
        false
    ),
    fam!(
        "purchase_order-a",
        PurchaseOrder,
        0,
        Mono,
        "PURCHASE ORDER",
        Right,
        true,
        false,
        &[0, 1, 2, 3],
        true,
        true
    ),
    fam!(
        "purchase_order-b",
        PurchaseOrder,
        1,
        Serif,
        "Purchase Order",
        Left,
        false,
        true,
        &[1, 0, 2, 3],
        false,
        true
    ),
    fam!(
        "purchase_order-c",
        PurchaseOrder,
        2,
        Mono,
        "ORDER",
        Center,
        false,
        false,
        &[0, 2, 1, 3],
        true,
        false
    ),
    fam!(
        "purchase_order-d",
        PurchaseOrder,
        3,
        Serif,
        "PO",
        Left,
        true,
        true,
        &[0, 1, 3, 2],
        false,
        false
    ),
];

/// The label of `key` in variant `v` (0..=3).
pub(crate) fn label(key: &str, v: usize) -> &'static str {
    let set: [&'static str; 4] = match key {
        "invoice_number" => ["Invoice No.", "Invoice #", "Number", "Ref"],
        "po_number" => ["PO No.", "Order #", "Order number", "Ref"],
        "date" => ["Date", "Issued", "Invoice date", "Dated"],
        "due_date" => ["Due date", "Payment due", "Due", "Pay by"],
        "delivery_date" => ["Delivery", "Deliver by", "Delivery date", "Expected"],
        "currency" => ["Currency", "Curr.", "Currency", "CCY"],
        "time" => ["Time", "At", "Time", "Hour"],
        "account_number" => ["Account", "Account no.", "IBAN/Acct", "Acct"],
        "period_start" => ["From", "Period start", "Start", "Opening date"],
        "period_end" => ["To", "Period end", "End", "Closing date"],
        "subtotal" => ["Subtotal", "Net", "Sub-total", "Net amount"],
        "tax" => ["Tax", "VAT", "Sales tax", "GST"],
        "total" => ["Total", "Amount due", "TOTAL", "Grand total"],
        "opening_balance" => ["Opening balance", "Balance b/f", "Start balance", "Opening"],
        "closing_balance" => ["Closing balance", "Balance c/f", "End balance", "Closing"],
        "payment_method" => ["Paid by", "Payment", "Tender", "Method"],
        "supplier" => ["Supplier", "Vendor", "To supplier", "Supplied by"],
        "account_holder" => ["Account holder", "Customer", "Holder", "Name"],
        "" => ["Bill to", "Customer", "Invoice to", "Sold to"],
        "description" => ["Description", "Item", "Details", "Article"],
        "qty" => ["Qty", "Quantity", "Units", "Qty"],
        "unit_price" => ["Unit price", "Price", "Rate", "Each"],
        "amount" => ["Amount", "Line total", "Amount", "Sum"],
        "balance" => ["Balance", "Balance", "Running", "Bal."],
        "merchant" => ["Merchant", "Store", "Shop", "Seller"],
        "vendor" => ["Vendor", "From", "Seller", "Issuer"],
        "buyer" => ["Buyer", "Ordered by", "Customer", "Purchaser"],
        "bank" => ["Bank", "Institution", "Bank", "Branch"],
        _ => ["", "", "", ""],
    };
    set[v % 4]
}

/// Short labels for the tiny profile.
fn tiny_label(key: &str, v: usize) -> &'static str {
    let set: [&'static str; 4] = match key {
        "invoice_number" | "po_number" => ["No", "Ref", "NUMBER", "#"],
        "account_number" => ["Acct", "No", "ACCOUNT", "#"],
        "date" | "period_end" | "period_start" => ["Date", "On", "DATE", "Day"],
        "due_date" | "delivery_date" => ["Due", "By", "DUE", "Until"],
        "time" => ["Time", "At", "TIME", "Hr"],
        "total" | "closing_balance" => ["Total", "Sum", "TOTAL", "Amt"],
        "subtotal" | "opening_balance" => ["Net", "Sub", "NET", "Base"],
        "tax" => ["Tax", "VAT", "TAX", "GST"],
        "currency" => ["Cur", "In", "CURRENCY", "$"],
        _ => ["", "", "", ""],
    };
    set[v % 4]
}

/// The printed value of a target field, if the document shows it as a scalar.
fn printed<'a>(c: &'a Content, key: &str) -> Option<&'a str> {
    c.fields
        .iter()
        .chain(c.totals.iter())
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
        .or_else(|| match c.party.as_ref() {
            Some((k, name, _)) if *k == key => Some(name.as_str()),
            _ => None,
        })
        .or_else(|| {
            matches!(key, "vendor" | "merchant" | "bank" | "buyer").then_some(c.issuer.as_str())
        })
}

fn jitter(r: &mut Rng, amount: i32) -> i32 {
    r.range(-i64::from(amount), i64::from(amount)) as i32
}

fn align_x(canvas: &Canvas, align: Align, w: i32, margin: i32) -> i32 {
    let cw = canvas.width() as i32;
    match align {
        Align::Left => margin,
        Align::Center => (cw - w) / 2,
        Align::Right => cw - margin - w,
    }
}

/// Draws a full-page document.
pub(crate) fn standard(cfg: &SynthConfig, fam: &Family, c: &Content, r: &mut Rng) -> Canvas {
    let receipt = fam.doc_type == DocType::Receipt;
    let width = if receipt {
        (cfg.width * 5 / 8).max(64)
    } else {
        cfg.width
    };
    let height = if receipt {
        (cfg.height * 3 / 4).max(64)
    } else {
        cfg.height
    };
    let paper = r.range(238, 255) as u8;
    let ink = r.range(0, 50) as u8;
    let mut cv = Canvas::new(width, height, paper, ink);
    let px = cfg.font_px * (1.0 + cfg.font_jitter * (r.unit() * 2.0 - 1.0));
    let font = fam.font;
    let bold = FontId::MonoBold;
    let lh = cv.line_height(font, px);
    let margin = (width as f32 * 0.06) as i32 + jitter(r, 6);
    let w = width as i32;
    let mut y = margin + jitter(r, 4);

    // Title.
    let tpx = px * 1.7;
    let tw = cv.measure(fam.title, bold, tpx);
    let tx = align_x(&cv, fam.title_align, tw, margin);
    cv.text(tx, y, fam.title, bold, tpx);
    y += cv.line_height(bold, tpx) + lh / 2 + jitter(r, 3);

    // Issuer block.
    let top = y;
    let ipx = px * 1.15;
    let issuer_align = if receipt { Align::Center } else { Align::Left };
    let iw = cv.measure(&c.issuer, bold, ipx);
    let ix = align_x(&cv, issuer_align, iw, margin);
    cv.text(ix, y, &c.issuer, bold, ipx);
    y += cv.line_height(bold, ipx);
    for line in &c.issuer_lines {
        let lw = cv.measure(line, font, px * 0.9);
        let lx = align_x(&cv, issuer_align, lw, margin);
        cv.text(lx, y, line, font, px * 0.9);
        y += cv.line_height(font, px * 0.9);
    }
    y += lh / 2;

    // Key/value block.
    let kv: Vec<(String, String)> = c
        .fields
        .iter()
        .map(|(k, v)| (label(k, fam.variant).to_string(), v.clone()))
        .collect();
    let kv_w = kv
        .iter()
        .map(|(l, v)| {
            if fam.stacked {
                cv.measure(l, font, px * 0.8).max(cv.measure(v, font, px))
            } else {
                cv.measure(&format!("{l}: {v}"), font, px)
            }
        })
        .max()
        .unwrap_or(0);
    let (kx, mut ky) = if fam.kv_right && !receipt {
        ((w - margin - kv_w).max(w / 2), top)
    } else {
        (margin + jitter(r, 4), y)
    };
    for (l, v) in &kv {
        if fam.stacked {
            cv.text(kx, ky, l, font, px * 0.8);
            ky += cv.line_height(font, px * 0.8);
            cv.text(kx, ky, v, font, px);
            ky += lh + 2;
        } else {
            cv.text(kx, ky, &format!("{l}: {v}"), font, px);
            ky += lh + 1;
        }
    }
    y = (if fam.kv_right && !receipt {
        y.max(ky)
    } else {
        ky
    }) + lh / 2;

    // The other party.
    if let Some((key, name, lines)) = &c.party {
        cv.text(margin, y, label(key, fam.variant), bold, px * 0.9);
        y += cv.line_height(bold, px * 0.9);
        cv.text(margin, y, name, font, px);
        y += lh;
        for line in lines {
            cv.text(margin, y, line, font, px * 0.9);
            y += cv.line_height(font, px * 0.9);
        }
        y += lh / 2 + jitter(r, 4).abs();
    }

    // Item table: fit the columns into the width.
    let cols: Vec<usize> = fam
        .col_order
        .iter()
        .copied()
        .filter(|&i| i < c.columns.len())
        .collect();
    let heads: Vec<&str> = cols
        .iter()
        .map(|&i| label(c.columns[i], fam.variant))
        .collect();
    let gap = (px * 1.5) as i32;
    let avail = w - 2 * margin;
    let mut tpx_ = px;
    let mut widths: Vec<i32>;
    loop {
        widths = cols
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                c.items
                    .iter()
                    .map(|row| cv.measure(&row[i], font, tpx_))
                    .chain(std::iter::once(cv.measure(heads[j], bold, tpx_)))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let total: i32 = widths.iter().sum::<i32>() + gap * (cols.len() as i32 - 1);
        if total <= avail || tpx_ < 6.0 {
            break;
        }
        tpx_ *= (avail as f32 / total as f32).max(0.5) * 0.98;
    }
    let tlh = cv.line_height(font, tpx_);
    let numeric = |key: &str| matches!(key, "qty" | "unit_price" | "amount" | "balance");
    let mut xs = Vec::new();
    let mut x = margin;
    for wd in &widths {
        xs.push(x);
        x += wd + gap;
    }
    if fam.ruled {
        cv.hline(margin, w - margin, y - 3, 1);
    }
    for (j, &i) in cols.iter().enumerate() {
        let hw = cv.measure(heads[j], bold, tpx_);
        let hx = if numeric(c.columns[i]) {
            xs[j] + widths[j] - hw
        } else {
            xs[j]
        };
        cv.text(hx, y, heads[j], bold, tpx_);
    }
    y += tlh + 2;
    if fam.ruled {
        cv.hline(margin, w - margin, y, 1);
        y += 3;
    }
    for row in &c.items {
        for (j, &i) in cols.iter().enumerate() {
            let cw = cv.measure(&row[i], font, tpx_);
            let cx = if numeric(c.columns[i]) {
                xs[j] + widths[j] - cw
            } else {
                xs[j]
            };
            cv.text(cx, y, &row[i], font, tpx_);
        }
        y += tlh + 2;
    }
    if fam.ruled {
        cv.hline(margin, w - margin, y + 1, 1);
    }
    y += lh / 2 + 4;

    // Totals.
    let lines: Vec<String> = c
        .totals
        .iter()
        .map(|(k, v)| format!("{}: {v}", label(k, fam.variant)))
        .collect();
    let tw = lines
        .iter()
        .map(|l| cv.measure(l, font, px))
        .max()
        .unwrap_or(0);
    let tx = if fam.totals_right {
        w - margin - tw
    } else {
        margin
    };
    for (n, l) in lines.iter().enumerate() {
        let f = if c.totals[n].0 == "total" || c.totals[n].0 == "closing_balance" {
            bold
        } else {
            font
        };
        cv.text(tx, y, l, f, px);
        y += lh + 1;
    }
    y += lh;
    let footer = match fam.variant {
        0 => "Thank you for your business.",
        1 => "Please quote the reference with your payment.",
        2 => "Questions? Contact our accounts team.",
        _ => "This document was generated electronically.",
    };
    if y + lh < height as i32 - margin / 2 {
        cv.text(margin, y, footer, font, px * 0.8);
    }
    cv
}

/// A tiny card's width, margin and base font size (jittered per card).
fn tiny_metrics(cfg: &SynthConfig, r: &mut Rng) -> (i32, i32, f32) {
    let w = cfg.width as i32;
    let base = cfg.font_px * (1.0 + cfg.font_jitter * (r.unit() * 2.0 - 1.0));
    (w, (w / 16).max(2), base)
}

/// The height of a tiny card's lines, stacked.
fn lines_height(cv: &Canvas, font: FontId, lines: &[(String, f32)]) -> i32 {
    lines.iter().map(|(_, p)| cv.line_height(font, *p)).sum()
}

/// Draws a tiny card's lines (text, font size) downwards from `y`, each shrunk
/// to fit between the margins and placed by `align` give or take 2 px; returns
/// the height below the last line.
fn draw_lines(
    cv: &mut Canvas,
    lines: Vec<(String, f32)>,
    font: FontId,
    align: Align,
    margin: i32,
    mut y: i32,
    r: &mut Rng,
) -> i32 {
    let w = cv.width() as i32;
    for (text, p) in lines {
        let mut p = p;
        let mut tw = cv.measure(&text, font, p);
        if tw > w - 2 * margin {
            p *= (w - 2 * margin) as f32 / tw as f32;
            tw = cv.measure(&text, font, p);
        }
        let x = (align_x(cv, align, tw, margin) + jitter(r, 2)).clamp(0, (w - tw).max(0));
        cv.text(x, y, &text, font, p);
        y += cv.line_height(font, p);
    }
    y
}

/// Draws the tiny profile's card: only the target's scalar fields, large,
/// placed, worded and ordered by the family.
pub(crate) fn tiny(
    cfg: &SynthConfig,
    fam: &Family,
    c: &Content,
    keys: &[&str],
    r: &mut Rng,
) -> Canvas {
    let paper = 255 - r.range(0, 6) as u8;
    let ink = r.range(0, 30) as u8;
    let mut cv = Canvas::new(cfg.width, cfg.height, paper, ink);
    let v = fam.variant;
    let mut order: Vec<&str> = keys.to_vec();
    // a: as listed; b: rotated by one; c: reversed; d: rotated by two.
    let n = order.len();
    match v {
        1 => order.rotate_left(1.min(n)),
        2 => order.reverse(),
        3 => order.rotate_left(2.min(n)),
        _ => {}
    }
    let align = [Align::Left, Align::Right, Align::Center, Align::Left][v % 4];
    let font = [
        FontId::Mono,
        FontId::MonoBold,
        FontId::Mono,
        FontId::MonoBold,
    ][v % 4];
    let stacked = v == 2;
    let (w, margin, base) = tiny_metrics(cfg, r);
    let mut lines: Vec<(String, f32)> = Vec::new();
    for k in &order {
        let Some(val) = printed(c, k) else { continue };
        let l = tiny_label(k, v);
        if stacked {
            lines.push((l.to_string(), base * 0.75));
            lines.push((val.to_string(), base));
        } else if v == 3 {
            lines.push((format!("{val} {l}"), base));
        } else {
            lines.push((format!("{l} {val}"), base));
        }
    }
    let total_h = lines_height(&cv, font, &lines);
    let spare = (cfg.height as i32 - total_h - 2 * margin).max(0);
    let y = margin + if v == 1 { spare } else { spare / 4 } + jitter(r, 2);
    if v == 3 {
        cv.hline(margin, w - margin, (y - 3).max(0), 1);
    }
    draw_lines(&mut cv, lines, font, align, margin, y, r);
    cv
}

/// Labels a freely arranged tiny card draws from. None of them is a `-d`
/// family's label, and a line may carry no label at all, so a model taught on
/// these cards must tell fields apart by what their values look like.
fn free_labels(key: &str) -> &'static [&'static str] {
    match key {
        "invoice_number" | "po_number" => &["No", "Ref", "NUMBER", "Inv", "Order", "ID", "Doc", ""],
        "account_number" => &["Acct", "No", "ACCOUNT", "Account", "ID", "Acc", ""],
        "date" | "period_end" | "period_start" => {
            &["Date", "On", "DATE", "Dated", "Issued", "Dt", ""]
        }
        "due_date" | "delivery_date" => &["Due", "By", "DUE", "Pay by", ""],
        "time" => &["Time", "At", "TIME", "Clock", "Hour", ""],
        "total" | "closing_balance" => &["Total", "Sum", "TOTAL", "Pay", "Paid", "Bal", ""],
        "subtotal" | "opening_balance" => &["Net", "Sub", "NET", "Open", ""],
        "tax" => &["Tax", "VAT", "TAX", "Levy", ""],
        "currency" => &["Cur", "In", "CURRENCY", "Ccy", ""],
        _ => &[""],
    }
}

/// Draws a tiny card with an arrangement chosen at random for this card
/// rather than by its family: field order, labels (or none), label before or
/// after the value or stacked above it, alignment, weight, vertical position
/// and an optional rule. The demo's base is pretrained on these so that its
/// reading does not depend on a layout it memorized.
pub(crate) fn tiny_free(cfg: &SynthConfig, c: &Content, keys: &[&str], r: &mut Rng) -> Canvas {
    let paper = 255 - r.range(0, 6) as u8;
    let ink = r.range(0, 30) as u8;
    let mut cv = Canvas::new(cfg.width, cfg.height, paper, ink);
    let mut order: Vec<&str> = keys.to_vec();
    for i in (1..order.len()).rev() {
        let j = r.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    // 0: label value, 1: value label, 2: label stacked above the value.
    let mode = r.below(3);
    let align = r.pick(&[Align::Left, Align::Center, Align::Right]);
    let font = r.pick(&[FontId::Mono, FontId::MonoBold]);
    let (w, margin, base) = tiny_metrics(cfg, r);
    let mut lines: Vec<(String, f32)> = Vec::new();
    for k in &order {
        let Some(val) = printed(c, k) else { continue };
        let l = r.pick(free_labels(k));
        match (mode, l.is_empty()) {
            (_, true) => lines.push((val.to_string(), base)),
            (0, false) => lines.push((format!("{l} {val}"), base)),
            (1, false) => lines.push((format!("{val} {l}"), base)),
            _ => {
                lines.push((l.to_string(), base * 0.75));
                lines.push((val.to_string(), base));
            }
        }
    }
    let total_h = lines_height(&cv, font, &lines);
    let spare = (cfg.height as i32 - total_h - 2 * margin).max(0);
    let y = margin + r.range(0, i64::from(spare) + 1) as i32;
    let rule = r.below(4);
    if rule == 1 {
        cv.hline(margin, w - margin, (y - 3).max(0), 1);
    }
    let y = draw_lines(&mut cv, lines, font, align, margin, y, r);
    if rule == 2 {
        cv.hline(margin, w - margin, (y + 1).min(cfg.height as i32 - 1), 1);
    }
    cv
}

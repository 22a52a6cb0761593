//! Field schema of each document type. A dataset may narrow it with a
//! `foundry_schema.json` at its root (`{"invoice": ["vendor", "total"], …}`),
//! which is then pinned with the shards.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{io, DatasetError, Shard};

/// Fields of each built-in document type; `line_items` / `transactions` are
/// arrays of objects with the item fields of [`item_fields`].
pub const DOC_TYPES: &[(&str, &[&str])] = &[
    (
        "invoice",
        &[
            "vendor",
            "invoice_number",
            "date",
            "due_date",
            "currency",
            "subtotal",
            "tax",
            "total",
            "line_items",
        ],
    ),
    (
        "receipt",
        &[
            "merchant",
            "date",
            "time",
            "currency",
            "subtotal",
            "tax",
            "total",
            "payment_method",
            "line_items",
        ],
    ),
    (
        "bank_statement",
        &[
            "bank",
            "account_holder",
            "account_number",
            "period_start",
            "period_end",
            "currency",
            "opening_balance",
            "closing_balance",
            "transactions",
        ],
    ),
    (
        "purchase_order",
        &[
            "buyer",
            "supplier",
            "po_number",
            "date",
            "delivery_date",
            "currency",
            "total",
            "line_items",
        ],
    ),
];

/// Fields of the items of an array field.
pub fn item_fields(doc_type: &str, field: &str) -> Option<&'static [&'static str]> {
    match (doc_type, field) {
        ("receipt", "line_items") => Some(&["description", "qty", "amount"]),
        (_, "line_items") => Some(&["description", "qty", "unit_price", "amount"]),
        ("bank_statement", "transactions") => Some(&["date", "description", "amount", "balance"]),
        _ => None,
    }
}

/// The schema rows are checked against.
#[derive(Debug, Clone)]
pub struct Schema {
    fields: BTreeMap<String, Vec<String>>,
    /// The pinned `foundry_schema.json`, when the dataset has one.
    pub file_digest: Option<Shard>,
}

/// File name of a dataset's narrowed schema.
pub const SCHEMA_FILE: &str = "foundry_schema.json";

impl Schema {
    /// The built-in schema.
    pub fn builtin() -> Self {
        Schema {
            fields: DOC_TYPES
                .iter()
                .map(|(t, f)| (t.to_string(), f.iter().map(|s| s.to_string()).collect()))
                .collect(),
            file_digest: None,
        }
    }

    /// The schema of the dataset at `root`.
    pub fn load(root: &Path) -> Result<Self, DatasetError> {
        let path = root.join(SCHEMA_FILE);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(Self::builtin());
        }
        let jail = crate::Jail::open(root).map_err(|e| io(root, e))?;
        let bytes = jail
            .read(SCHEMA_FILE, crate::MAX_META_BYTES)
            .map_err(|d| crate::denied_file(root, SCHEMA_FILE, d))?;
        let fields: BTreeMap<String, Vec<String>> = serde_json::from_slice(&bytes)
            .map_err(|e| DatasetError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(Schema {
            fields,
            file_digest: Some(Shard {
                split: "schema".into(),
                path: SCHEMA_FILE.into(),
                sha256: hex::encode(Sha256::digest(&bytes)),
                bytes: bytes.len() as u64,
                rows: 0,
            }),
        })
    }

    /// Checks that `target` has every field of `doc_type`.
    pub fn check(&self, doc_type: &str, target: &Value) -> Result<(), String> {
        let fields = self.fields.get(doc_type).ok_or_else(|| {
            format!(
                "unknown doc_type {doc_type:?} (known: {})",
                self.fields.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let obj = target
            .as_object()
            .ok_or_else(|| "target is not a JSON object".to_string())?;
        for f in fields {
            let v = obj
                .get(f)
                .ok_or_else(|| format!("target of {doc_type} lacks field {f:?}"))?;
            if let Some(items) = item_fields(doc_type, f) {
                let arr = v
                    .as_array()
                    .ok_or_else(|| format!("target field {f:?} is not an array"))?;
                for (i, it) in arr.iter().enumerate() {
                    for k in items {
                        if it.get(k).is_none() {
                            return Err(format!("target field {f}[{i}] lacks {k:?}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

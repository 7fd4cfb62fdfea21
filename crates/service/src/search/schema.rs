//! The index schema and its analyzer, and a store row as a document.
//!
//! Owns: which fields a user or an organization is found by (names, handles,
//! exact values, prefixes), and how text is split and folded, the same at
//! index and at query time. Must never: read the store or the index (the
//! callers hand rows in), or index a tombstone. See ARCHITECTURE.md.

use super::index::SearchIndex;
use crate::clerk::kind::Search;
use crate::clerk::model::Kind;
use crate::feed::FeedEntry;
use crate::store::tx::EntityRow;
use serde_json::Value;
use std::collections::HashSet;
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, STORED,
    STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
};
use tantivy::{TantivyDocument, Term};

/// The analyzer's registered name (it is part of the schema).
pub(super) const ANALYZER: &str = "clerksync_words";
/// Tokens this long (bytes) or longer are dropped, at index and at query time:
/// nobody types them, and they only bloat the term dictionary.
const MAX_TOKEN_BYTES: usize = 100;
/// Raw values (emails, usernames) longer than this are not indexed for exact match.
const MAX_EXACT_BYTES: usize = 320;
/// Phone numbers also match by their trailing digits (no country code), from this many on.
const MIN_PHONE_SUFFIX: usize = 7;
/// Word prefixes of these lengths are indexed as terms of their own (edge
/// n-grams), so "what you have typed so far" is one posting list. A prefix
/// automaton instead visits every term it matches: on a million users a
/// three-letter prefix matches tens of thousands of unique email words
/// (p99 48 ms in the bench, against 10 ms allowed). One letter is no search.
pub(super) const MIN_PREFIX_CHARS: usize = 2;
pub(super) const MAX_PREFIX_CHARS: usize = 16;

#[derive(Clone, Copy)]
pub(super) struct Fields {
    /// `{kind}:{id}`, the upsert/delete key (ids of different kinds never collide).
    pub(super) key: Field,
    pub(super) id: Field,
    pub(super) kind: Field,
    pub(super) gen: Field,
    /// Words of first name, last name (so the full name) and organization name.
    pub(super) name: Field,
    /// Words of username, email addresses, phone numbers and slug.
    pub(super) handle: Field,
    /// Raw lowercased emails, username, slug, org name, phone digits.
    pub(super) exact: Field,
    /// Prefixes (edge n-grams) of every word of `name` and `handle`.
    pub(super) prefix: Field,
}

pub(super) fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        id: b.add_text_field("id", STORED),
        kind: b.add_text_field("kind", STRING | STORED),
        gen: b.add_u64_field("gen", NumericOptions::default().set_indexed().set_fast()),
        name: b.add_text_field("name", words.clone()),
        handle: b.add_text_field("handle", words),
        exact: b.add_text_field("exact", STRING),
        // "v2": also whole-value prefixes. A new name is a new schema, so an
        // index written before is recreated and rebuilt at start-up (`open`).
        prefix: b.add_text_field("prefix_v2", STRING),
    };
    (b.build(), fields)
}

/// Splits on anything not alphanumeric (so `ada.lovelace@example.com` is four
/// words and query syntax characters are just separators), lowercases and
/// folds accents, so `Zoë` finds `zoe`.
pub(super) fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

pub(super) fn words_of(text: &str) -> Vec<String> {
    let mut a = analyzer();
    let mut stream = a.token_stream(text);
    let mut out = Vec::new();
    while let Some(t) = stream.next() {
        out.push(t.text.clone());
    }
    out
}

impl SearchIndex {
    pub(super) fn key_term(&self, kind: Kind, id: &str) -> Term {
        Term::from_field_text(self.fields.key, &format!("{}:{id}", kind.as_str()))
    }

    /// The document for a store row; None when the row is a tombstone or not a
    /// searchable kind (then the entity must not be in the index).
    pub(super) fn doc_for(&self, kind: Kind, row: &EntityRow, gen: u64) -> Option<TantivyDocument> {
        if row.deleted {
            return None;
        }
        let data: Value = row
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let f = self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.key, format!("{}:{}", kind.as_str(), row.id));
        doc.add_text(f.id, &row.id);
        doc.add_text(f.kind, kind.as_str());
        doc.add_u64(f.gen, gen);
        let s = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        };
        let mut exact = |v: &str| {
            if v.len() <= MAX_EXACT_BYTES {
                doc.add_text(f.exact, v.trim().to_lowercase());
            }
        };
        // Read leniently from the raw JSON (not the typed view): a field of an
        // unexpected type loses that field, not the whole document.
        let mut name = Vec::new();
        let mut handle = Vec::new();
        // Whole values as typed (`kwame.haddad@mail.test`, `ada lovelace`),
        // punctuation included: their prefixes match a query that stops
        // inside a word (`kwame.h`), which the word prefixes cannot.
        let mut raw: Vec<String> = Vec::new();
        match kind.spec().search {
            Search::User => {
                name.extend(s("first_name"));
                name.extend(s("last_name"));
                raw.push(name.join(" "));
                raw.extend(s("username").map(str::to_string));
                raw.extend(list_of(&data, "email_addresses", "email_address").map(str::to_string));
                if let Some(u) = s("username") {
                    handle.push(u.to_string());
                    exact(u);
                }
                for e in list_of(&data, "email_addresses", "email_address") {
                    handle.push(e.to_string());
                    exact(e);
                }
                for p in list_of(&data, "phone_numbers", "phone_number") {
                    let digits: String = p.chars().filter(char::is_ascii_digit).collect();
                    exact(p);
                    if !digits.is_empty() {
                        exact(&digits);
                        handle.push(digits.clone());
                        // Without the country code: any long enough tail.
                        for start in 1..digits.len().saturating_sub(MIN_PHONE_SUFFIX - 1) {
                            handle.push(digits[start..].to_string());
                        }
                    }
                }
            }
            Search::Organization => {
                raw.extend(s("name").map(str::to_string));
                raw.extend(s("slug").map(str::to_string));
                if let Some(n) = s("name") {
                    name.push(n);
                    exact(n);
                }
                if let Some(slug) = s("slug") {
                    handle.push(slug.to_string());
                    exact(slug);
                }
            }
            Search::No => return None,
        }
        let mut prefixes = HashSet::new();
        for text in name
            .iter()
            .copied()
            .chain(handle.iter().map(String::as_str))
        {
            for word in words_of(text) {
                let ends = word.char_indices().map(|(i, _)| i).skip(MIN_PREFIX_CHARS);
                let ends = ends.chain(std::iter::once(word.len()));
                for end in ends.take(MAX_PREFIX_CHARS + 1 - MIN_PREFIX_CHARS) {
                    prefixes.insert(word[..end].to_string());
                }
            }
        }
        for value in raw {
            let value = value.trim().to_lowercase();
            let ends = value.char_indices().map(|(i, _)| i).skip(MIN_PREFIX_CHARS);
            let ends = ends.chain(std::iter::once(value.len()));
            for end in ends.take(MAX_PREFIX_CHARS + 1 - MIN_PREFIX_CHARS) {
                prefixes.insert(value[..end].to_string());
            }
        }
        for p in prefixes {
            doc.add_text(f.prefix, p);
        }
        for n in name {
            doc.add_text(f.name, n);
        }
        for h in handle {
            doc.add_text(f.handle, h);
        }
        Some(doc)
    }
}

/// The top-level record fields [`SearchIndex::doc_for`] reads for a kind, and
/// so the only ones whose change can change its document. Kept next to
/// `doc_for`: a field it starts reading must be added here, or updates to it
/// are skipped (`fields_read_by_doc_for_are_listed` checks).
pub(super) fn indexed_fields(search: Search) -> &'static [&'static str] {
    match search {
        Search::No => &[],
        Search::User => &[
            "first_name",
            "last_name",
            "username",
            "email_addresses",
            "phone_numbers",
        ],
        Search::Organization => &["name", "slug"],
    }
}

/// Whether a committed change can change what the index holds: a create or a
/// delete always can; an update only when it changed a field the kind's
/// document is made of. Three in four user updates in real traffic touch only
/// `last_active_at` / `last_sign_in_at` / `updated_at`, and skipping them
/// saves reading, parsing and re-indexing the whole record. An update that
/// names no field at all (not written by this version) is not skipped.
pub(super) fn touches_index(entry: &FeedEntry) -> bool {
    let search = entry.kind.spec().search;
    if search == Search::No {
        return false;
    }
    if entry.operation != "update" || entry.changed_fields.is_empty() {
        return true;
    }
    let indexed = indexed_fields(search);
    entry
        .changed_fields
        .iter()
        .any(|f| indexed.contains(&f.as_str()))
}

/// The kinds the index holds (declared per kind: [`Kind::spec`]'s `search`).
pub(super) fn searchable() -> impl Iterator<Item = Kind> {
    Kind::ALL
        .into_iter()
        .filter(|k| k.spec().search != Search::No)
}

/// `data[list][*][field]` as strings (Clerk's email_addresses / phone_numbers).
fn list_of<'a>(data: &'a Value, list: &str, field: &'a str) -> impl Iterator<Item = &'a str> {
    data.get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |e| e.get(field).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::IndexOptions;
    use serde_json::json;
    use tantivy::schema::document::Document;

    fn row(data: &Value) -> EntityRow {
        EntityRow {
            id: "x_1".into(),
            version: 1,
            version_key: "k".into(),
            deleted: false,
            user_id: None,
            organization_id: None,
            data: Some(data.to_string()),
            synced_at: 0,
        }
    }

    /// Another value of the same shape, so `doc_for` sees a change if it reads it.
    fn changed(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(format!("{s}zz")),
            Value::Array(a) => Value::Array(a.iter().map(changed).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), changed(v))).collect())
            }
            Value::Number(n) => json!(n.as_i64().unwrap_or(0) + 7),
            Value::Bool(b) => Value::Bool(!b),
            Value::Null => json!("now set"),
        }
    }

    /// Every top-level field: a change to it changes the document exactly
    /// when `indexed_fields` lists it (so skipping the others loses nothing).
    fn check(kind: Kind, record: Value) {
        let index = SearchIndex::open(None, IndexOptions::default()).unwrap();
        let (schema, _) = schema();
        // Values of a field sorted: prefixes come out of a HashSet in any order.
        let doc = |v: &Value| {
            index.doc_for(kind, &row(v), 1).map(|d| {
                let Ok(Value::Object(fields)) = serde_json::from_str(&d.to_json(&schema)) else {
                    panic!("a document is a JSON object")
                };
                let mut out: Vec<(String, Vec<String>)> = fields
                    .into_iter()
                    .map(|(k, v)| {
                        let mut vals: Vec<String> = match v {
                            Value::Array(a) => a.iter().map(Value::to_string).collect(),
                            v => vec![v.to_string()],
                        };
                        vals.sort();
                        (k, vals)
                    })
                    .collect();
                out.sort();
                out
            })
        };
        let base = doc(&record);
        assert!(base.is_some());
        let listed = indexed_fields(kind.spec().search);
        let Value::Object(map) = &record else {
            unreachable!()
        };
        for (k, v) in map {
            let mut other = record.clone();
            other[k] = changed(v);
            let differs = doc(&other) != base;
            assert_eq!(
                differs,
                listed.contains(&k.as_str()),
                "{kind:?}.{k}: document changed = {differs}"
            );
        }
        for k in listed {
            assert!(map.contains_key(*k), "the sample record lacks {k}");
        }
    }

    #[test]
    fn fields_read_by_doc_for_are_listed() {
        check(
            Kind::User,
            json!({
                "id": "user_1", "object": "user", "first_name": "Ada", "last_name": "Lovelace",
                "username": "countess", "image_url": "https://img.test/a.png", "has_image": true,
                "primary_email_address_id": "idn_1", "primary_phone_number_id": "idn_2",
                "email_addresses": [{"id": "idn_1", "email_address": "ada@engine.test",
                    "verification": {"status": "verified", "strategy": "email_code"}}],
                "phone_numbers": [{"id": "idn_2", "phone_number": "+15550109999"}],
                "external_accounts": [{"provider": "oauth_google", "email_address": "a@g.test"}],
                "public_metadata": {"plan": "pro"}, "private_metadata": {"n": 1},
                "unsafe_metadata": {}, "two_factor_enabled": false, "banned": false,
                "last_active_at": 1, "last_sign_in_at": 2, "created_at": 3, "updated_at": 4
            }),
        );
        check(
            Kind::Organization,
            json!({
                "id": "org_1", "object": "organization", "name": "Engines", "slug": "engines",
                "image_url": "https://img.test/o.png", "members_count": 3,
                "public_metadata": {}, "private_metadata": {}, "max_allowed_memberships": 5,
                "admin_delete_enabled": true, "created_at": 3, "updated_at": 4
            }),
        );
    }

    fn entry(kind: Kind, operation: &str, fields: &[&str]) -> FeedEntry {
        FeedEntry {
            seq: 1,
            kind,
            entity_id: "x_1".into(),
            operation: operation.into(),
            changed_fields: fields.iter().map(|f| f.to_string()).collect(),
            version: 1,
            svix_id: "msg_1".into(),
            committed_at: 0,
            user_id: None,
            organization_id: None,
        }
    }

    #[test]
    fn only_changes_to_indexed_fields_reach_the_index() {
        let activity = ["last_active_at", "last_sign_in_at", "updated_at"];
        assert!(!touches_index(&entry(Kind::User, "update", &activity)));
        assert!(touches_index(&entry(
            Kind::User,
            "update",
            &["updated_at", "email_addresses"]
        )));
        assert!(!touches_index(&entry(
            Kind::Organization,
            "update",
            &["members_count"]
        )));
        assert!(touches_index(&entry(
            Kind::Organization,
            "update",
            &["slug"]
        )));
        // Creates and deletes always; an update naming no field is not trusted.
        assert!(touches_index(&entry(Kind::User, "create", &activity)));
        // A create's feed row names no field (sync/mod.rs `feed_fields`).
        assert!(touches_index(&entry(Kind::User, "create", &[])));
        assert!(touches_index(&entry(Kind::User, "delete", &[])));
        assert!(touches_index(&entry(Kind::User, "update", &[])));
        // A kind the index does not hold never.
        assert!(!touches_index(&entry(
            Kind::Membership,
            "update",
            &["role"]
        )));
    }
}

//! Queries: a caller's words checked, analyzed, and turned into index queries.
//!
//! Owns: the limits on a query (length, words), typo tolerance, prefix and
//! exact matches and their boosts, and running a query off the async threads.
//! Must never: hand raw user input to tantivy's query parser (its syntax errors
//! and unbounded queries would be reachable from a URL). See ARCHITECTURE.md.

use super::index::{SearchError, SearchIndex};
use super::schema::{words_of, MAX_PREFIX_CHARS, MIN_PREFIX_CHARS};
use crate::clerk::model::Kind;
use tantivy::collector::TopDocs;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, FuzzyTermQuery, Occur, Query, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption, Value as _};
use tantivy::{TantivyDocument, Term};

/// Longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 512;
/// Most words in a query: each word becomes a handful of automaton queries, so
/// the count bounds a query's cost.
pub const MAX_QUERY_WORDS: usize = 16;
/// Words longer than this get no typo tolerance: a Levenshtein automaton grows
/// with the word, and a 60-letter word with one typo is not a real search.
const MAX_FUZZY_CHARS: usize = 32;
/// An exact email, username, slug or phone number outranks any word match.
const EXACT_BOOST: f32 = 20.0;
/// The query as the start of a whole value outranks word and typo matches.
const VALUE_PREFIX_BOOST: f32 = 8.0;

/// Why a query is refused (the API answers 400 with this text).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BadQuery {
    #[error("q is required and must contain more than spaces")]
    Empty,
    #[error("q is longer than {MAX_QUERY_CHARS} characters")]
    TooLong,
    #[error("q has more than {MAX_QUERY_WORDS} words")]
    TooManyWords,
}

/// A query reduced to what the index is asked: never tantivy query syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    /// Analyzed words (lowercased, ASCII-folded), in order; the last is also a prefix.
    pub words: Vec<String>,
    /// The whole query, trimmed and lowercased: matched against raw emails,
    /// usernames, slugs and phone numbers.
    pub exact: String,
    /// The digits of a query that looks like a phone number.
    pub digits: Option<String>,
}

/// One search result: which entity, and how well it matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub kind: Kind,
    pub id: String,
    pub score: f32,
}

/// Checks and analyzes a query string.
pub fn parse_query(q: &str) -> Result<ParsedQuery, BadQuery> {
    let q = q.trim();
    if q.is_empty() {
        return Err(BadQuery::Empty);
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(BadQuery::TooLong);
    }
    let words = words_of(q);
    if words.len() > MAX_QUERY_WORDS {
        return Err(BadQuery::TooManyWords);
    }
    let digits: String = q.chars().filter(char::is_ascii_digit).collect();
    let phone_like = q
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c));
    Ok(ParsedQuery {
        words,
        exact: q.to_lowercase(),
        digits: (phone_like && digits.len() >= 4).then_some(digits),
    })
}

impl SearchIndex {
    fn term_query(field: Field, text: &str, opt: IndexRecordOption, boost: f32) -> Box<dyn Query> {
        Box::new(BoostQuery::new(
            Box::new(TermQuery::new(Term::from_field_text(field, text), opt)),
            boost,
        ))
    }

    /// One word: itself (scored), a near miss (typo), and for the last word a prefix.
    fn word_query(&self, word: &str, last: bool) -> Box<dyn Query> {
        let f = self.fields;
        let mut any: Vec<(Occur, Box<dyn Query>)> = vec![
            (
                Occur::Should,
                Self::term_query(f.name, word, IndexRecordOption::WithFreqs, 3.0),
            ),
            (
                Occur::Should,
                Self::term_query(f.handle, word, IndexRecordOption::WithFreqs, 2.0),
            ),
        ];
        let n = word.chars().count();
        // Typos are forgiven in words, not in numbers (`lovelace1984` is an id,
        // not a misspelling). Handles (emails, usernames) are nearly one unique
        // word per user, so an automaton over them is the costliest part of a
        // query: one edit there, up to two in names.
        if (4..=MAX_FUZZY_CHARS).contains(&n) && !word.chars().any(|c| c.is_ascii_digit()) {
            let name_distance = if n >= 8 { 2 } else { 1 };
            for (field, distance, boost) in [(f.name, name_distance, 1.0), (f.handle, 1, 0.8)] {
                let q = FuzzyTermQuery::new(Term::from_field_text(field, word), distance, true);
                any.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
        }
        if last {
            any.extend(self.prefix_query(word, 1.5).map(|q| (Occur::Should, q)));
        }
        Box::new(BooleanQuery::new(any))
    }

    /// Words that start with `word` (constant score: a prefix says nothing of
    /// how well the rest matches). Short ones from the indexed prefixes; longer
    /// ones by automaton, which is cheap there since few terms share a long prefix.
    fn prefix_query(&self, word: &str, boost: f32) -> Option<Box<dyn Query>> {
        let f = self.fields;
        let n = word.chars().count();
        if n < MIN_PREFIX_CHARS {
            return None;
        }
        let q: Box<dyn Query> = if n <= MAX_PREFIX_CHARS {
            Box::new(TermQuery::new(
                Term::from_field_text(f.prefix, word),
                IndexRecordOption::Basic,
            ))
        } else {
            let mut any: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for field in [f.name, f.handle] {
                let q = FuzzyTermQuery::new_prefix(Term::from_field_text(field, word), 0, true);
                any.push((Occur::Should, Box::new(q)));
            }
            Box::new(BooleanQuery::new(any))
        };
        Some(Box::new(ConstScoreQuery::new(q, boost)))
    }

    /// The whole query as the start of an email, username, name or slug,
    /// punctuation included. Constant score above any word or typo match: what
    /// someone typed from the start of a value is what they are looking for.
    fn value_prefix_query(&self, typed: &str) -> Option<Box<dyn Query>> {
        let f = self.fields;
        let n = typed.chars().count();
        if n < MIN_PREFIX_CHARS {
            return None;
        }
        let q: Box<dyn Query> = if n <= MAX_PREFIX_CHARS {
            Box::new(TermQuery::new(
                Term::from_field_text(f.prefix, typed),
                IndexRecordOption::Basic,
            ))
        } else {
            // Longer than the indexed prefixes: few raw values share that
            // many leading characters, so the automaton visits few terms.
            Box::new(FuzzyTermQuery::new_prefix(
                Term::from_field_text(f.exact, typed),
                0,
                true,
            ))
        };
        Some(Box::new(ConstScoreQuery::new(q, VALUE_PREFIX_BOOST)))
    }

    fn build_query(&self, q: &ParsedQuery, kind: Option<Kind>) -> Box<dyn Query> {
        let f = self.fields;
        let mut any: Vec<(Occur, Box<dyn Query>)> = vec![(
            Occur::Should,
            Self::term_query(f.exact, &q.exact, IndexRecordOption::Basic, EXACT_BOOST),
        )];
        any.extend(
            self.value_prefix_query(&q.exact)
                .map(|q| (Occur::Should, q)),
        );
        if let Some(d) = &q.digits {
            any.push((
                Occur::Should,
                Self::term_query(f.exact, d, IndexRecordOption::Basic, EXACT_BOOST),
            ));
            any.extend(self.prefix_query(d, 2.0).map(|q| (Occur::Should, q)));
        }
        if let Some(last) = q.words.len().checked_sub(1) {
            // Every word must match (in some form): more words, fewer results.
            let all = q
                .words
                .iter()
                .enumerate()
                .map(|(i, w)| (Occur::Must, self.word_query(w, i == last)))
                .collect();
            any.push((Occur::Should, Box::new(BooleanQuery::new(all))));
        }
        let main: Box<dyn Query> = Box::new(BooleanQuery::new(any));
        match kind {
            None => main,
            Some(k) => {
                let filter = TermQuery::new(
                    Term::from_field_text(f.kind, k.as_str()),
                    IndexRecordOption::Basic,
                );
                Box::new(BooleanQuery::new(vec![
                    (Occur::Must, main),
                    (
                        Occur::Must,
                        Box::new(ConstScoreQuery::new(Box::new(filter), 0.0)),
                    ),
                ]))
            }
        }
    }

    /// The best `limit` matches, best first (ties in index order).
    pub async fn search(
        &self,
        q: &ParsedQuery,
        kind: Option<Kind>,
        limit: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        let query = self.build_query(q, kind);
        let searcher = self.reader.searcher();
        let f = self.fields;
        let limit = limit.max(1);
        // CPU-bound: off the async threads.
        tokio::task::spawn_blocking(move || -> Result<Vec<Hit>, SearchError> {
            let top = searcher.search(&*query, &TopDocs::with_limit(limit).order_by_score())?;
            let mut hits = Vec::with_capacity(top.len());
            for (score, addr) in top {
                let doc: TantivyDocument = searcher.doc(addr)?;
                let id = doc.get_first(f.id).and_then(|v| v.as_str());
                let kind = doc
                    .get_first(f.kind)
                    .and_then(|v| v.as_str())
                    .and_then(Kind::parse);
                if let (Some(id), Some(kind)) = (id, kind) {
                    hits.push(Hit {
                        kind,
                        id: id.to_string(),
                        score,
                    });
                }
            }
            Ok(hits)
        })
        .await
        .map_err(|e| SearchError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_words_never_syntax() {
        let q = parse_query(r#"  "Ada" AND (love*~2^3) name:x  "#).unwrap();
        assert_eq!(q.words, ["ada", "and", "love", "2", "3", "name", "x"]);
        assert_eq!(q.digits, None);
        assert_eq!(parse_query(" \t ").unwrap_err(), BadQuery::Empty);
        assert_eq!(
            parse_query(&"a".repeat(513)).unwrap_err(),
            BadQuery::TooLong
        );
        assert_eq!(
            parse_query(&"é".repeat(512)).unwrap().words.len(),
            0,
            "one over-long token is dropped"
        );
        assert_eq!(
            parse_query(&"a ".repeat(17)).unwrap_err(),
            BadQuery::TooManyWords
        );
        assert_eq!(parse_query("Zoë").unwrap().words, ["zoe"]);
        assert_eq!(
            parse_query("+1 (555) 010-9999").unwrap().digits.as_deref(),
            Some("15550109999")
        );
        assert!(parse_query("🦀🦀 \u{202e} \u{200d}")
            .unwrap()
            .words
            .is_empty());
    }
}

//! Opaque page cursors of the read and admin APIs.
//!
//! Owns: turning a page's last key (an entity id or a sequence number) into the
//! `next_cursor` string and back. Must never: trust a cursor: one that does not
//! decode is a 400, never a panic or a query with a made-up key.

use crate::http_error::ApiError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;

/// The cursor after the entity id or sequence number `key`.
pub fn encode(key: impl std::fmt::Display) -> String {
    B64URL.encode(key.to_string())
}

/// The id in a cursor; `None` for an absent or empty one (the first page).
pub fn decode_id(c: Option<&str>) -> Result<Option<String>, ApiError> {
    c.filter(|c| !c.is_empty())
        .map(|c| {
            B64URL
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(invalid)
        })
        .transpose()
}

/// The sequence number in a cursor; `None` for an absent or empty one.
pub fn decode_seq(c: Option<&str>) -> Result<Option<i64>, ApiError> {
    decode_id(c)?
        .map(|s| s.parse::<i64>().map_err(|_| invalid()))
        .transpose()
}

fn invalid() -> ApiError {
    ApiError::BadRequest("invalid cursor".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        assert_eq!(
            decode_id(Some(&encode("user_1"))).unwrap().as_deref(),
            Some("user_1")
        );
        assert_eq!(decode_seq(Some(&encode(42))).unwrap(), Some(42));
        assert_eq!(decode_id(None).unwrap(), None);
        assert_eq!(decode_seq(Some("")).unwrap(), None);
        for bad in ["!!", "/w", &B64URL.encode([0xff, 0xfe])] {
            assert!(decode_id(Some(bad)).is_err(), "{bad}");
        }
        assert!(decode_seq(Some(&encode("user_1"))).is_err());
    }
}

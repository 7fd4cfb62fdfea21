//! Clerk-style entity ids and Svix-style delivery ids for the generated stream.
//!
//! Owns: the id formats, `prefix_` + 27 base62 characters, as Clerk (`user_...`,
//! `org_...`, `orgmem_...`, `idn_...`, `ins_...`) and Svix (`msg_...`) use.
//! Must never: draw randomness from anything but the caller's seeded RNG (a stream
//! must be reproducible from its seed), or produce delivery ids whose byte order
//! disagrees with event order (the server breaks version ties by svix-id).

use rand::Rng;

/// Ordered like ASCII, so fixed-width base62 strings sort like the numbers they encode.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Characters after the prefix: 160 bits need 27 base62 digits (62^27 > 2^160).
pub const ID_LEN: usize = 27;

/// KSUID's epoch (2014-05-13); Clerk's ids are KSUIDs.
const KSUID_EPOCH_SECS: i64 = 1_400_000_000;

/// Fixed-width base62 of a 160-bit big-endian number.
fn base62_160(mut n: [u8; 20]) -> String {
    let mut out = [b'0'; ID_LEN];
    for slot in out.iter_mut().rev() {
        // One step of long division of the whole number by 62.
        let mut rem: u32 = 0;
        for byte in n.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = ALPHABET[rem as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

/// A KSUID-shaped id (`prefix_` + 27 chars): 4 bytes of seconds since the KSUID
/// epoch, then 16 random bytes, like the ids Clerk hands out.
pub fn entity_id(prefix: &str, time_ms: i64, rng: &mut impl Rng) -> String {
    let mut n = [0u8; 20];
    let secs = (time_ms.div_euclid(1000) - KSUID_EPOCH_SECS).clamp(0, i64::from(u32::MAX)) as u32;
    n[..4].copy_from_slice(&secs.to_be_bytes());
    rng.fill(&mut n[4..]);
    format!("{prefix}_{}", base62_160(n))
}

/// A delivery id `msg_` + 27 chars: KSUID seconds, then the milliseconds within
/// that second, the event's sequence number and random bytes.
///
/// Real Svix ids are KSUIDs with one-second resolution; ours add milliseconds and
/// the sequence number so that a later event always has a strictly greater id,
/// which the LWW tie-break ("the greater svix-id wins") relies on. Starting with
/// the KSUID seconds keeps them looking like Svix's (`msg_2r0...`).
pub fn svix_id(time_ms: i64, seq: u32, rng: &mut impl Rng) -> String {
    let mut n = [0u8; 20];
    let secs = (time_ms.div_euclid(1000) - KSUID_EPOCH_SECS).clamp(0, i64::from(u32::MAX)) as u32;
    n[..4].copy_from_slice(&secs.to_be_bytes());
    n[4..6].copy_from_slice(&(time_ms.rem_euclid(1000) as u16).to_be_bytes());
    n[6..10].copy_from_slice(&seq.to_be_bytes());
    rng.fill(&mut n[10..]);
    format!("msg_{}", base62_160(n))
}

/// Does `id` look like `prefix_` + 27 base62 characters?
pub fn is_clerk_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|tail| tail.len() == ID_LEN && tail.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn base62_is_fixed_width_and_order_preserving() {
        assert_eq!(base62_160([0; 20]), "0".repeat(ID_LEN));
        assert_eq!(base62_160([0xff; 20]).len(), ID_LEN);
        let mut one = [0u8; 20];
        one[19] = 61;
        assert!(base62_160(one).ends_with('z'));
        one[19] = 62;
        assert!(base62_160(one).ends_with("10"));
    }

    #[test]
    fn ids_have_clerk_shape_and_svix_ids_sort_by_time_then_sequence() {
        let mut rng = StdRng::seed_from_u64(1);
        let u = entity_id("user", 1_654_012_591_514, &mut rng);
        assert!(is_clerk_id(&u, "user"), "{u}");
        assert!(!is_clerk_id(&u, "org"));
        let t = 1_735_689_600_998;
        let ids = [
            svix_id(t, 7, &mut rng),
            svix_id(t, 8, &mut rng),
            svix_id(t + 1, 0, &mut rng),
            svix_id(t + 2, 1, &mut rng),
            svix_id(t + 1_000, 2, &mut rng),
        ];
        assert!(ids.iter().all(|id| is_clerk_id(id, "msg")));
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // Shaped like Svix's KSUID-based ids of the same period.
        assert!(ids[0].starts_with("msg_2"), "{}", ids[0]);
    }
}

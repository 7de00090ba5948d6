//! MFA recovery codes (AUTH-2, stored per SEC-5).
//!
//! A user gets [`RECOVERY_CODE_COUNT`] codes such as `7kq2-mx9d-c4hv` when enrolling TOTP. Each
//! has 12 symbols from Crockford's base32 alphabet (`0-9a-z` without `i`, `l`, `o`, `u`), 5 bits
//! each, so 60 bits of entropy. Only [`hash_code`] outputs are stored.
//!
//! Input is normalised before hashing: ASCII letters are lowercased, dashes and whitespace are
//! dropped, and the letters a reader may confuse with digits are read as those digits (`o` as
//! `0`, `i` and `l` as `1`), as Crockford's decoding rules prescribe. A code typed as
//! `7KQ2 MX9D C4HV` therefore matches.
//!
//! **Single use is the caller's job:** when [`find_match`] returns an index, delete (or mark
//! used) that stored hash in the same transaction that completes the login, so a code can never
//! be accepted twice.

use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// How many codes a user receives.
pub const RECOVERY_CODE_COUNT: usize = 10;

/// Crockford's base32 alphabet, lowercase: 32 symbols, so a random byte masked to 5 bits picks
/// one uniformly.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const GROUPS: usize = 3;
const GROUP_LEN: usize = 4;
const SYMBOLS: usize = GROUPS * GROUP_LEN;

/// Generates `n` fresh codes, formatted `xxxx-xxxx-xxxx`.
pub fn generate_codes(n: usize) -> Vec<String> {
    (0..n).map(|_| generate_code()).collect()
}

fn generate_code() -> String {
    let mut random = [0u8; SYMBOLS];
    rand::fill(&mut random[..]);
    let mut code = String::with_capacity(SYMBOLS + GROUPS - 1);
    for (i, byte) in random.iter().enumerate() {
        if i > 0 && i % GROUP_LEN == 0 {
            code.push('-');
        }
        code.push(char::from(ALPHABET[usize::from(byte & 0x1f)]));
    }
    code
}

/// SHA-256 of the normalised code (see the module docs); this is what gets stored.
pub fn hash_code(code: &str) -> [u8; 32] {
    Sha256::digest(normalise(code).as_bytes()).into()
}

/// The index of the stored hash that `code` matches, if any. Every entry is compared in
/// constant time, whether or not an earlier one matched.
pub fn find_match(code: &str, hashes: &[[u8; 32]]) -> Option<usize> {
    let presented = hash_code(code);
    let mut found = Choice::from(0);
    let mut index = 0u64;
    for (i, stored) in (0u64..).zip(hashes) {
        let matches = stored.ct_eq(&presented);
        index.conditional_assign(&i, matches & !found);
        found |= matches;
    }
    if bool::from(found) {
        usize::try_from(index).ok()
    } else {
        None
    }
}

fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| match c.to_ascii_lowercase() {
            'o' => '0',
            'i' | 'l' => '1',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_have_the_documented_shape() {
        let codes = generate_codes(RECOVERY_CODE_COUNT);
        assert_eq!(codes.len(), 10);
        for code in &codes {
            assert_eq!(code.len(), 14, "{code}");
            let groups: Vec<&str> = code.split('-').collect();
            assert_eq!(groups.len(), 3, "{code}");
            for group in groups {
                assert_eq!(group.len(), 4);
                assert!(group.bytes().all(|b| ALPHABET.contains(&b)), "{code}");
                assert!(!group.contains(['i', 'l', 'o', 'u']), "{code}");
            }
        }
    }

    #[test]
    fn codes_are_unique_and_use_the_whole_alphabet() {
        let codes = generate_codes(1000);
        let unique: HashSet<&String> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        let used: HashSet<u8> = codes
            .iter()
            .flat_map(|c| c.bytes())
            .filter(|&b| b != b'-')
            .collect();
        assert_eq!(used.len(), 32, "12 000 symbols should cover all 32");
    }

    #[test]
    fn the_entropy_is_at_least_60_bits() {
        let bits = SYMBOLS as f64 * (ALPHABET.len() as f64).log2();
        assert!(bits >= 60.0, "{bits}");
    }

    #[test]
    fn normalisation_forgives_case_separators_and_look_alikes() {
        let hash = hash_code("7kq2-mx9d-c4h1");
        for typed in [
            "7kq2-mx9d-c4h1",
            "7KQ2-MX9D-C4H1",
            "7kq2 mx9d c4h1",
            "7kq2mx9dc4h1",
            " 7kq2-mx9d-c4hl ",
            "7kq2-mx9d-c4hI",
        ] {
            assert_eq!(hash_code(typed), hash, "{typed:?}");
        }
        assert_eq!(hash_code("0o0o-0000-0000"), hash_code("0000-0000-0000"));
        assert_ne!(hash_code("7kq2-mx9d-c4h2"), hash);
    }

    #[test]
    fn hash_is_sha256_of_the_normalised_code() {
        let expected: [u8; 32] = Sha256::digest(b"7kq2mx9dc4h1").into();
        assert_eq!(hash_code("7KQ2-MX9D-C4H1"), expected);
    }

    #[test]
    fn find_match_returns_the_matching_index() {
        let codes = generate_codes(RECOVERY_CODE_COUNT);
        let hashes: Vec<[u8; 32]> = codes.iter().map(|c| hash_code(c)).collect();
        for (i, code) in codes.iter().enumerate() {
            assert_eq!(find_match(code, &hashes), Some(i));
            assert_eq!(find_match(&code.to_uppercase(), &hashes), Some(i));
        }
        let stranger = generate_codes(1).remove(0);
        assert_eq!(find_match(&stranger, &hashes), None);
        assert_eq!(find_match("", &hashes), None);
        assert_eq!(find_match(&codes[0], &[]), None);
    }

    #[test]
    fn a_used_code_no_longer_matches_once_removed() {
        let codes = generate_codes(3);
        let mut hashes: Vec<[u8; 32]> = codes.iter().map(|c| hash_code(c)).collect();
        let used = find_match(&codes[1], &hashes).expect("valid code");
        hashes.remove(used);
        assert_eq!(find_match(&codes[1], &hashes), None);
        assert_eq!(find_match(&codes[2], &hashes), Some(1));
    }

    #[test]
    fn duplicate_entries_report_the_first() {
        let hash = hash_code("aaaa-bbbb-cccc");
        assert_eq!(
            find_match("aaaa-bbbb-cccc", &[[0; 32], hash, hash]),
            Some(1)
        );
    }
}

//! The master key every server-side secret is derived from (SEC-1).
//!
//! The key is mandatory and has no default: start-up fails fast when it is missing, is not an
//! encoding of random bytes, is shorter than [`MIN_KEY_BYTES`] or looks like something a person
//! typed rather than something a random number generator produced. The key is held only in
//! memory that is zeroized on drop, and neither `Debug` nor any error message ever prints it.
//!
//! # Accepted spellings
//!
//! Surrounding whitespace is trimmed. Text made only of hex digits with an even length is read
//! as hex; anything else is read as base64 with either the standard or the URL-safe alphabet,
//! padded or not. The hex rule goes first because hex digits are also base64 characters; a key
//! from [`MasterKey::generate`] is 43 characters long (odd), so it is never mistaken for hex.
//!
//! # Entropy rule
//!
//! A decoded key is refused as [`MasterKeyError::LowEntropy`] when any of these holds:
//!
//! 1. fewer than 16 distinct byte values among its first 32 bytes (all-zero keys, keys made of a
//!    few repeated characters);
//! 2. fewer than 16 distinct differences between consecutive bytes among its first 32 bytes
//!    (counters such as `00 01 02 …`, or arithmetic runs);
//! 3. the whole key repeats a block of at most 16 bytes;
//! 4. every byte is printable ASCII or a tab, CR or LF (a passphrase that was hex- or
//!    base64-encoded, or a base64 string that was encoded a second time).
//!
//! For 32 bytes from a uniform random source the chance of tripping any rule is below 10⁻¹³:
//! rule 4 dominates at (98/256)³² ≈ 4.6·10⁻¹⁴, rules 1 and 2 are each below 10⁻¹⁵ and rule 3
//! below 256⁻¹⁶. A real key is never refused in practice.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use zeroize::{Zeroize, Zeroizing};

/// The environment variable that carries the master key; it wins over the key file.
pub const MASTER_KEY_ENV: &str = "PORTCULLIS_MASTER_KEY";

/// The configuration setting that names a file holding the master key.
pub const MASTER_KEY_FILE_SETTING: &str = "master_key_file";

/// The smallest accepted key, in decoded bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// The largest key file read; a key is a few dozen characters, so more means a wrong file.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// How many bytes [`MasterKey::generate`] draws.
const GENERATED_KEY_BYTES: usize = 32;

/// How many leading bytes the distinct-value and distinct-difference rules look at.
const ENTROPY_WINDOW: usize = 32;

/// The fewest distinct values (and distinct consecutive differences) a key must show.
const MIN_DISTINCT: usize = 16;

/// The longest block whose repetition counts as a pattern.
const MAX_PATTERN_PERIOD: usize = 16;

const PADDING_INDIFFERENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const BASE64_STANDARD: GeneralPurpose =
    GeneralPurpose::new(&alphabet::STANDARD, PADDING_INDIFFERENT);
const BASE64_URL_SAFE: GeneralPurpose =
    GeneralPurpose::new(&alphabet::URL_SAFE, PADDING_INDIFFERENT);

/// Which property made a key look non-random; see the module docs for the exact rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowEntropyReason {
    /// Too few distinct byte values.
    FewDistinctBytes,
    /// Consecutive bytes follow a counter or another simple progression.
    Progression,
    /// The key repeats a short block.
    RepeatedPattern,
    /// Every byte is printable text, as in an encoded passphrase.
    PrintableText,
}

impl fmt::Display for LowEntropyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FewDistinctBytes => "it uses too few distinct byte values",
            Self::Progression => "its bytes follow a simple progression",
            Self::RepeatedPattern => "it repeats a short pattern",
            Self::PrintableText => "it decodes to printable text, like an encoded passphrase",
        })
    }
}

/// Why a master key was refused. No variant carries or prints the key itself.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// Neither the environment variable nor the key file supplied a key.
    #[error(
        "no master key configured: set {MASTER_KEY_ENV} or point {MASTER_KEY_FILE_SETTING} at a \
         file only the server user can read; generate a key with `portcullis keygen`"
    )]
    Missing,
    /// The text is neither hex nor base64.
    #[error(
        "the master key must be base64 or hex of at least {MIN_KEY_BYTES} random bytes; \
         generate one with `portcullis keygen`"
    )]
    NotEncoded,
    /// The text decodes to fewer than [`MIN_KEY_BYTES`] bytes.
    #[error(
        "the master key decodes to {bytes} bytes but at least {MIN_KEY_BYTES} random bytes are \
         required; generate one with `portcullis keygen`"
    )]
    TooShort {
        /// How many bytes the key decoded to.
        bytes: usize,
    },
    /// The bytes do not look random.
    #[error(
        "the master key does not look random ({reason}); generate one with `portcullis keygen`"
    )]
    LowEntropy {
        /// Which rule the key broke.
        reason: LowEntropyReason,
    },
    /// The key file could not be opened or read.
    #[error("cannot read the master key file {}: {source}", path.display())]
    FileUnreadable {
        /// The configured path.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The key file is readable or writable by the group or by others.
    #[error(
        "the master key file {} is accessible by group or others (mode {mode:04o}); \
         restrict it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    FileTooOpen {
        /// The configured path.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The key file is not a regular file (a directory, a device, a FIFO).
    #[error("the master key file {} is not a regular file", path.display())]
    NotAFile {
        /// The configured path.
        path: PathBuf,
    },
    /// The key file is empty or holds only whitespace.
    #[error(
        "the master key file {} is empty; write a key from `portcullis keygen` into it",
        path.display()
    )]
    FileEmpty {
        /// The configured path.
        path: PathBuf,
    },
    /// The key file is far larger than any key.
    #[error(
        "the master key file {} is larger than {MAX_KEY_FILE_BYTES} bytes; it should hold only \
         the key",
        path.display()
    )]
    FileTooLarge {
        /// The configured path.
        path: PathBuf,
    },
}

/// The decoded master key. Zeroized on drop; `Debug` prints `MasterKey(<redacted>)`.
pub struct MasterKey {
    bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Parses a key from its text form (see the module docs for spellings and the entropy
    /// rule).
    pub fn parse(text: &str) -> Result<MasterKey, MasterKeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(MasterKeyError::Missing);
        }
        let bytes = decode(text).ok_or(MasterKeyError::NotEncoded)?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(MasterKeyError::TooShort { bytes: bytes.len() });
        }
        if let Some(reason) = entropy_flaw(&bytes) {
            return Err(MasterKeyError::LowEntropy { reason });
        }
        Ok(MasterKey { bytes })
    }

    /// A fresh key as unpadded URL-safe base64 of 32 random bytes: what `portcullis keygen`
    /// prints.
    pub fn generate() -> String {
        let mut bytes = Zeroizing::new([0u8; GENERATED_KEY_BYTES]);
        rand::fill(&mut bytes[..]);
        URL_SAFE_NO_PAD.encode(&bytes[..])
    }

    /// Loads the key from the value of [`MASTER_KEY_ENV`] or, when that is unset, from the file
    /// named by [`MASTER_KEY_FILE_SETTING`].
    ///
    /// The environment wins whenever it is set, even to an empty value (which is then refused
    /// as [`MasterKeyError::Missing`]) so that a half-configured deployment fails loudly instead
    /// of silently picking the other source. On Unix the file must not be accessible by group or
    /// others (`mode & 0o077 == 0`); the mode is checked on the opened handle, so the file that
    /// was checked is the file that is read.
    pub fn load(
        env_value: Option<String>,
        file: Option<&Path>,
    ) -> Result<MasterKey, MasterKeyError> {
        if let Some(value) = env_value {
            let value = Zeroizing::new(value);
            return MasterKey::parse(&value);
        }
        let Some(path) = file else {
            return Err(MasterKeyError::Missing);
        };
        let text = read_key_file(path)?;
        if text.trim().is_empty() {
            return Err(MasterKeyError::FileEmpty {
                path: path.to_path_buf(),
            });
        }
        MasterKey::parse(&text)
    }

    /// The raw key bytes, for key derivation inside this crate only.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>, MasterKeyError> {
    let unreadable = |source| MasterKeyError::FileUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(MasterKeyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    check_mode(path, &metadata)?;
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(MasterKeyError::FileTooLarge {
            path: path.to_path_buf(),
        });
    }
    // Allocated once at full size so no reallocation leaves a copy of the key behind; the
    // limit also covers a file that grows between the size check and the read.
    let mut text = Zeroizing::new(String::with_capacity(MAX_KEY_FILE_BYTES as usize + 1));
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(MasterKeyError::FileTooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

#[cfg(unix)]
fn check_mode(path: &Path, metadata: &std::fs::Metadata) -> Result<(), MasterKeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(MasterKeyError::FileTooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _metadata: &std::fs::Metadata) -> Result<(), MasterKeyError> {
    Ok(())
}

fn decode(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    if text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(text).ok().map(Zeroizing::new);
    }
    for engine in [&BASE64_STANDARD, &BASE64_URL_SAFE] {
        // Decoded output is never longer than the text, so this buffer never reallocates.
        let mut out = Vec::with_capacity(text.len());
        match engine.decode_vec(text, &mut out) {
            Ok(()) => return Some(Zeroizing::new(out)),
            // A failed attempt may have written part of the key already.
            Err(_) => out.zeroize(),
        }
    }
    None
}

/// Returns the first entropy rule the key breaks, if any (see the module docs).
fn entropy_flaw(key: &[u8]) -> Option<LowEntropyReason> {
    let window = &key[..key.len().min(ENTROPY_WINDOW)];
    if distinct(window.iter().copied()) < MIN_DISTINCT {
        return Some(LowEntropyReason::FewDistinctBytes);
    }
    let steps = window.windows(2).map(|pair| pair[1].wrapping_sub(pair[0]));
    if distinct(steps) < MIN_DISTINCT {
        return Some(LowEntropyReason::Progression);
    }
    let repeats = |period: usize| key.iter().zip(&key[period..]).all(|(a, b)| a == b);
    if (1..=MAX_PATTERN_PERIOD).any(repeats) {
        return Some(LowEntropyReason::RepeatedPattern);
    }
    if key
        .iter()
        .all(|&b| matches!(b, b' '..=b'~' | b'\t' | b'\n' | b'\r'))
    {
        return Some(LowEntropyReason::PrintableText);
    }
    None
}

fn distinct(bytes: impl Iterator<Item = u8>) -> usize {
    let mut seen = [false; 256];
    for b in bytes {
        seen[usize::from(b)] = true;
    }
    seen.iter().filter(|&&s| s).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};

    fn random_bytes(n: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; n];
        rand::fill(&mut bytes[..]);
        bytes
    }

    /// Random bytes that are not, by chance, valid as one spelling only; the same bytes are
    /// re-encoded in every accepted spelling below.
    fn spellings(bytes: &[u8]) -> Vec<String> {
        vec![
            STANDARD.encode(bytes),
            STANDARD_NO_PAD.encode(bytes),
            URL_SAFE.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
            hex::encode(bytes),
            hex::encode_upper(bytes),
            format!("  {}\n", URL_SAFE_NO_PAD.encode(bytes)),
        ]
    }

    #[test]
    fn every_accepted_spelling_decodes_to_the_same_bytes() {
        let bytes = random_bytes(32);
        for text in spellings(&bytes) {
            let key = MasterKey::parse(&text).expect("random key parses");
            assert_eq!(key.expose(), &bytes[..], "spelling {text:?}");
        }
    }

    #[test]
    fn a_thousand_generated_keys_are_all_accepted() {
        for _ in 0..1000 {
            let text = MasterKey::generate();
            assert_eq!(text.len(), 43);
            assert!(!text.contains('='), "generated keys are unpadded");
            let key = MasterKey::parse(&text).expect("generated key parses");
            assert_eq!(key.expose().len(), 32);
        }
    }

    #[test]
    fn a_thousand_random_keys_pass_in_every_spelling() {
        for _ in 0..1000 {
            let bytes = random_bytes(32);
            assert_eq!(entropy_flaw(&bytes), None, "{bytes:?}");
            for text in spellings(&bytes) {
                assert!(MasterKey::parse(&text).is_ok());
            }
        }
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(MasterKey::generate(), MasterKey::generate());
    }

    fn check(text: &str, expect: &str) {
        let got = match MasterKey::parse(text) {
            Ok(_) => "ok".to_owned(),
            Err(MasterKeyError::LowEntropy { reason }) => format!("{reason:?}"),
            Err(e) => format!("{e:?}"),
        };
        assert_eq!(got, expect, "input {text:?}");
    }

    #[test]
    fn refuses_missing_unencoded_short_and_weak_keys() {
        let mut counter = [0u8; 32];
        for (i, b) in counter.iter_mut().enumerate() {
            *b = u8::try_from(i * 7).expect("small");
        }
        // A 16-byte block of triangular numbers: 16 distinct values and 16 distinct steps, so
        // only the repetition rule can catch it.
        let mut pattern = [0u8; 48];
        for (i, b) in pattern.iter_mut().enumerate() {
            let k = i % 16;
            *b = u8::try_from(k * (k + 1) / 2).expect("at most 120");
        }
        let passphrase = "The quick brown fox jumps over the lazy dog!";
        let table: &[(String, &str)] = &[
            (String::new(), "Missing"),
            ("   \n\t".to_owned(), "Missing"),
            ("not a key!".to_owned(), "NotEncoded"),
            ("abc+def-ghi".to_owned(), "NotEncoded"),
            (
                URL_SAFE_NO_PAD.encode(random_bytes(31)),
                "TooShort { bytes: 31 }",
            ),
            (hex::encode(random_bytes(16)), "TooShort { bytes: 16 }"),
            (hex::encode([0u8; 32]), "FewDistinctBytes"),
            (STANDARD.encode([b'a'; 40]), "FewDistinctBytes"),
            (hex::encode(counter), "Progression"),
            (hex::encode(pattern), "RepeatedPattern"),
            (hex::encode(passphrase), "PrintableText"),
            (STANDARD.encode(passphrase), "PrintableText"),
            // A key that was base64-encoded twice decodes to base64 text.
            (
                STANDARD.encode(STANDARD.encode(random_bytes(32))),
                "PrintableText",
            ),
        ];
        for (text, expect) in table {
            check(text, expect);
        }
    }

    #[test]
    fn errors_and_debug_never_echo_the_key() {
        let weak = hex::encode(b"this passphrase is long enough!!");
        let err = MasterKey::parse(&weak).expect_err("weak");
        assert!(!err.to_string().contains(&weak));
        assert!(!format!("{err:?}").contains(&weak));

        let short = URL_SAFE_NO_PAD.encode(random_bytes(20));
        let err = MasterKey::parse(&short).expect_err("short");
        assert!(!err.to_string().contains(&short));

        let key = MasterKey::parse(&MasterKey::generate()).expect("valid");
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn error_messages_tell_the_operator_what_to_do() {
        assert_eq!(
            MasterKeyError::Missing.to_string(),
            "no master key configured: set PORTCULLIS_MASTER_KEY or point master_key_file at a \
             file only the server user can read; generate a key with `portcullis keygen`"
        );
        assert_eq!(
            MasterKeyError::NotEncoded.to_string(),
            "the master key must be base64 or hex of at least 32 random bytes; generate one with \
             `portcullis keygen`"
        );
        assert_eq!(
            MasterKeyError::TooShort { bytes: 16 }.to_string(),
            "the master key decodes to 16 bytes but at least 32 random bytes are required; \
             generate one with `portcullis keygen`"
        );
    }

    #[cfg(unix)]
    fn key_file(contents: &str, mode: u32) -> tempfile::NamedTempFile {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(contents.as_bytes()).expect("write");
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        file
    }

    #[cfg(unix)]
    #[test]
    fn loads_from_a_private_file() {
        let bytes = random_bytes(32);
        let file = key_file(&format!("{}\n", URL_SAFE_NO_PAD.encode(&bytes)), 0o600);
        let key = MasterKey::load(None, Some(file.path())).expect("private file loads");
        assert_eq!(key.expose(), &bytes[..]);

        let file = key_file(&hex::encode(&bytes), 0o400);
        assert!(MasterKey::load(None, Some(file.path())).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_file_readable_by_group_or_others() {
        let text = MasterKey::generate();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o610, 0o601] {
            let file = key_file(&text, mode);
            let err = MasterKey::load(None, Some(file.path())).expect_err("too open");
            match &err {
                MasterKeyError::FileTooOpen { path, mode: got } => {
                    assert_eq!(path, file.path());
                    assert_eq!(*got, mode);
                }
                other => panic!("mode {mode:o}: unexpected {other:?}"),
            }
            let message = err.to_string();
            assert!(
                message.contains(&file.path().display().to_string()),
                "{message}"
            );
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(message.contains("chmod 600"), "{message}");
            assert!(!message.contains(&text));
        }
    }

    #[cfg(unix)]
    #[test]
    fn environment_wins_over_the_file() {
        let from_env = random_bytes(32);
        let file = key_file(&MasterKey::generate(), 0o600);
        let key = MasterKey::load(Some(hex::encode(&from_env)), Some(file.path()))
            .expect("env key loads");
        assert_eq!(key.expose(), &from_env[..]);

        // An empty variable is still the chosen source: it fails instead of falling back.
        let err = MasterKey::load(Some(String::new()), Some(file.path())).expect_err("empty env");
        assert!(matches!(err, MasterKeyError::Missing));

        // The file is never consulted when the environment is set, so its mode is irrelevant.
        let open_file = key_file(&MasterKey::generate(), 0o644);
        assert!(MasterKey::load(Some(MasterKey::generate()), Some(open_file.path())).is_ok());
    }

    #[test]
    fn nothing_configured_is_missing_and_names_both_sources() {
        let err = MasterKey::load(None, None).expect_err("nothing configured");
        assert!(matches!(err, MasterKeyError::Missing));
        let message = err.to_string();
        assert!(message.contains(MASTER_KEY_ENV));
        assert!(message.contains(MASTER_KEY_FILE_SETTING));
    }

    #[cfg(unix)]
    #[test]
    fn file_problems_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("absent.key");
        let err = MasterKey::load(None, Some(&missing)).expect_err("absent");
        assert!(matches!(err, MasterKeyError::FileUnreadable { .. }));
        assert!(err.to_string().contains("absent.key"));

        let empty = key_file(" \n", 0o600);
        let err = MasterKey::load(None, Some(empty.path())).expect_err("empty");
        assert!(matches!(err, MasterKeyError::FileEmpty { .. }));

        let huge = key_file(&"A".repeat(5000), 0o600);
        let err = MasterKey::load(None, Some(huge.path())).expect_err("huge");
        assert!(matches!(err, MasterKeyError::FileTooLarge { .. }));

        let err = MasterKey::load(None, Some(dir.path())).expect_err("directory");
        assert!(matches!(err, MasterKeyError::NotAFile { .. }));

        let weak = key_file(&hex::encode([7u8; 32]), 0o600);
        let err = MasterKey::load(None, Some(weak.path())).expect_err("weak");
        assert!(matches!(err, MasterKeyError::LowEntropy { .. }));
    }
}

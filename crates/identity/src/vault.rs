//! Encryption of secrets at rest under a versioned key ring (SEC-3).
//!
//! Every secret the server stores (TOTP seeds, webhook secrets, the OIDC client secret,
//! upstream credentials) is sealed with XChaCha20-Poly1305 under a key derived from the
//! [`MasterKey`] with HKDF-SHA256. Key version `v` uses `salt = "portcullis/vault/hkdf-salt/v1"`
//! and `info = "portcullis/vault/key" ‖ v as u32 big-endian`, so every version is independent and
//! reproducible from the master key alone: nothing but the current version number has to be
//! stored to rotate.
//!
//! # Envelope
//!
//! `version: u32 BE ‖ nonce: 24 random bytes ‖ ciphertext ‖ tag: 16 bytes`
//!
//! # Row binding
//!
//! The associated data binds a ciphertext to where it lives: a domain tag, the key version and
//! the [`SealContext`] (`table`, `row`, `column`), each written as a `u32` big-endian length
//! followed by its bytes, so no two different contexts produce the same AAD. A ciphertext
//! copied into another row or column, or relabelled with another version, fails to open as
//! [`VaultError::Tampered`].
//!
//! # Rotation
//!
//! [`KeyRing::rotated`] returns a ring whose current version is one higher; it still opens
//! every older version. The caller re-seals every row for which [`KeyRing::needs_rotation`] is
//! true, then persists the new current version. Start-up should open every sealed row once and
//! refuse to start if any fails.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::master_key::MasterKey;

/// Salt for the HKDF extract step; fixed so the ring is reproducible from the master key.
const HKDF_SALT: &[u8] = b"portcullis/vault/hkdf-salt/v1";
/// Prefix of the HKDF `info`; the key version follows as a `u32` big-endian.
const HKDF_INFO_PREFIX: &[u8] = b"portcullis/vault/key";
/// First field of the associated data; separates vault ciphertexts from any other AEAD use.
const AAD_DOMAIN: &[u8] = b"portcullis/vault/v1";

const VERSION_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = VERSION_LEN + NONCE_LEN;

/// The highest key version a ring accepts. Rotating daily, this lasts well over a century; the
/// bound keeps a corrupt version number from making the ring derive billions of keys.
pub const MAX_KEY_VERSION: u32 = 65_535;

/// The largest plaintext [`KeyRing::seal`] accepts; vault secrets are small.
pub const MAX_PLAINTEXT_BYTES: usize = 1024 * 1024;

/// Where a sealed value lives. It becomes part of the associated data, so a ciphertext opens
/// only with the same table, row and column it was sealed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext<'a> {
    /// The table holding the value.
    pub table: &'a str,
    /// The row's primary key, in its canonical text form.
    pub row: &'a str,
    /// The column holding the value.
    pub column: &'a str,
}

/// Why a value could not be sealed or opened. No variant carries plaintext or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The sealed value is too short to be an envelope.
    #[error("sealed value is malformed")]
    Malformed,
    /// The envelope names a key version this ring does not hold.
    #[error("sealed value uses unknown key version {0}")]
    UnknownKeyVersion(u32),
    /// Authentication failed: the bytes, the context or the master key differ from sealing.
    #[error(
        "sealed value failed authentication (modified, moved to another row or column, or \
         sealed under another master key)"
    )]
    Tampered,
    /// A key version of zero or above [`MAX_KEY_VERSION`] was requested.
    #[error("key version {0} is out of range 1..={MAX_KEY_VERSION}")]
    VersionOutOfRange(u32),
    /// The plaintext exceeds [`MAX_PLAINTEXT_BYTES`].
    #[error("plaintext of {0} bytes exceeds the vault limit of {MAX_PLAINTEXT_BYTES} bytes")]
    PlaintextTooLarge(usize),
}

/// Keys for versions `1..=current`, derived once when the ring is built.
pub struct KeyRing {
    /// HKDF pseudo-random key, kept so [`KeyRing::rotated`] can derive the next version.
    prk: Zeroizing<Vec<u8>>,
    /// `ciphers[v - 1]` holds the cipher for version `v`; each zeroizes its key on drop.
    ciphers: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current_version", &self.current_version())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Derives the keys for versions `1..=current_version` from the master key.
    pub fn new(master: &MasterKey, current_version: u32) -> Result<KeyRing, VaultError> {
        check_version(current_version)?;
        let (prk, _) = Hkdf::<Sha256>::extract(Some(HKDF_SALT), master.expose());
        let prk = Zeroizing::new(prk.to_vec());
        let ciphers = (1..=current_version)
            .map(|version| derive_cipher(&prk, version))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyRing { prk, ciphers })
    }

    /// The version new values are sealed with.
    pub fn current_version(&self) -> u32 {
        // The length never exceeds MAX_KEY_VERSION (checked when the ring is built), so the
        // fallback is unreachable; it only avoids a panic path.
        u32::try_from(self.ciphers.len()).unwrap_or(MAX_KEY_VERSION)
    }

    /// Encrypts `plaintext` for the place described by `context` under the current version.
    pub fn seal(&self, plaintext: &[u8], context: &SealContext<'_>) -> Result<Vec<u8>, VaultError> {
        if plaintext.len() > MAX_PLAINTEXT_BYTES {
            return Err(VaultError::PlaintextTooLarge(plaintext.len()));
        }
        let version = self.current_version();
        let cipher = self.cipher(version)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let aad = associated_data(version, context);
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            // Only inputs of hundreds of gigabytes fail; the size check above rules them out.
            .map_err(|_| VaultError::PlaintextTooLarge(plaintext.len()))?;
        let mut sealed = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        sealed.extend_from_slice(&version.to_be_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts a value sealed for the place described by `context`.
    pub fn open(
        &self,
        sealed: &[u8],
        context: &SealContext<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let (version, nonce, ciphertext) = split(sealed)?;
        // A value sealed under the next version is readable too: a rotation commits its
        // re-sealed values before the new ring replaces this one in a running server.
        let next;
        let cipher = if version == self.current_version().saturating_add(1) {
            check_version(version)?;
            next = derive_cipher(&self.prk, version)?;
            &next
        } else {
            self.cipher(version)?
        };
        let aad = associated_data(version, context);
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Tampered)
    }

    /// Whether `sealed` was sealed under an older version and should be re-sealed. A malformed
    /// envelope answers `false`: it cannot be re-sealed, and [`KeyRing::open`] reports it.
    pub fn needs_rotation(&self, sealed: &[u8]) -> bool {
        sealed_version(sealed).is_some_and(|version| version < self.current_version())
    }

    /// A ring whose current version is one higher, still holding every older version.
    pub fn rotated(&self) -> Result<KeyRing, VaultError> {
        let next = self.current_version().saturating_add(1);
        check_version(next)?;
        let mut ciphers = self.ciphers.clone();
        ciphers.push(derive_cipher(&self.prk, next)?);
        Ok(KeyRing {
            prk: self.prk.clone(),
            ciphers,
        })
    }

    fn cipher(&self, version: u32) -> Result<&XChaCha20Poly1305, VaultError> {
        let index = usize::try_from(version)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .ok_or(VaultError::UnknownKeyVersion(version))?;
        self.ciphers
            .get(index)
            .ok_or(VaultError::UnknownKeyVersion(version))
    }
}

/// The key version recorded in an envelope, or `None` when it is too short to be one.
pub fn sealed_version(sealed: &[u8]) -> Option<u32> {
    split(sealed).ok().map(|(version, _, _)| version)
}

fn check_version(version: u32) -> Result<(), VaultError> {
    if version == 0 || version > MAX_KEY_VERSION {
        return Err(VaultError::VersionOutOfRange(version));
    }
    Ok(())
}

fn derive_cipher(prk: &[u8], version: u32) -> Result<XChaCha20Poly1305, VaultError> {
    // A 32-byte PRK from `extract` is always accepted and 32 bytes of output is far below the
    // HKDF limit, so neither error below can occur; they map to a generic refusal regardless.
    let hkdf = Hkdf::<Sha256>::from_prk(prk).map_err(|_| VaultError::VersionOutOfRange(version))?;
    let mut info = Vec::with_capacity(HKDF_INFO_PREFIX.len() + VERSION_LEN);
    info.extend_from_slice(HKDF_INFO_PREFIX);
    info.extend_from_slice(&version.to_be_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf.expand(&info, &mut key[..])
        .map_err(|_| VaultError::VersionOutOfRange(version))?;
    Ok(XChaCha20Poly1305::new(&(*key).into()))
}

fn split(sealed: &[u8]) -> Result<(u32, [u8; NONCE_LEN], &[u8]), VaultError> {
    if sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(VaultError::Malformed);
    }
    let (version, rest) = sealed.split_at(VERSION_LEN);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let version = u32::from_be_bytes(version.try_into().map_err(|_| VaultError::Malformed)?);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Malformed)?;
    Ok((version, nonce, ciphertext))
}

fn associated_data(version: u32, context: &SealContext<'_>) -> Vec<u8> {
    let fields: [&[u8]; 5] = [
        AAD_DOMAIN,
        &version.to_be_bytes(),
        context.table.as_bytes(),
        context.row.as_bytes(),
        context.column.as_bytes(),
    ];
    let mut aad = Vec::with_capacity(fields.iter().map(|f| 4 + f.len()).sum());
    for field in fields {
        // Table, row and column names are short; a length beyond u32 cannot reach here from a
        // database row, and saturating keeps the encoding total rather than panicking.
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOTP_SEED: SealContext<'static> = SealContext {
        table: "users",
        row: "42",
        column: "totp_secret",
    };

    fn master() -> MasterKey {
        MasterKey::parse(&MasterKey::generate()).expect("generated key parses")
    }

    fn ring(version: u32) -> KeyRing {
        KeyRing::new(&master(), version).expect("valid version")
    }

    #[test]
    fn round_trip() {
        let ring = ring(1);
        for plaintext in [&b""[..], b"s", b"JBSWY3DPEHPK3PXP", &[0xAB; 4096]] {
            let sealed = ring.seal(plaintext, &TOTP_SEED).expect("seal");
            assert_eq!(sealed.len(), HEADER_LEN + plaintext.len() + TAG_LEN);
            assert_eq!(&sealed[..4], &1u32.to_be_bytes());
            let opened = ring.open(&sealed, &TOTP_SEED).expect("open");
            assert_eq!(&opened[..], plaintext);
        }
    }

    #[test]
    fn sealing_twice_uses_fresh_nonces() {
        let ring = ring(1);
        let a = ring.seal(b"same secret", &TOTP_SEED).expect("seal");
        let b = ring.seal(b"same secret", &TOTP_SEED).expect("seal");
        assert_ne!(a, b);
        assert_ne!(a[4..HEADER_LEN], b[4..HEADER_LEN]);
    }

    #[test]
    fn flipping_any_byte_is_detected() {
        let ring = ring(1);
        let sealed = ring.seal(b"webhook-secret", &TOTP_SEED).expect("seal");
        for index in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            let err = ring.open(&tampered, &TOTP_SEED).expect_err("tampered");
            // Changing the version prefix names a version the ring does not hold.
            if index < VERSION_LEN {
                assert!(
                    matches!(err, VaultError::UnknownKeyVersion(_)),
                    "byte {index}: {err:?}"
                );
            } else {
                assert_eq!(err, VaultError::Tampered, "byte {index}");
            }
        }
    }

    #[test]
    fn truncated_or_extended_values_fail() {
        let ring = ring(1);
        let sealed = ring.seal(b"abc", &TOTP_SEED).expect("seal");
        assert_eq!(
            ring.open(&sealed[..sealed.len() - 1], &TOTP_SEED)
                .expect_err("short"),
            VaultError::Tampered
        );
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(
            ring.open(&longer, &TOTP_SEED).expect_err("long"),
            VaultError::Tampered
        );
        for len in [0, 3, 4, HEADER_LEN, HEADER_LEN + TAG_LEN - 1] {
            assert_eq!(
                ring.open(&sealed[..len], &TOTP_SEED).expect_err("tiny"),
                VaultError::Malformed
            );
        }
    }

    #[test]
    fn a_value_moved_to_another_row_does_not_open() {
        let ring = ring(1);
        let alice = SealContext {
            row: "1",
            ..TOTP_SEED
        };
        let mallory = SealContext {
            row: "2",
            ..TOTP_SEED
        };
        let sealed = ring.seal(b"alice's seed", &alice).expect("seal");
        assert_eq!(
            ring.open(&sealed, &mallory).expect_err("moved"),
            VaultError::Tampered
        );
        assert!(ring.open(&sealed, &alice).is_ok());
    }

    #[test]
    fn a_value_moved_to_another_column_or_table_does_not_open() {
        let ring = ring(1);
        let sealed = ring.seal(b"seed", &TOTP_SEED).expect("seal");
        let other_column = SealContext {
            column: "webhook_secret",
            ..TOTP_SEED
        };
        let other_table = SealContext {
            table: "webhooks",
            ..TOTP_SEED
        };
        assert_eq!(
            ring.open(&sealed, &other_column).expect_err("column"),
            VaultError::Tampered
        );
        assert_eq!(
            ring.open(&sealed, &other_table).expect_err("table"),
            VaultError::Tampered
        );
    }

    #[test]
    fn context_fields_cannot_be_shifted_across_boundaries() {
        let a = SealContext {
            table: "ab",
            row: "c",
            column: "d",
        };
        let b = SealContext {
            table: "a",
            row: "bc",
            column: "d",
        };
        assert_ne!(associated_data(1, &a), associated_data(1, &b));
        let ring = ring(1);
        let sealed = ring.seal(b"x", &a).expect("seal");
        assert_eq!(
            ring.open(&sealed, &b).expect_err("shifted"),
            VaultError::Tampered
        );
    }

    #[test]
    fn old_versions_open_after_rotation_and_reseal_to_the_current_version() {
        let master = master();
        let v1 = KeyRing::new(&master, 1).expect("v1");
        let old = v1.seal(b"upstream password", &TOTP_SEED).expect("seal");
        assert!(!v1.needs_rotation(&old));

        let v2 = v1.rotated().expect("rotate");
        assert_eq!(v2.current_version(), 2);
        assert!(v2.needs_rotation(&old));
        let opened = v2.open(&old, &TOTP_SEED).expect("old version opens");
        assert_eq!(&opened[..], b"upstream password");

        let resealed = v2.seal(&opened, &TOTP_SEED).expect("reseal");
        assert_eq!(sealed_version(&resealed), Some(2));
        assert!(!v2.needs_rotation(&resealed));
        assert_eq!(
            &v2.open(&resealed, &TOTP_SEED).expect("open")[..],
            b"upstream password"
        );

        // A ring rebuilt from the master key at version 2 is the same ring.
        let rebuilt = KeyRing::new(&master, 2).expect("v2");
        assert_eq!(
            &rebuilt.open(&resealed, &TOTP_SEED).expect("open")[..],
            b"upstream password"
        );
        assert_eq!(
            &rebuilt.open(&old, &TOTP_SEED).expect("open")[..],
            b"upstream password"
        );
    }

    #[test]
    fn versions_use_different_keys() {
        let v2 = ring(2);
        let sealed = v2.seal(b"secret", &TOTP_SEED).expect("seal");
        let mut relabelled = sealed.clone();
        relabelled[..4].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(
            v2.open(&relabelled, &TOTP_SEED).expect_err("relabelled"),
            VaultError::Tampered
        );
    }

    #[test]
    fn unknown_versions_fail() {
        let master = master();
        let v3 = KeyRing::new(&master, 3).expect("v3");
        let sealed = v3.seal(b"secret", &TOTP_SEED).expect("seal");
        let v1 = KeyRing::new(&master, 1).expect("v1");
        assert_eq!(
            v1.open(&sealed, &TOTP_SEED)
                .expect_err("two versions ahead"),
            VaultError::UnknownKeyVersion(3)
        );
        // One version ahead opens: a rotation commits before the new ring is swapped in.
        let v2 = KeyRing::new(&master, 2).expect("v2");
        assert_eq!(
            v2.open(&sealed, &TOTP_SEED)
                .expect("next version")
                .as_slice(),
            b"secret"
        );
        let mut zero = sealed.clone();
        zero[..4].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            v3.open(&zero, &TOTP_SEED).expect_err("zero"),
            VaultError::UnknownKeyVersion(0)
        );
    }

    #[test]
    fn another_master_key_cannot_open() {
        let sealed = ring(1).seal(b"secret", &TOTP_SEED).expect("seal");
        assert_eq!(
            ring(1).open(&sealed, &TOTP_SEED).expect_err("other key"),
            VaultError::Tampered
        );
    }

    #[test]
    fn version_bounds_are_enforced() {
        let master = master();
        assert_eq!(
            KeyRing::new(&master, 0).expect_err("zero"),
            VaultError::VersionOutOfRange(0)
        );
        assert_eq!(
            KeyRing::new(&master, MAX_KEY_VERSION + 1).expect_err("huge"),
            VaultError::VersionOutOfRange(MAX_KEY_VERSION + 1)
        );
    }

    #[test]
    fn debug_and_errors_reveal_no_secrets() {
        let ring = ring(1);
        assert_eq!(format!("{ring:?}"), "KeyRing { current_version: 1, .. }");
        let sealed = ring.seal(b"hunter2-secret", &TOTP_SEED).expect("seal");
        let err = ring
            .open(
                &sealed,
                &SealContext {
                    row: "43",
                    ..TOTP_SEED
                },
            )
            .expect_err("moved");
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }

    #[test]
    fn oversized_plaintext_is_refused() {
        let big = vec![0u8; MAX_PLAINTEXT_BYTES + 1];
        assert_eq!(
            ring(1).seal(&big, &TOTP_SEED).expect_err("too big"),
            VaultError::PlaintextTooLarge(MAX_PLAINTEXT_BYTES + 1)
        );
    }
}

//! The Ed25519 signing key (EX-1, NET-5): `<data dir>/keys/signing.key`, PKCS#8 PEM, mode
//! 0600 inside a 0700 directory. Generated on first start; refused at start when anyone
//! but the owner can read it. Parsed once: signing never re-reads or re-parses the key.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

pub const KEY_DIR: &str = "keys";
pub const SIGNING_KEY_FILE: &str = "signing.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{path} has mode {mode:o}; it must not be accessible to group or others (chmod {want:o} {path})"
    )]
    TooOpen { path: PathBuf, mode: u32, want: u32 },
    #[error("{path} is not a regular file or directory as expected")]
    WrongType { path: PathBuf },
    #[error("the signing key at {path} cannot be parsed as an Ed25519 PKCS#8 PEM key")]
    Unparsable { path: PathBuf },
    #[error("no signing key at {path}")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_DIR).join(SIGNING_KEY_FILE)
}

fn check_mode(path: &Path, want_dir: bool) -> Result<(), KeyError> {
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    if meta.is_dir() != want_dir || meta.file_type().is_symlink() {
        return Err(KeyError::WrongType {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_owned(),
            mode,
            want: if want_dir { 0o700 } else { 0o600 },
        });
    }
    Ok(())
}

/// Loads the signing key, generating it on first start. Checks the directory and file modes
/// every time.
pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, KeyError> {
    let dir = data_dir.join(KEY_DIR);
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
    }
    check_mode(&dir, true)?;
    let path = dir.join(SIGNING_KEY_FILE);
    if !path.exists() {
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        write_new(&path, &key)?;
        tracing::info!(path = %path.display(), "generated a new execution-token signing key");
    }
    check_mode(&path, false)?;
    read_key(&path)
}

/// Writes `key` as PKCS#8 PEM to a new file, owner-only, synced.
fn write_new(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Unparsable {
            path: path.to_owned(),
        })?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(pem.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn read_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = fs::read_to_string(path).map_err(io(path))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Unparsable {
        path: path.to_owned(),
    })
}

/// The public half, for offline audit verification and for printing the agent pin.
pub fn load_verifying_key(data_dir: &Path) -> Result<VerifyingKey, KeyError> {
    let path = key_path(data_dir);
    if !path.exists() {
        return Err(KeyError::Missing { path });
    }
    Ok(read_key(&path)?.verifying_key())
}

/// The key the server signs with now, swapped whole by a rotation (IR-4). Readers take an
/// `Arc` of the current pair: nothing is parsed per request.
pub struct KeyPair {
    pub signer: portcullis_proto::token::TokenSigner,
    /// The same key, for signing audit checkpoints.
    pub key: SigningKey,
}

pub struct SigningKeys {
    current: std::sync::RwLock<std::sync::Arc<KeyPair>>,
    /// One rotation at a time.
    pub(crate) rotating: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("key_id", &self.current().signer.key_id())
            .finish_non_exhaustive()
    }
}

impl SigningKeys {
    pub fn new(key: SigningKey) -> SigningKeys {
        SigningKeys {
            current: std::sync::RwLock::new(std::sync::Arc::new(pair(key))),
            rotating: tokio::sync::Mutex::new(()),
        }
    }

    pub fn current(&self) -> std::sync::Arc<KeyPair> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn replace(&self, key: SigningKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(pair(key));
    }
}

fn pair(key: SigningKey) -> KeyPair {
    KeyPair {
        signer: portcullis_proto::token::TokenSigner::new(key.clone()),
        key,
    }
}

/// Installs `new` as the signing key file: written 0600 beside the old one, the old one kept
/// as `signing.key.retired-<key id>`, then renamed into place.
pub fn install(data_dir: &Path, new: &SigningKey, old_id: &str) -> Result<(), KeyError> {
    let dir = data_dir.join(KEY_DIR);
    let path = dir.join(SIGNING_KEY_FILE);
    let next = dir.join(format!("{SIGNING_KEY_FILE}.next"));
    let _ = fs::remove_file(&next);
    write_new(&next, new)?;
    let retired = dir.join(format!("{SIGNING_KEY_FILE}.retired-{old_id}"));
    fs::rename(&path, &retired).map_err(io(&path))?;
    fs::rename(&next, &path).map_err(io(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloaded_identically() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.verifying_key(), b.verifying_key());
    }

    /// NET-5: a readable key file or directory is refused at start.
    #[test]
    fn open_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = key_path(dir.path());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyError::TooOpen { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(dir.path().join(KEY_DIR), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyError::TooOpen { mode: 0o755, .. })
        ));
    }
}

//! Signed checkpoints of the chain head (AUD-4), the file beside the state store that holds
//! the latest one, and the task that keeps it current.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Head;

pub const CHECKPOINT_FILE: &str = "audit.checkpoint";
/// The shortest time between two checkpoint writes; the final one is written at shutdown.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);
const CHECKPOINT_DOMAIN: &[u8] = b"portcullis/audit-checkpoint/v1\0";

/// A signed statement of the chain head: `seq` and its `hash`, by the server's signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u8,
    pub seq: i64,
    #[serde(with = "hex_hash")]
    pub hash: [u8; 32],
    pub key_id: String,
    pub signature: String,
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        <[u8; 32]>::try_from(v.as_slice())
            .map_err(|_| serde::de::Error::custom("hash must be 32 bytes"))
    }
}

fn checkpoint_message(seq: i64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 40);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

impl Checkpoint {
    pub fn sign(head: Head, key: &SigningKey) -> Checkpoint {
        let key_id = portcullis_proto::token::KeyId::of(&key.verifying_key()).to_hex();
        let signature = key.sign(&checkpoint_message(head.seq, &head.hash));
        Checkpoint {
            version: 1,
            seq: head.seq,
            hash: head.hash,
            key_id,
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }

    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = STANDARD.decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.version == 1
            && key
                .verify_strict(&checkpoint_message(self.seq, &self.hash), &sig)
                .is_ok()
    }
}

/// The checkpoint file beside the state file, replaced atomically.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    pub fn in_dir(data_dir: &Path) -> CheckpointFile {
        CheckpointFile {
            path: data_dir.join(CHECKPOINT_FILE),
        }
    }

    pub fn read(&self) -> anyhow::Result<Option<Checkpoint>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "audit checkpoint {} is unreadable: {e}",
                    self.path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn write(&self, cp: &Checkpoint) -> std::io::Result<()> {
        // A unique temporary name per write: two writers (the background checkpointer and
        // the final write at shutdown) never interleave inside one file, and each rename
        // installs a complete checkpoint.
        let tmp = self
            .path
            .with_extension(format!("tmp.{:016x}", rand::random::<u64>()));
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &serde_json::to_vec(cp)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// Keeps the checkpoint file at the committed head. Writes as soon as the head moves;
/// changes that arrive during a write are coalesced into the next one.
pub async fn run_checkpointer(
    mut head: watch::Receiver<Head>,
    file: CheckpointFile,
    keys: Arc<crate::keys::SigningKeys>,
) {
    loop {
        let current = *head.borrow_and_update();
        if current.seq > 0 {
            let cp = Checkpoint::sign(current, &keys.current().key);
            let file = file.clone();
            match tokio::task::spawn_blocking(move || file.write(&cp)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "writing the audit checkpoint failed"),
                Err(e) => tracing::error!(error = %e, "audit checkpoint task failed"),
            }
        }
        if head.changed().await.is_err() {
            return;
        }
        // Coalesce: under load the head moves on every commit; one signed, fsynced
        // checkpoint per interval is enough and keeps the disk for the state store.
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
    }
}

//! Password hashing, verification and strength rules (AUTH-1).
//!
//! Passwords are hashed with Argon2id at the OWASP baseline (m = 19 456 KiB, t = 2, p = 1) into
//! PHC strings. Verification of an unknown user runs the same Argon2 work against a dummy hash,
//! so response time does not reveal whether an account exists. The dummy is a PHC string with
//! the current parameters, a random salt and a random output: verifying against it computes
//! Argon2 exactly as for a real hash, yet building it costs nothing, so a server that never
//! sees a password login never allocates Argon2's working memory.
//!
//! Each Argon2 computation holds about 19 MiB for a few tens of milliseconds, so the server bounds
//! how many run at once with the [`WorkLimiter`] that [`Hasher::permits`] returns: take a permit
//! (waiting at most a short time), then hash or verify on a blocking thread while holding it.
//! The limiter is plain `std` so this crate stays independent of any async runtime.
//!
//! The Argon2 working memory is kept in a small pool (one buffer per permit) rather than
//! allocated per call: a fresh 19 MiB allocation freed on every login teaches the system
//! allocator to serve the next one from a per-thread arena that is never given back, so a
//! server that had seen logins on many threads held hundreds of MiB. Pooled buffers are
//! allocated once, zeroed after each use, and bounded by the permit count.
//!
//! New passwords must pass [`check_strength`]: at least [`MIN_PASSWORD_CHARS`] characters, at
//! most [`MAX_PASSWORD_BYTES`] bytes, not containing the user's name, and a zxcvbn score of at
//! least [`MIN_STRENGTH_SCORE`]. zxcvbn's built-in frequency lists are the common and breached
//! password check; no network lookup is made.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use zeroize::{Zeroize, Zeroizing};

/// Argon2id memory cost in KiB (OWASP password storage baseline).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// Argon2id iterations.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;

/// The fewest characters (Unicode scalar values, not bytes) a new password may have.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The most bytes a password may have; longer input is refused before any hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The lowest acceptable zxcvbn score (0–4); 3 means more than 10⁸ guesses are needed.
pub const MIN_STRENGTH_SCORE: u8 = 3;
/// User inputs shorter than this are not checked for containment, since nearly every password
/// would contain a one- or two-letter name.
const MIN_USER_INPUT_CHARS: usize = 3;

/// Why hashing failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The password exceeds [`MAX_PASSWORD_BYTES`].
    #[error("password is longer than {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    /// Argon2 refused its parameters or input.
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Salt length of new hashes, in bytes (the PHC recommendation).
const SALT_BYTES: usize = 16;
/// Output length of new hashes, in bytes (Argon2's default).
const OUTPUT_BYTES: usize = 32;

/// Hashes and verifies passwords with Argon2id.
pub struct Hasher {
    argon2: Argon2<'static>,
    /// The current parameters with a random salt and output, verified against whenever there
    /// is no real hash to check.
    dummy_hash: PasswordHash,
    dummy_verifications: AtomicU64,
    permits: WorkLimiter,
    memory: MemoryPool,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("max_concurrent", &self.permits.max_concurrent())
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// Builds a hasher whose [`Hasher::permits`] allow `max_concurrent` Argon2 computations at
    /// a time (at least one). No Argon2 runs here and no working memory is allocated: that
    /// waits for the first hash or verification.
    pub fn new(max_concurrent: usize) -> Result<Hasher, PasswordError> {
        let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
            .map_err(|e| PasswordError::Hashing(e.to_string()))?;
        let memory = MemoryPool {
            blocks: params.block_count(),
            keep: max_concurrent.max(1),
            free: Mutex::new(Vec::new()),
        };
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = dummy_hash(&argon2).map_err(|e| PasswordError::Hashing(e.to_string()))?;
        Ok(Hasher {
            argon2,
            dummy_hash,
            dummy_verifications: AtomicU64::new(0),
            permits: WorkLimiter::new(max_concurrent),
            memory,
        })
    }

    /// The limiter bounding concurrent Argon2 work; hold one of its permits around every
    /// [`Hasher::hash`] and [`Hasher::verify`] call.
    pub fn permits(&self) -> &WorkLimiter {
        &self.permits
    }

    /// Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) with a fresh
    /// random salt.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        hash_with(&self.argon2, &self.memory, password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| PasswordError::Hashing(e.to_string()))
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown user), an unparsable
    /// one, or an over-long password, the same Argon2 work runs against the dummy hash and the
    /// answer is `false`, so the time taken does not tell these cases apart from a wrong
    /// password.
    pub fn verify(&self, stored: Option<&str>, password: &str) -> bool {
        let parsed = stored.and_then(|s| PasswordHash::new(s).ok());
        match parsed {
            Some(hash) if password.len() <= MAX_PASSWORD_BYTES => {
                verify_with(&self.memory, password.as_bytes(), &hash) == Ok(true)
            }
            _ => {
                self.verify_dummy(password);
                false
            }
        }
    }

    /// How many verifications ran Argon2 against the dummy hash; lets tests prove the
    /// unknown-user path does the full work.
    pub fn verified_against_dummy(&self) -> u64 {
        self.dummy_verifications.load(Ordering::Relaxed)
    }

    /// Whether `stored` uses other parameters than the current ones and should be replaced by a
    /// fresh [`Hasher::hash`] after the next successful login.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        let Ok(hash) = PasswordHash::new(stored) else {
            return true;
        };
        let current = self.argon2.params();
        hash.algorithm != argon2::ARGON2ID_IDENT
            || hash.version != Some(u32::from(Version::V0x13))
            || Params::try_from(&hash).ok().is_none_or(|p| {
                (p.m_cost(), p.t_cost(), p.p_cost())
                    != (current.m_cost(), current.t_cost(), current.p_cost())
            })
    }

    fn verify_dummy(&self, password: &str) {
        let capped = &password.as_bytes()[..password.len().min(MAX_PASSWORD_BYTES)];
        // The dummy's output is 32 random bytes that no password is known to produce (a match
        // is a 2^-256 event); the outcome is irrelevant, only the work is wanted. It is counted only when Argon2 actually ran to
        // the comparison.
        if verify_with(&self.memory, capped, &self.dummy_hash) == Ok(false) {
            self.dummy_verifications.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many Argon2 working buffers the pool holds right now (at most the permit count).
    pub fn pooled_buffers(&self) -> usize {
        self.memory.lock().len()
    }
}

/// Argon2 working memory for the current parameters, reused across calls.
struct MemoryPool {
    /// Blocks one computation needs.
    blocks: usize,
    /// The most buffers kept; more only exist while more computations run than there are
    /// permits (callers that skip the limiter), and are freed after use.
    keep: usize,
    free: Mutex<Vec<Vec<Block>>>,
}

impl MemoryPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Block>>> {
        // A buffer list cannot be left half-updated, so poisoning is ignored.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs Argon2 into `out`, on a pooled buffer when its parameters match the pool's and on
    /// a fresh allocation otherwise (hashes made with older parameters).
    fn compute(
        &self,
        argon2: &Argon2<'_>,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2::Error> {
        if argon2.params().block_count() != self.blocks {
            return argon2.hash_password_into(password, salt, out);
        }
        let taken = self.lock().pop();
        let mut buffer = taken.unwrap_or_else(|| vec![Block::default(); self.blocks]);
        let result = argon2.hash_password_into_with_memory(password, salt, out, &mut buffer[..]);
        // The blocks are derived from the password: wipe them before anyone else sees them.
        buffer.iter_mut().for_each(Zeroize::zeroize);
        let mut free = self.lock();
        if free.len() < self.keep {
            free.push(buffer);
        }
        result
    }
}

/// A new PHC hash of `password` with `argon2`'s parameters and a fresh random salt.
fn hash_with(
    argon2: &Argon2<'_>,
    memory: &MemoryPool,
    password: &[u8],
) -> Result<PasswordHash, argon2::password_hash::Error> {
    let mut salt = [0u8; SALT_BYTES];
    rand::fill(&mut salt[..]);
    let mut out = Zeroizing::new([0u8; OUTPUT_BYTES]);
    memory.compute(argon2, password, &salt, &mut out[..])?;
    phc(argon2, &salt, &out[..])
}

/// A PHC hash with `argon2`'s parameters whose salt and output are random bytes: verifying
/// any password against it runs the same Argon2 computation as against a real hash of these
/// parameters, and no Argon2 run is needed to make it.
fn dummy_hash(argon2: &Argon2<'_>) -> Result<PasswordHash, argon2::password_hash::Error> {
    let mut salt = [0u8; SALT_BYTES];
    let mut out = [0u8; OUTPUT_BYTES];
    rand::fill(&mut salt[..]);
    rand::fill(&mut out[..]);
    phc(argon2, &salt, &out)
}

/// The Argon2id PHC hash of `argon2`'s parameters with `salt` and `output`.
fn phc(
    argon2: &Argon2<'_>,
    salt: &[u8],
    output: &[u8],
) -> Result<PasswordHash, argon2::password_hash::Error> {
    Ok(PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(u32::from(Version::V0x13)),
        params: ParamsString::try_from(argon2.params())?,
        salt: Some(Salt::new(salt)?),
        hash: Some(Output::new(output)?),
    })
}

/// Whether `password` matches `hash`, computed with the parameters the hash names; the
/// comparison is constant-time (`Output`'s equality).
fn verify_with(
    memory: &MemoryPool,
    password: &[u8],
    hash: &PasswordHash,
) -> Result<bool, argon2::password_hash::Error> {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return Err(argon2::password_hash::Error::PasswordInvalid);
    };
    let algorithm = Algorithm::try_from(hash.algorithm.as_str())?;
    let version = hash
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let params = Params::try_from(hash)?;
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    memory.compute(&argon2, password, salt.as_ref(), &mut out[..])?;
    Ok(Output::new(&out[..])? == *expected)
}

/// A counting limiter for blocking work: at most `max_concurrent` permits exist at once.
/// Cloning shares the same limit.
#[derive(Clone)]
pub struct WorkLimiter {
    inner: Arc<LimiterState>,
}

struct LimiterState {
    max: usize,
    in_use: Mutex<usize>,
    released: Condvar,
}

impl fmt::Debug for WorkLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkLimiter")
            .field("max_concurrent", &self.inner.max)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl WorkLimiter {
    /// A limiter allowing `max_concurrent` permits at once (at least one).
    pub fn new(max_concurrent: usize) -> WorkLimiter {
        WorkLimiter {
            inner: Arc::new(LimiterState {
                max: max_concurrent.max(1),
                in_use: Mutex::new(0),
                released: Condvar::new(),
            }),
        }
    }

    /// The configured bound.
    pub fn max_concurrent(&self) -> usize {
        self.inner.max
    }

    /// How many permits are held right now.
    pub fn in_use(&self) -> usize {
        *self.lock()
    }

    /// Takes a permit, blocking the calling thread for at most `wait`; `None` when none became
    /// free in time (the server answers "busy" rather than queueing without bound).
    pub fn try_acquire_for(&self, wait: Duration) -> Option<WorkPermit> {
        let deadline = Instant::now().checked_add(wait);
        let mut in_use = self.lock();
        while *in_use >= self.inner.max {
            let remaining = match deadline {
                Some(deadline) => deadline.checked_duration_since(Instant::now())?,
                // A wait too long to represent as an instant is effectively unbounded.
                None => Duration::from_secs(3600),
            };
            let (guard, _) = self
                .inner
                .released
                .wait_timeout(in_use, remaining)
                .unwrap_or_else(PoisonError::into_inner);
            in_use = guard;
        }
        *in_use += 1;
        Some(WorkPermit {
            inner: Arc::clone(&self.inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // The counter stays consistent even if a holder panicked, so poisoning is ignored.
        self.inner
            .in_use
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One unit of permitted work; the permit returns to its [`WorkLimiter`] when dropped. It owns
/// its share of the limiter, so it can move into a blocking task.
pub struct WorkPermit {
    inner: Arc<LimiterState>,
}

impl fmt::Debug for WorkPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkPermit")
    }
}

impl Drop for WorkPermit {
    fn drop(&mut self) {
        let mut in_use = self
            .inner
            .in_use
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *in_use = in_use.saturating_sub(1);
        drop(in_use);
        self.inner.released.notify_one();
    }
}

/// Why a new password was refused. The messages are written for the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters.
    #[error("use at least {min} characters (this password has {chars})")]
    TooShort {
        /// The required minimum.
        min: usize,
        /// How many characters the password has.
        chars: usize,
    },
    /// More than [`MAX_PASSWORD_BYTES`] bytes.
    #[error("use at most {max} bytes")]
    TooLong {
        /// The allowed maximum.
        max: usize,
    },
    /// The password contains the user name or another personal input.
    #[error("the password must not contain your user name or other account details")]
    ContainsUserInput,
    /// zxcvbn scored the password below [`MIN_STRENGTH_SCORE`].
    #[error(
        "this password is too easy to guess{}",
        feedback_text(warning, suggestions)
    )]
    Guessable {
        /// zxcvbn's score, 0–4.
        score: u8,
        /// zxcvbn's warning, when it has one.
        warning: Option<String>,
        /// zxcvbn's suggestions.
        suggestions: Vec<String>,
    },
}

fn feedback_text(warning: &Option<String>, suggestions: &[String]) -> String {
    let parts: Vec<&str> = warning
        .iter()
        .chain(suggestions)
        .map(String::as_str)
        .collect();
    if parts.is_empty() {
        ". Add another word or two; uncommon words are better.".to_owned()
    } else {
        format!(": {}", parts.join(" "))
    }
}

/// Checks a new password. `user_inputs` are the user's name, email and similar details: the
/// password may not contain any of them (case-insensitively, when at least three characters
/// long) and zxcvbn also penalises near matches.
pub fn check_strength(password: &str, user_inputs: &[&str]) -> Result<(), WeakPassword> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(WeakPassword::TooShort {
            min: MIN_PASSWORD_CHARS,
            chars,
        });
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(WeakPassword::TooLong {
            max: MAX_PASSWORD_BYTES,
        });
    }
    let lowered = password.to_lowercase();
    let contains_input = user_inputs.iter().any(|input| {
        let input = input.trim().to_lowercase();
        input.chars().count() >= MIN_USER_INPUT_CHARS && lowered.contains(&input)
    });
    if contains_input {
        return Err(WeakPassword::ContainsUserInput);
    }
    let entropy = zxcvbn::zxcvbn(password, user_inputs);
    let score = u8::from(entropy.score());
    if score < MIN_STRENGTH_SCORE {
        let feedback = entropy.feedback();
        return Err(WeakPassword::Guessable {
            score,
            warning: feedback.and_then(|f| f.warning()).map(|w| w.to_string()),
            suggestions: feedback
                .map(|f| f.suggestions().iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};
    use base64::Engine;
    use std::sync::OnceLock;

    /// Tests that do not count share one hasher.
    fn hasher() -> &'static Hasher {
        static HASHER: OnceLock<Hasher> = OnceLock::new();
        HASHER.get_or_init(|| Hasher::new(2).expect("hasher"))
    }

    #[test]
    fn hashes_are_argon2id_with_the_owasp_parameters() {
        let hash = hasher().hash("a sufficiently long password").expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(!hasher().needs_rehash(&hash));
        assert_ne!(
            hash,
            hasher().hash("a sufficiently long password").expect("hash"),
            "salted"
        );
    }

    #[test]
    fn verify_accepts_the_right_password_only() {
        let hash = hasher().hash("tangerine-wolf-parade-41").expect("hash");
        assert!(hasher().verify(Some(&hash), "tangerine-wolf-parade-41"));
        assert!(!hasher().verify(Some(&hash), "tangerine-wolf-parade-42"));
        assert!(!hasher().verify(Some(&hash), ""));
    }

    #[test]
    fn unknown_users_run_argon2_against_the_dummy_hash() {
        let hasher = Hasher::new(1).expect("hasher");
        assert_eq!(hasher.verified_against_dummy(), 0);
        // The dummy costs what a real hash costs: the current parameters, a full-size salt.
        let dummy = hasher.dummy_hash.to_string();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{dummy}"
        );
        assert!(!hasher.needs_rehash(&dummy));
        assert_eq!(hasher.dummy_hash.salt.map(|s| s.len()), Some(SALT_BYTES));
        assert!(!hasher.verify(None, "any password at all"));
        assert_eq!(hasher.verified_against_dummy(), 1);
        // An unparsable stored hash and an over-long password take the same path.
        assert!(!hasher.verify(Some("not a phc string"), "any password at all"));
        assert!(!hasher.verify(Some(&hasher.hash("x").expect("hash")), &"x".repeat(2000)));
        assert_eq!(hasher.verified_against_dummy(), 3);
        // A known user with a wrong password does not touch the dummy.
        let hash = hasher.hash("the real password").expect("hash");
        assert!(!hasher.verify(Some(&hash), "a wrong password"));
        assert_eq!(hasher.verified_against_dummy(), 3);
    }

    #[test]
    fn over_long_passwords_are_not_hashed() {
        assert!(matches!(
            hasher().hash(&"p".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordError::TooLong)
        ));
        assert!(hasher().hash(&"p".repeat(MAX_PASSWORD_BYTES)).is_ok());
    }

    #[test]
    fn pooled_hashes_interoperate_with_the_reference_implementation() {
        let ours = hasher().hash("correct horse battery").expect("hash");
        let parsed = PasswordHash::new(&ours).expect("phc");
        let reference = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None).expect("params"),
        );
        assert!(
            reference
                .verify_password(b"correct horse battery", &parsed)
                .is_ok()
        );
        assert!(
            reference
                .verify_password(b"correct horse batterz", &parsed)
                .is_err()
        );
        let theirs = reference
            .hash_password(b"staple")
            .expect("hash")
            .to_string();
        assert!(hasher().verify(Some(&theirs), "staple"));
        assert!(!hasher().verify(Some(&theirs), "stapler"));
    }

    #[test]
    fn hashes_with_older_parameters_still_verify_outside_the_pool() {
        let older = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).expect("params"),
        )
        .hash_password(b"older password")
        .expect("hash")
        .to_string();
        assert!(hasher().verify(Some(&older), "older password"));
        assert!(!hasher().verify(Some(&older), "other password"));
    }

    #[test]
    fn the_memory_pool_never_holds_more_buffers_than_permits() {
        let hasher = Hasher::new(1).expect("hasher");
        assert_eq!(
            hasher.pooled_buffers(),
            0,
            "building a hasher runs no Argon2 and holds no buffer"
        );
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| assert!(hasher.hash("concurrent hashing").is_ok()));
            }
        });
        assert_eq!(hasher.pooled_buffers(), 1);
        let pool = hasher.memory.lock();
        assert!(
            pool.iter()
                .flatten()
                .all(|block| block.as_ref().iter().all(|w| *w == 0)),
            "a pooled buffer still holds password-derived blocks"
        );
    }

    #[test]
    fn weaker_stored_hashes_need_rehash() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).expect("params"),
        )
        .hash_password(b"pw")
        .expect("hash")
        .to_string();
        assert!(hasher().needs_rehash(&weak));
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None).expect("params"),
        )
        .hash_password(b"pw")
        .expect("hash")
        .to_string();
        assert!(hasher().needs_rehash(&argon2i));
        assert!(hasher().needs_rehash("garbage"));
    }

    #[test]
    fn limiter_times_out_while_the_only_permit_is_held() {
        let limiter = WorkLimiter::new(1);
        let first = limiter
            .try_acquire_for(Duration::ZERO)
            .expect("first permit");
        assert_eq!(limiter.in_use(), 1);
        let started = Instant::now();
        assert!(limiter.try_acquire_for(Duration::from_millis(50)).is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(first);
        assert_eq!(limiter.in_use(), 0);
        assert!(limiter.try_acquire_for(Duration::ZERO).is_some());
    }

    #[test]
    fn limiter_hands_a_released_permit_to_a_waiting_thread() {
        let limiter = WorkLimiter::new(1);
        let held = limiter.try_acquire_for(Duration::ZERO).expect("permit");
        let waiter = {
            let limiter = limiter.clone();
            std::thread::spawn(move || limiter.try_acquire_for(Duration::from_secs(10)).is_some())
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert!(waiter.join().expect("thread"));
    }

    #[test]
    fn limiter_allows_up_to_its_bound() {
        let limiter = WorkLimiter::new(3);
        let permits: Vec<_> = (0..3)
            .map(|_| limiter.try_acquire_for(Duration::ZERO).expect("permit"))
            .collect();
        assert!(limiter.try_acquire_for(Duration::ZERO).is_none());
        drop(permits);
        assert_eq!(limiter.in_use(), 0);
        assert_eq!(WorkLimiter::new(0).max_concurrent(), 1);
        assert_eq!(hasher().permits().max_concurrent(), 2);
    }

    fn check(password: &str, user_inputs: &[&str], expect: &str) {
        let got = match check_strength(password, user_inputs) {
            Ok(()) => "ok".to_owned(),
            Err(WeakPassword::TooShort { .. }) => "too short".to_owned(),
            Err(WeakPassword::TooLong { .. }) => "too long".to_owned(),
            Err(WeakPassword::ContainsUserInput) => "contains user input".to_owned(),
            Err(WeakPassword::Guessable { .. }) => "guessable".to_owned(),
        };
        assert_eq!(got, expect, "password {password:?}");
    }

    #[test]
    fn strength_rules() {
        let table: &[(&str, &[&str], &str)] = &[
            ("short", &[], "too short"),
            ("elevenchars", &[], "too short"),
            // Eleven characters but 22 bytes: length counts characters.
            ("ééééééééééé", &[], "too short"),
            ("password1234", &[], "guessable"),
            ("correcthorse", &[], "guessable"),
            ("qwertyuiop123", &[], "guessable"),
            ("aaaaaaaaaaaaaaaa", &[], "guessable"),
            ("abcdefghijklmnop", &[], "guessable"),
            ("iloveyou2024!", &[], "guessable"),
            ("Password2024!", &[], "guessable"),
            ("alice-tangerine-wolf-41", &["alice"], "contains user input"),
            (
                "xX-ALICE-Xx-tangerine-41",
                &["alice"],
                "contains user input",
            ),
            ("orbit-velvet-cactus-lantern", &[], "ok"),
            ("tangerine wolf parade at 41 knots", &["al"], "ok"),
            ("q7#Vr2!mLp9@Zx4&", &[], "ok"),
        ];
        for (password, inputs, expect) in table {
            check(password, inputs, expect);
        }
        check(&"x9!".repeat(400), &[], "too long");
    }

    #[test]
    fn long_passphrases_and_random_strings_are_accepted() {
        for passphrase in [
            "orbit-velvet-cactus-lantern-quartz",
            "meadow harbor falcon pepper glacier",
            "walnut.tundra.copper.sonnet.marble",
            "Thistle-Orbit-Glacier-Pepper-Sonnet",
        ] {
            assert_eq!(
                check_strength(passphrase, &["alice.smith"]),
                Ok(()),
                "{passphrase}"
            );
        }
        // What a password manager produces: 18 random bytes, 24 characters.
        for _ in 0..20 {
            let mut bytes = [0u8; 18];
            rand::fill(&mut bytes[..]);
            let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            assert_eq!(
                check_strength(&random, &["alice.smith"]),
                Ok(()),
                "{random}"
            );
        }
    }

    #[test]
    fn weak_password_messages_explain_the_problem() {
        assert_eq!(
            check_strength("short", &[]).expect_err("short").to_string(),
            "use at least 12 characters (this password has 5)"
        );
        let err = check_strength("password1234", &[]).expect_err("weak");
        let message = err.to_string();
        assert!(
            message.starts_with("this password is too easy to guess"),
            "{message}"
        );
        match err {
            WeakPassword::Guessable {
                score,
                warning,
                suggestions,
            } => {
                assert!(score < MIN_STRENGTH_SCORE);
                assert!(warning.is_some() || !suggestions.is_empty());
                for text in warning.iter().chain(&suggestions) {
                    assert!(message.contains(text.as_str()), "{message} lacks {text}");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

//! IR-4: rotation announcements extend trust only from a trusted key, and the replaced key
//! stops signing acceptable tokens one maximum token lifetime after the announcement.

use base64::Engine;

use super::*;
use crate::token::{KeyAnnouncement, MAX_TOKEN_TTL_MS};

#[test]
fn a_new_key_is_trusted_only_through_an_announcement_by_a_trusted_key() {
    let f = fixture();
    let mut keys = f.keys.clone();
    let next = fresh_key();
    let announcement = KeyAnnouncement::sign(&f.raw_key, &next.verifying_key(), NOW);
    let id = keys.accept_rotation(&announcement).expect("accepted");
    assert_eq!(id, KeyId::of(&next.verifying_key()));

    let new_signer = TokenSigner::new(next.clone());
    let claims = claims_for(new_signer.key_id(), NOW);
    let token = new_signer.sign(&claims).expect("sign");
    let mut replay = ReplayCache::new(16);
    verify(&keys, &token, &expected(&claims), &mut replay).expect("the new key verifies");

    // An announcement by a key nobody pinned extends nothing.
    let stranger = fresh_key();
    let forged = KeyAnnouncement::sign(&stranger, &fresh_key().verifying_key(), NOW);
    let mut untouched = f.keys.clone();
    assert!(matches!(
        untouched.accept_rotation(&forged),
        Err(TokenError::UnknownKey(_))
    ));
    // A tampered announcement (another key swapped in) fails the signature.
    let mut swapped = announcement.clone();
    let other = fresh_key().verifying_key();
    swapped.new_public_key = base64::engine::general_purpose::STANDARD.encode(other.as_bytes());
    swapped.new_key_id = KeyId::of(&other).to_hex();
    assert_eq!(
        untouched.accept_rotation(&swapped),
        Err(TokenError::BadSignature)
    );
    assert_eq!(untouched.len(), 1, "nothing was added");
}

#[test]
fn the_old_key_is_refused_after_the_announcement_plus_the_longest_token_lifetime() {
    let f = fixture();
    let mut keys = f.keys.clone();
    let next = fresh_key();
    keys.accept_rotation(&KeyAnnouncement::sign(
        &f.raw_key,
        &next.verifying_key(),
        NOW,
    ))
    .expect("accepted");
    // A token the old key signed just before the rotation still verifies while it lives.
    let claims = claims_for(f.signer.key_id(), NOW);
    let token = f.signer.sign(&claims).expect("sign");
    let mut replay = ReplayCache::new(16);
    verify(&keys, &token, &expected(&claims), &mut replay).expect("in flight");
    // One signed with the old key after rotation + TTL is refused, whatever it claims.
    let late = claims_for(f.signer.key_id(), NOW + MAX_TOKEN_TTL_MS);
    let token = f.signer.sign(&late).expect("sign");
    let mut at = expected(&late);
    at.now_ms = NOW + MAX_TOKEN_TTL_MS + 1;
    assert_eq!(
        verify(&keys, &token, &at, &mut replay).err(),
        Some(TokenError::KeyRetired(f.signer.key_id()))
    );
    // A replaced key cannot announce another successor, later or backdated: whoever stole
    // it cannot slip in a key of their own.
    for at in [NOW + MAX_TOKEN_TTL_MS + 1, NOW + 1, NOW - 1] {
        let forged = KeyAnnouncement::sign(&f.raw_key, &fresh_key().verifying_key(), at);
        assert_eq!(
            keys.accept_rotation(&forged),
            Err(TokenError::KeyRetired(f.signer.key_id()))
        );
    }
    // The genuine announcement again is harmless (agents re-read the whole chain).
    keys.accept_rotation(&KeyAnnouncement::sign(
        &f.raw_key,
        &next.verifying_key(),
        NOW,
    ))
    .expect("idempotent");
}

#[test]
fn chains_are_followed_link_by_link() {
    let f = fixture();
    let second = fresh_key();
    let third = fresh_key();
    let chain = vec![
        KeyAnnouncement::sign(&f.raw_key, &second.verifying_key(), NOW),
        KeyAnnouncement::sign(&second, &third.verifying_key(), NOW + 1_000),
    ];
    let mut keys = f.keys.clone();
    let accepted = keys.accept_chain(&chain);
    assert_eq!(accepted.len(), 2);
    let mut skipping = f.keys.clone();
    assert!(
        skipping.accept_chain(&chain[1..]).is_empty(),
        "the second link alone starts at no trusted key"
    );
}

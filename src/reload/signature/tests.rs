//! Signature checks against freshly generated minisign keys: file signatures, manifests,
//! legacy signatures, untrusted keys.

use super::*;

fn keypair() -> (minisign::KeyPair, String) {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().expect("keypair");
    let pk = kp.pk.to_base64();
    (kp, pk)
}

/// BLAKE2b-512, unkeyed (RFC 7693), written out for the legacy-signature fixture.
fn blake2b_512(data: &[u8]) -> Vec<u8> {
    const IV: [u64; 8] = [
        0x6a09e667f3bcc908,
        0xbb67ae8584caa73b,
        0x3c6ef372fe94f82b,
        0xa54ff53a5f1d36f1,
        0x510e527fade682d1,
        0x9b05688c2b3e6c1f,
        0x1f83d9abfb41bd6b,
        0x5be0cd19137e2179,
    ];
    const SIGMA: [[usize; 16]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
        [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
        [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
        [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
        [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
        [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
        [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
        [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
        [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    ];
    fn g(v: &mut [u64; 16], a: usize, b: usize, c: usize, d: usize, x: u64, y: u64) {
        v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
        v[d] = (v[d] ^ v[a]).rotate_right(32);
        v[c] = v[c].wrapping_add(v[d]);
        v[b] = (v[b] ^ v[c]).rotate_right(24);
        v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
        v[d] = (v[d] ^ v[a]).rotate_right(16);
        v[c] = v[c].wrapping_add(v[d]);
        v[b] = (v[b] ^ v[c]).rotate_right(63);
    }
    let mut h = IV;
    h[0] ^= 0x0101_0000 ^ 64;
    let blocks = data.len().div_ceil(128).max(1);
    for i in 0..blocks {
        let mut block = [0u8; 128];
        let chunk = &data[i * 128..data.len().min((i + 1) * 128)];
        block[..chunk.len()].copy_from_slice(chunk);
        let m: Vec<u64> = block
            .chunks(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let last = i + 1 == blocks;
        let counter = if last { data.len() } else { (i + 1) * 128 } as u64;
        let mut v = [0u64; 16];
        v[..8].copy_from_slice(&h);
        v[8..].copy_from_slice(&IV);
        v[12] ^= counter;
        if last {
            v[14] = !v[14];
        }
        for s in &SIGMA[..] {
            g(&mut v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
            g(&mut v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
            g(&mut v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
            g(&mut v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
            g(&mut v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
            g(&mut v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
            g(&mut v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
            g(&mut v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
        }
        for s in &SIGMA[..2] {
            g(&mut v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
            g(&mut v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
            g(&mut v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
            g(&mut v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
            g(&mut v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
            g(&mut v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
            g(&mut v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
            g(&mut v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
        }
        for j in 0..8 {
            h[j] ^= v[j] ^ v[j + 8];
        }
    }
    h.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn blake2b_matches_the_rfc_7693_example() {
    let got: String = blake2b_512(b"abc")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        got,
        "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1\
         7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
    );
}

fn sign(kp: &minisign::KeyPair, data: &[u8]) -> String {
    minisign::sign(Some(&kp.pk), &kp.sk, std::io::Cursor::new(data), None, None)
        .expect("sign")
        .into_string()
}

#[test]
fn file_signature_verifies_only_with_the_right_key_and_content() {
    let (kp, pk) = keypair();
    let (_, other_pk) = keypair();
    let mut keys = TrustedKeys::none();
    keys.add(&pk).expect("key");
    let sig = sign(&kp, b"version: 1\n");
    assert_eq!(keys.verify(b"version: 1\n", "b.minisig", &sig), Ok(()));
    assert_eq!(
        keys.verify(b"version: 2\n", "b.minisig", &sig),
        Err(SignatureError::Invalid("b.minisig".into()))
    );
    let mut wrong = TrustedKeys::none();
    wrong.add(&other_pk).expect("key");
    let key_id = format!(
        "{:016X}",
        u64::from_le_bytes(kp.pk.keynum().try_into().expect("8-byte key ID"))
    );
    assert_eq!(
        wrong.verify(b"version: 1\n", "b.minisig", &sig),
        Err(SignatureError::UntrustedKey {
            file: "b.minisig".into(),
            key_id: key_id.clone()
        })
    );
    let shown = wrong
        .verify(b"version: 1\n", "b.minisig", &sig)
        .expect_err("untrusted key")
        .to_string();
    assert!(
        shown.contains(&key_id) && shown.contains("not a trusted key"),
        "{shown}"
    );
    assert!(matches!(
        keys.verify(b"x", "b.minisig", "garbage"),
        Err(SignatureError::Malformed { .. })
    ));
}

/// A legacy signature (Ed25519 over the content itself) made with the test key. minisign 0.7
/// only makes prehashed signatures, which are Ed25519 over BLAKE2b-512 of the content; so a
/// prehashed signature of `data`, relabelled as legacy, is a legacy signature of
/// BLAKE2b-512(`data`). Returns that content and the signature.
fn legacy(kp: &minisign::KeyPair, data: &[u8]) -> (Vec<u8>, String) {
    let prehashed = sign(kp, data);
    let mut lines: Vec<String> = prehashed.lines().map(str::to_string).collect();
    let mut raw = crate::reload::base64::decode(&lines[1]).expect("base64");
    assert_eq!(&raw[..2], b"ED", "prehashed algorithm tag");
    raw[1] = b'd';
    lines[1] = crate::reload::base64::encode(&raw);
    let content = blake2b_512(data);
    (content, lines.join("\n") + "\n")
}

#[test]
fn legacy_signatures_are_accepted_for_their_content_only() {
    let (kp, pk) = keypair();
    let mut keys = TrustedKeys::none();
    keys.add(&pk).expect("key");
    let (content, sig) = legacy(&kp, b"version: 1\n");
    assert_eq!(keys.verify(&content, "b.minisig", &sig), Ok(()));
    let mut tampered = content.clone();
    tampered[0] ^= 1;
    assert_eq!(
        keys.verify(&tampered, "b.minisig", &sig),
        Err(SignatureError::Invalid("b.minisig".into()))
    );
    // And the original content does not verify under the relabelled signature.
    assert!(keys.verify(b"version: 1\n", "b.minisig", &sig).is_err());
}

#[test]
fn manifest_catches_tampered_unlisted_and_missing_files() {
    let (kp, pk) = keypair();
    let mut keys = TrustedKeys::none();
    keys.add(&pk).expect("key");
    let a = b"a: 1\n".to_vec();
    let b = b"b: 2\n".to_vec();
    let manifest = format!(
        "{:x}  a.yaml\n{:x}  b.yaml\n",
        Sha256::digest(&a),
        Sha256::digest(&b)
    );
    let sig = sign(&kp, manifest.as_bytes());
    let files = vec![
        ("a.yaml".to_string(), a.clone()),
        ("b.yaml".to_string(), b.clone()),
    ];
    assert_eq!(
        keys.verify_manifest(manifest.as_bytes(), &sig, &files),
        Ok(())
    );

    let tampered = vec![
        ("a.yaml".to_string(), a.clone()),
        ("b.yaml".to_string(), b"b: 3\n".to_vec()),
    ];
    assert_eq!(
        keys.verify_manifest(manifest.as_bytes(), &sig, &tampered),
        Err(SignatureError::HashMismatch("b.yaml".into()))
    );
    let mut extra = files.clone();
    extra.push(("c.yaml".to_string(), b"c: 1\n".to_vec()));
    assert_eq!(
        keys.verify_manifest(manifest.as_bytes(), &sig, &extra),
        Err(SignatureError::Unlisted("c.yaml".into()))
    );
    assert_eq!(
        keys.verify_manifest(manifest.as_bytes(), &sig, &files[..1]),
        Err(SignatureError::MissingFile("b.yaml".into()))
    );
    let forged = manifest.replace("a.yaml", "z.yaml");
    assert!(keys
        .verify_manifest(forged.as_bytes(), &sig, &files)
        .is_err());
}

//! cosign's encrypted private key (`cosign generate-key-pair` writes `cosign.key`), read so an
//! operator can sign with the key their cosign setup already has. Feature `cosign-keys`: only the
//! CLI signs; the edge agent and the controller verify and must not link scrypt.
//!
//! The format (go-securesystemslib `encrypted`, as cosign uses it): a PEM block `ENCRYPTED
//! SIGSTORE PRIVATE KEY` (or the older `ENCRYPTED COSIGN PRIVATE KEY`) whose body is JSON:
//! `{"kdf":{"name":"scrypt","params":{"N":..,"r":8,"p":1},"salt":b64},
//! "cipher":{"name":"nacl/secretbox","nonce":b64},"ciphertext":b64}`. The 32-byte secretbox key is
//! `scrypt(password, salt, N, r, p)`; the plaintext is a PKCS#8 DER private key. Like cosign,
//! only the three scrypt parameter sets the library writes are accepted (N = 2^15, 2^16, 2^17 with
//! r = 8, p = 1): a key file cannot make the CLI allocate gigabytes, and SEC1 plaintext is refused
//! as cosign refuses it.

use base64::Engine;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use serde::Deserialize;

use super::key::{KeyError, SigningKey};

/// The PEM label cosign writes.
pub const SIGSTORE_PEM_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The PEM label older cosign versions wrote (still read by cosign).
pub const COSIGN_PEM_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";

/// `log2(N)` values accepted: securesystemslib's legacy, standard and OWASP parameter sets.
const ACCEPTED_LOG_N: [u8; 3] = [15, 16, 17];

#[derive(Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// The base64 body of the first PEM block with one of cosign's encrypted labels, if any.
fn encrypted_body(pem: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(pem).ok()?;
    for label in [SIGSTORE_PEM_LABEL, COSIGN_PEM_LABEL] {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(start) = text.find(&begin) {
            let rest = &text[start + begin.len()..];
            let stop = rest.find(&end)?;
            return Some(rest[..stop].split_whitespace().collect());
        }
    }
    None
}

/// Whether `pem` holds a cosign encrypted private key (then it needs a password).
pub fn is_cosign_pem(pem: &[u8]) -> bool {
    encrypted_body(pem).is_some()
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, KeyError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| KeyError(format!("cosign key: {what} is not base64: {e}")))
}

impl SigningKey {
    /// Decrypts cosign's `cosign.key` (PEM `ENCRYPTED SIGSTORE PRIVATE KEY` or `ENCRYPTED COSIGN
    /// PRIVATE KEY`) with `password` (cosign's `COSIGN_PASSWORD`; empty for a key generated
    /// without one). A wrong password and a corrupt file are the same error: secretbox only says
    /// the authentication tag does not match.
    pub fn from_cosign_pem(pem: &[u8], password: &[u8]) -> Result<Self, KeyError> {
        let body = encrypted_body(pem).ok_or_else(|| {
            KeyError(format!(
                "no \"{SIGSTORE_PEM_LABEL}\" or \"{COSIGN_PEM_LABEL}\" PEM block"
            ))
        })?;
        let json = b64("the PEM body", &body)?;
        let env: Envelope = serde_json::from_slice(&json)
            .map_err(|e| KeyError(format!("cosign key: not the encrypted-key JSON: {e}")))?;
        if env.kdf.name != "scrypt" {
            return Err(KeyError(format!(
                "cosign key: unsupported kdf {:?} (scrypt expected)",
                env.kdf.name
            )));
        }
        if env.cipher.name != "nacl/secretbox" {
            return Err(KeyError(format!(
                "cosign key: unsupported cipher {:?} (nacl/secretbox expected)",
                env.cipher.name
            )));
        }
        let ScryptParams { n, r, p } = env.kdf.params;
        let log_n = ACCEPTED_LOG_N
            .into_iter()
            .find(|l| n == 1u64 << l)
            .filter(|_| r == 8 && p == 1)
            .ok_or_else(|| {
                KeyError(format!(
                    "cosign key: unsupported scrypt parameters N={n} r={r} p={p} (cosign writes N=32768, 65536 or 131072 with r=8 p=1)"
                ))
            })?;
        let params = scrypt::Params::new(log_n, r, p)
            .map_err(|e| KeyError(format!("cosign key: scrypt parameters: {e}")))?;
        let salt = b64("the salt", &env.kdf.salt)?;
        let mut secret = [0u8; 32];
        scrypt::scrypt(password, &salt, &params, &mut secret)
            .map_err(|e| KeyError(format!("cosign key: scrypt: {e}")))?;
        let nonce = b64("the nonce", &env.cipher.nonce)?;
        if nonce.len() != 24 {
            return Err(KeyError(format!(
                "cosign key: the nonce has {} bytes, not 24",
                nonce.len()
            )));
        }
        let ciphertext = b64("the ciphertext", &env.ciphertext)?;
        let cipher = XSalsa20Poly1305::new_from_slice(&secret)
            .map_err(|_| KeyError("cosign key: bad secretbox key length".to_owned()))?;
        let der = cipher
            .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
            .map_err(|_| {
                KeyError("cosign key: wrong password (or a corrupt key file)".to_owned())
            })?;
        Self::from_pkcs8_der(&der).map_err(|e| {
            KeyError(format!(
                "cosign key: the decrypted key is not a PKCS#8 P-256 or Ed25519 key ({e})"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    //! Keys written by cosign (and sigstore-rs), with their published passwords:
    //! tests/data/cosign/README.md, section 3 (the `.pub.derived` files are their public halves).
    use super::*;
    use crate::signature::PublicKey;

    fn data(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/cosign/cosign-encrypted-keys")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn assert_decrypts(stem: &str, password: &str) {
        let pem = data(&format!("{stem}.key"));
        assert!(is_cosign_pem(&pem), "{stem}");
        let key = SigningKey::from_cosign_pem(&pem, password.as_bytes())
            .unwrap_or_else(|e| panic!("{stem}: {e}"));
        let public = PublicKey::from_pem(&data(&format!("{stem}.pub.derived"))).unwrap();
        assert_eq!(key.public(), &public, "{stem}");
        let sig = key.sign(b"payload").unwrap();
        assert!(public.verifies(b"payload", &sig), "{stem}");
    }

    #[test]
    fn cosign_keys_decrypt_to_their_public_keys() {
        // cosign's own test keys: the current label and the legacy one (scrypt N = 2^15).
        assert_decrypts("cosign-keys_test-pemsigstorekey", "hello");
        assert_decrypts("cosign-keys_test-pemcosignkey", "hello");
        // generated by cosign with an empty password (N = 2^16, today's default).
        assert_decrypts("sigstore-rs-cosign_generated_encrypted_empty_private", "");
        // Ed25519 in a PKCS#8 v2 document (with its public key).
        assert_decrypts("sigstore-rs-ed25519_encrypted_private", "123");
    }

    #[test]
    fn a_wrong_password_is_refused_with_a_message() {
        let pem = data("cosign-keys_test-pemsigstorekey.key");
        let err = SigningKey::from_cosign_pem(&pem, b"hellO").unwrap_err();
        assert!(err.0.contains("wrong password"), "{err}");
    }

    #[test]
    fn sec1_plaintext_is_refused_as_cosign_refuses_it() {
        let pem = data("cosign-keys_test-pemcosigneckey-SEC1-rejected.key");
        let err = SigningKey::from_cosign_pem(&pem, b"hello").unwrap_err();
        assert!(err.0.contains("PKCS#8"), "{err}");
    }

    #[test]
    fn other_pem_and_other_parameters_are_refused() {
        assert!(!is_cosign_pem(
            b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"
        ));
        assert!(SigningKey::from_cosign_pem(b"nothing", b"").is_err());
        // N = 2^20 would take a gigabyte: refused before scrypt runs.
        let json = r#"{"kdf":{"name":"scrypt","params":{"N":1048576,"r":8,"p":1},"salt":"AA=="},"cipher":{"name":"nacl/secretbox","nonce":"AA=="},"ciphertext":"AA=="}"#;
        let body = base64::engine::general_purpose::STANDARD.encode(json);
        let pem = format!(
            "-----BEGIN {SIGSTORE_PEM_LABEL}-----\n{body}\n-----END {SIGSTORE_PEM_LABEL}-----\n"
        );
        let err = SigningKey::from_cosign_pem(pem.as_bytes(), b"").unwrap_err();
        assert!(err.0.contains("N=1048576"), "{err}");
    }
}

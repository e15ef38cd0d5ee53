//! Public and private keys of cosign-compatible signatures: ECDSA P-256 with SHA-256 (what
//! `cosign generate-key-pair` makes) and Ed25519.
//!
//! The cryptography is *ring*'s, the library rustls already links into every twinflash binary
//! for TLS: verifying a signature adds no second implementation of P-256 or Ed25519 to the edge
//! binary (docs/benchmarks.md, "Signature verification"). PEM is read with `rustls-pki-types`,
//! also already linked. A SubjectPublicKeyInfo of these two algorithms has exactly one DER
//! encoding (RFC 5480 and RFC 8410), so a key is recognised by its fixed DER prefix instead of a
//! general ASN.1 parser; anything else is refused with a message naming what is supported.

use ring::signature::{self as sig, KeyPair as _};
use rustls::pki_types::pem::{PemObject, SectionKind};
use sha2::{Digest, Sha256};

/// DER prefix of an ECDSA P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1), followed by
/// the 65-byte uncompressed point (RFC 5480).
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (id-Ed25519), followed by the 32-byte key
/// (RFC 8410).
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The PKCS#8 wrapping of a SEC1 ("EC PRIVATE KEY") P-256 key is fixed up to the length bytes
/// (RFC 5208 + RFC 5915): version 0, id-ecPublicKey with prime256v1, then the SEC1 DER as an
/// OCTET STRING.
const P256_PKCS8_ALGORITHM: &[u8] = &[
    0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
    0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
];

/// The signature algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256; signatures are ASN.1 DER (cosign's default keys).
    EcdsaP256,
    /// Ed25519 (pure, over the message itself).
    Ed25519,
}

impl KeyKind {
    /// A short name for messages and `twinflash inspect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256-sha256",
            Self::Ed25519 => "ed25519",
        }
    }
}

/// A key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// A public key that signatures are checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    kind: KeyKind,
    /// The raw key ring verifies with: the uncompressed point, or the 32 Ed25519 bytes.
    raw: Vec<u8>,
    /// The SubjectPublicKeyInfo DER.
    spki: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({}, {})", self.kind.as_str(), self.key_id())
    }
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), the format of cosign's `cosign.pub`.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let mut found = None;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
            match section {
                Ok((SectionKind::PublicKey, der)) => {
                    found = Some(der);
                    break;
                }
                Ok(_) => {}
                Err(e) => return Err(KeyError(format!("not a PEM file: {e}"))),
            }
        }
        let der = found.ok_or_else(|| {
            KeyError("no \"PUBLIC KEY\" PEM block (a cosign.pub holds one)".to_owned())
        })?;
        Self::from_spki_der(&der)
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let (kind, raw) = if let Some(point) = der.strip_prefix(P256_SPKI_PREFIX) {
            if point.len() != 65 || point.first() != Some(&0x04) {
                return Err(KeyError(
                    "P-256 key is not a 65-byte uncompressed point".to_owned(),
                ));
            }
            (KeyKind::EcdsaP256, point)
        } else if let Some(key) = der.strip_prefix(ED25519_SPKI_PREFIX) {
            if key.len() != 32 {
                return Err(KeyError("Ed25519 key is not 32 bytes".to_owned()));
            }
            (KeyKind::Ed25519, key)
        } else {
            return Err(KeyError(
                "unsupported public key: twinflash verifies ECDSA P-256 (cosign's default) and Ed25519 keys"
                    .to_owned(),
            ));
        };
        Ok(Self {
            kind,
            raw: raw.to_vec(),
            spki: der.to_vec(),
        })
    }

    /// The algorithm.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// `sha256:<hex>` of the SubjectPublicKeyInfo DER: a stable id for logs and Events, and the
    /// value cosign puts in a bundle's `publicKey.hint` when none is given.
    pub fn key_id(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.spki)))
    }

    /// SHA-256 of the SubjectPublicKeyInfo DER (cosign's bundle key hint, base64-encoded).
    pub fn spki_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.spki).into()
    }

    /// The key as PEM `PUBLIC KEY` (what `twinflash sign` prints for `cosign verify --key`).
    pub fn to_pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.spki);
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }

    /// Whether `signature` is this key's signature of `message` (ECDSA: DER over SHA-256 of the
    /// message; Ed25519: over the message).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let alg: &dyn sig::VerificationAlgorithm = match self.kind {
            KeyKind::EcdsaP256 => &sig::ECDSA_P256_SHA256_ASN1,
            KeyKind::Ed25519 => &sig::ED25519,
        };
        sig::UnparsedPublicKey::new(alg, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// A private key for `twinflash sign`.
pub struct SigningKey {
    pair: Pair,
    public: PublicKey,
}

enum Pair {
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?})", self.public)
    }
}

impl SigningKey {
    /// Reads an unencrypted PEM private key: PKCS#8 `PRIVATE KEY` (P-256 or Ed25519, e.g.
    /// `openssl genpkey -algorithm ed25519`) or SEC1 `EC PRIVATE KEY` (`openssl ecparam -genkey
    /// -name prime256v1`). cosign's encrypted `cosign.key` is read by [`SigningKey::from_cosign_pem`]
    /// (feature `cosign-keys`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
            match section {
                Ok((SectionKind::PrivateKey, der)) => return Self::from_pkcs8_der(&der),
                Ok((SectionKind::EcPrivateKey, der)) => {
                    return Self::from_pkcs8_der(&sec1_to_pkcs8(&der)?);
                }
                Ok(_) => {}
                Err(e) => return Err(KeyError(format!("not a PEM file: {e}"))),
            }
        }
        Err(KeyError(
            "no \"PRIVATE KEY\" or \"EC PRIVATE KEY\" PEM block (for cosign's encrypted cosign.key, set COSIGN_PASSWORD)"
                .to_owned(),
        ))
    }

    /// Reads a PKCS#8 DER private key (P-256 or Ed25519).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        if let Ok(pair) =
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
        {
            let public = public_from_raw(KeyKind::EcdsaP256, pair.public_key().as_ref())?;
            return Ok(Self {
                pair: Pair::Ecdsa(pair),
                public,
            });
        }
        if let Ok(pair) = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let public = public_from_raw(KeyKind::Ed25519, pair.public_key().as_ref())?;
            return Ok(Self {
                pair: Pair::Ed25519(pair),
                public,
            });
        }
        Err(KeyError(
            "unsupported private key: twinflash signs with ECDSA P-256 or Ed25519 keys".to_owned(),
        ))
    }

    /// Generates a new P-256 key (tests and `twinflash sign --generate-key`), as PKCS#8 DER.
    pub fn generate_p256_pkcs8() -> Result<Vec<u8>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError("key generation failed".to_owned()))
    }

    /// Generates a new Ed25519 key, as PKCS#8 DER.
    pub fn generate_ed25519_pkcs8() -> Result<Vec<u8>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        sig::Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError("key generation failed".to_owned()))
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message`: ECDSA P-256 SHA-256 (ASN.1 DER) or Ed25519.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ecdsa(pair) => pair
                .sign(&ring::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError("signing failed".to_owned())),
            Pair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

fn public_from_raw(kind: KeyKind, raw: &[u8]) -> Result<PublicKey, KeyError> {
    let prefix = match kind {
        KeyKind::EcdsaP256 => P256_SPKI_PREFIX,
        KeyKind::Ed25519 => ED25519_SPKI_PREFIX,
    };
    let mut spki = prefix.to_vec();
    spki.extend_from_slice(raw);
    PublicKey::from_spki_der(&spki)
}

/// DER length octets.
fn der_len(len: usize) -> Vec<u8> {
    match len {
        0..=0x7f => vec![len as u8],
        0x80..=0xff => vec![0x81, len as u8],
        _ => vec![0x82, (len >> 8) as u8, len as u8],
    }
}

/// Wraps a SEC1 P-256 private key in PKCS#8 (what ring reads).
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, KeyError> {
    if sec1.len() > 0xffff - 64 {
        return Err(KeyError("EC private key too large".to_owned()));
    }
    let mut body = P256_PKCS8_ALGORITHM.to_vec();
    body.push(0x04);
    body.extend(der_len(sec1.len()));
    body.extend_from_slice(sec1);
    let mut out = vec![0x30];
    out.extend(der_len(body.len()));
    out.extend(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify_and_reject_other_messages() {
        for der in [
            SigningKey::generate_p256_pkcs8().unwrap(),
            SigningKey::generate_ed25519_pkcs8().unwrap(),
        ] {
            let key = SigningKey::from_pkcs8_der(&der).unwrap();
            let signature = key.sign(b"payload").unwrap();
            let public = PublicKey::from_pem(key.public().to_pem().as_bytes()).unwrap();
            assert_eq!(&public, key.public());
            assert!(public.verifies(b"payload", &signature));
            assert!(!public.verifies(b"payloaD", &signature));
            let other = SigningKey::from_pkcs8_der(&der).unwrap();
            assert!(other.public().verifies(b"payload", &signature));
        }
    }

    #[test]
    fn keys_of_other_algorithms_are_refused_with_a_message() {
        // An RSA SubjectPublicKeyInfo prefix.
        let rsa = [0x30, 0x82, 0x01, 0x22, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86];
        let err = PublicKey::from_spki_der(&rsa).unwrap_err();
        assert!(err.0.contains("P-256"), "{err}");
        assert!(PublicKey::from_pem(b"no pem here").is_err());
        let mut short = P256_SPKI_PREFIX.to_vec();
        short.extend([4u8; 10]);
        assert!(PublicKey::from_spki_der(&short).is_err());
    }
}

//! cosign-compatible image signatures: ECDSA P-256 over SHA-256, from a plain PEM private key.
//!
//! - Keys: `EC PRIVATE KEY` (SEC1, as `openssl ecparam -genkey -name prime256v1 -noout`
//!   writes; an `EC PARAMETERS` block before it is skipped) or `PRIVATE KEY` (PKCS#8, as
//!   `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes). cosign's own
//!   encrypted keys (`ENCRYPTED SIGSTORE PRIVATE KEY`, `ENCRYPTED COSIGN PRIVATE KEY`),
//!   encrypted PKCS#8, other curves and other algorithms are refused by [`KeyError`], whose
//!   messages never contain the key.
//! - The payload ([`payload`]) is the containers "simple signing" JSON that cosign signs and
//!   `cosign verify` checks: `critical.identity.docker-reference` (the repository),
//!   `critical.image.docker-manifest-digest`, `critical.type`, and `optional: null`, in the key
//!   order Go writes.
//! - Signatures are deterministic (RFC 6979): the same key and payload give the same bytes.
//!   They are ASN.1 DER, as Go's `ecdsa.SignASN1` writes, so `openssl dgst -sha256 -verify
//!   pub.pem -signature sig.der payload` checks them.
//!
//! The key is kept only in `p256`'s key type, which zeroizes its memory when dropped;
//! [`SigningKey`]'s `Debug` prints no key material.

use crate::digest::Digest;
use base64::Engine as _;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::json;
use std::fmt;

/// Why a key cannot sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No PEM private key block.
    #[error("is not a PEM private key (no -----BEGIN ... PRIVATE KEY----- block). Make one with `openssl ecparam -genkey -name prime256v1 -noout -out key.pem`")]
    NotPem,
    /// A public key only.
    #[error("is a public key; signing needs the private key (keep the public key for `cosign verify --key`)")]
    PublicKey,
    /// cosign's scrypt-encrypted key format.
    #[error("is an encrypted cosign key ({0}), which only cosign can decrypt; sign with a plain PEM key instead: make one with `openssl ecparam -genkey -name prime256v1 -noout -out key.pem` (`cosign import-key-pair --key key.pem` lets cosign use it too)")]
    EncryptedCosign(String),
    /// Encrypted PKCS#8.
    #[error("is encrypted (ENCRYPTED PRIVATE KEY); give the decrypted key: `openssl pkey -in KEY -out plain.pem`")]
    Encrypted,
    /// Another algorithm or curve.
    #[error("is {0}, not ECDSA P-256 (prime256v1), the key type cosign signs with. Make one with `openssl ecparam -genkey -name prime256v1 -noout -out key.pem`")]
    WrongAlgorithm(String),
    /// A P-256 block that does not decode.
    #[error("is not a valid ECDSA P-256 private key ({0})")]
    Invalid(String),
}

/// A private key that signs (ECDSA P-256).
pub struct SigningKey(p256::ecdsa::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(ECDSA P-256, private key not shown)")
    }
}

/// The PEM blocks of `text`: `(label, whole block)`.
fn pem_blocks(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(end_label) = after.find("-----") else {
            break;
        };
        let label = &after[..end_label];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_marker) else {
            break;
        };
        let block_end = start + end + end_marker.len();
        out.push((label, &rest[start..block_end]));
        rest = &rest[block_end..];
    }
    out
}

/// The curve or algorithm a DER key names, by the object identifiers in it.
fn algorithm_of(der: &[u8]) -> Option<&'static str> {
    const OIDS: &[(&[u8], &str)] = &[
        (
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            "P-256",
        ),
        (
            &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            "an ECDSA P-384 key",
        ),
        (
            &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
            "an ECDSA P-521 key",
        ),
        (
            &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
            "an ECDSA secp256k1 key",
        ),
        (
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ],
            "an RSA key",
        ),
        (&[0x06, 0x03, 0x2b, 0x65, 0x70], "an Ed25519 key"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x71], "an Ed448 key"),
    ];
    OIDS.iter()
        .find(|(oid, _)| der.windows(oid.len()).any(|w| w == *oid))
        .map(|(_, name)| *name)
}

fn decode(block: &str) -> Result<Vec<u8>, KeyError> {
    let body: String = block
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.contains(':'))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| KeyError::Invalid("its PEM body is not base64".into()))
}

impl SigningKey {
    /// The key in `pem` (the text of a key file, or of `DOCKER_RELEASE_SIGN_KEY`).
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        let blocks = pem_blocks(pem);
        for (label, block) in &blocks {
            match *label {
                "ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY" => {
                    return Err(KeyError::EncryptedCosign(label.to_string()))
                }
                "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
                "RSA PRIVATE KEY" => return Err(KeyError::WrongAlgorithm("an RSA key".into())),
                "EC PRIVATE KEY" | "PRIVATE KEY" => {
                    let der = zeroize::Zeroizing::new(decode(block)?);
                    match algorithm_of(&der) {
                        Some("P-256") | None => {}
                        Some(other) => return Err(KeyError::WrongAlgorithm(other.into())),
                    }
                    let secret = if *label == "EC PRIVATE KEY" {
                        p256::SecretKey::from_sec1_der(&der)
                            .map_err(|_| KeyError::Invalid("SEC1 key does not decode".into()))?
                    } else {
                        p256::SecretKey::from_pkcs8_der(&der)
                            .map_err(|_| KeyError::Invalid("PKCS#8 key does not decode".into()))?
                    };
                    return Ok(SigningKey(p256::ecdsa::SigningKey::from(&secret)));
                }
                _ => {}
            }
        }
        if blocks.iter().any(|(l, _)| l.contains("PUBLIC KEY")) {
            return Err(KeyError::PublicKey);
        }
        Err(KeyError::NotPem)
    }

    /// The public key as a `PUBLIC KEY` PEM (SubjectPublicKeyInfo), what `cosign verify --key`
    /// and `openssl dgst -verify` take.
    pub fn public_key_pem(&self) -> String {
        self.0
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// The DER signature of `payload` (ECDSA P-256, SHA-256, RFC 6979).
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let sig: p256::ecdsa::Signature = self.0.sign(payload);
        sig.to_der().as_bytes().to_vec()
    }

    /// [`SigningKey::sign`], base64 (standard alphabet): the layer annotation's value.
    pub fn sign_base64(&self, payload: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.sign(payload))
    }
}

/// The simple-signing payload cosign signs for the image `manifest_digest` in the repository
/// `docker_reference` (`registry.example.com/team/app`, no tag or digest: cosign's default).
///
/// ```
/// # use image_core::{digest::Digest, supply::signing::payload};
/// let p = payload("127.0.0.1:5000/demo/hello", &Digest::of(b""));
/// assert_eq!(
///     String::from_utf8(p).unwrap(),
///     r#"{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/demo/hello"},"image":{"docker-manifest-digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},"type":"cosign container image signature"},"optional":null}"#
/// );
/// ```
pub fn payload(docker_reference: &str, manifest_digest: &Digest) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest.to_string()},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;

    macro_rules! key {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/keys/", $name))
        };
    }

    fn verify(public_pem: &str, payload: &[u8], der: &[u8]) -> bool {
        let public = p256::ecdsa::VerifyingKey::from_public_key_pem(public_pem).unwrap();
        let sig = p256::ecdsa::Signature::from_der(der).unwrap();
        public.verify(payload, &sig).is_ok()
    }

    #[test]
    fn a_sec1_key_after_ec_parameters_signs_deterministically_and_verifies() {
        let key = SigningKey::from_pem(key!("p256-sec1.pem")).unwrap();
        assert_eq!(key.public_key_pem(), key!("p256-public.pem"));
        let p = payload("r/x", &Digest::of(b"m"));
        let a = key.sign(&p);
        assert_eq!(a, key.sign(&p));
        assert!(verify(key!("p256-public.pem"), &p, &a));
        let mut tampered = p.clone();
        tampered[10] ^= 1;
        assert!(!verify(key!("p256-public.pem"), &tampered, &a));
        assert_eq!(
            format!("{key:?}"),
            "SigningKey(ECDSA P-256, private key not shown)"
        );
    }

    #[test]
    fn a_pkcs8_key_is_the_same_key() {
        let a = SigningKey::from_pem(key!("p256-pkcs8.pem")).unwrap();
        let b = SigningKey::from_pem(key!("p256-sec1.pem")).unwrap();
        assert_eq!(a.public_key_pem(), b.public_key_pem());
        let p = payload("r/x", &Digest::of(b"m"));
        assert_eq!(a.sign(&p), b.sign(&p));
    }

    #[test]
    fn refusals_say_why_and_never_echo_the_key() {
        let cases = [
            ("garbage", "not a PEM private key"),
            (key!("cosign-encrypted.pem"), "encrypted cosign key"),
            (key!("p256-encrypted.pem"), "openssl pkey"),
            (key!("p256-public.pem"), "public key"),
            (key!("rsa-pkcs8.pem"), "an RSA key"),
            (key!("ed25519.pem"), "an Ed25519 key"),
            (key!("p384-sec1.pem"), "an ECDSA P-384 key"),
            (key!("p384-pkcs8.pem"), "an ECDSA P-384 key"),
            (
                "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
                "not base64",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n",
                "does not decode",
            ),
        ];
        for (pem, expect) in cases {
            let err = SigningKey::from_pem(pem).unwrap_err().to_string();
            assert!(err.contains(expect), "{pem}: {err}");
            for line in pem
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 8)
            {
                assert!(!err.contains(line), "{err}");
            }
        }
    }
}

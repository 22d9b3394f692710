//! Mints an ES256 key, its JWKS and a number of signed access tokens, for `make bench`'s
//! auth-on target (not part of the platform): `mint_tokens DIR COUNT ISSUER AUDIENCE`.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, count, issuer, audience] = args.as_slice() else {
        anyhow::bail!("usage: mint_tokens DIR COUNT ISSUER AUDIENCE");
    };
    let count: usize = count.parse()?;
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("no key generated"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("the generated key does not parse"))?;
    // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
    let point = pair.public_key().as_ref();
    anyhow::ensure!(
        point.len() == 65 && point[0] == 4,
        "unexpected public key form"
    );
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    }]});
    std::fs::write(format!("{dir}/jwks.json"), jwks.to_string())?;

    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("bench".into());
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut tokens = String::new();
    for i in 0..count {
        let claims = serde_json::json!({
            "iss": issuer, "aud": audience, "sub": format!("bench-user-{i}"),
            "scope": "users:read users:write", "iat": now, "exp": now + 3600,
        });
        tokens.push_str(&jsonwebtoken::encode(&header, &claims, &key)?);
        tokens.push('\n');
    }
    std::fs::write(format!("{dir}/tokens.txt"), tokens)?;
    Ok(())
}

//! The webhook's TLS identity for local control planes: a fresh CA and a serving certificate
//! for the loopback address, made at start-up and never written to disk. In a cluster the
//! chart provides the certificate instead.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why the certificates could not be made.
pub type Error = rcgen::Error;

/// A serving certificate and the CA that signed it.
pub struct ServingIdentity {
    /// The CA certificate in PEM, for the webhook configuration's caBundle.
    pub ca_pem: String,
    /// The serving certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

/// Makes a CA and a certificate for `ip` (and `localhost`) signed by it.
pub fn generate(ip: IpAddr) -> Result<ServingIdentity, Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "jit-operator webhook CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf_params.subject_alt_names.push(SanType::IpAddress(ip));
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "jit-operator webhook");
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

    Ok(ServingIdentity {
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    })
}

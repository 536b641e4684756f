//! Helpers for unit tests: throwaway CA-issued identities.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
};

use crate::identity::SigningIdentity;

/// A signing identity whose certificate is issued by a fresh CA; returns it with the CA PEM.
pub(crate) fn identity(msp_id: &str, name: &str) -> (SigningIdentity, String) {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("ca.{name}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let id =
        SigningIdentity::from_pem(msp_id, cert.pem().as_bytes(), &key.serialize_pem()).unwrap();
    (id, ca_pem)
}

//! The serving certificate in force, as the webhook's TLS server reads it at every handshake.

use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The serving certificate in force, read at every handshake.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<(Vec<u8>, Arc<CertifiedKey>)>>,
    /// The CA bundle (`ca.crt`) that clients of the servers using this certificate trust.
    bundle: RwLock<Option<Arc<Vec<u8>>>>,
}

impl CertStore {
    /// Replaces the certificate (chain PEM, private key PEM). Unchanged input is a no-op.
    /// Returns whether the certificate changed.
    pub fn set_pem(&self, chain_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<bool> {
        let fingerprint: Vec<u8> = [chain_pem, key_pem].concat();
        if self
            .current
            .read()
            .map_err(|_| anyhow::anyhow!("certificate store poisoned"))?
            .as_ref()
            .is_some_and(|(current, _)| *current == fingerprint)
        {
            return Ok(false);
        }
        let chain = CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>()?;
        anyhow::ensure!(!chain.is_empty(), "no certificate in the PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem)?;
        let certified = CertifiedKey::from_der(chain, key, &provider())?;
        *self
            .current
            .write()
            .map_err(|_| anyhow::anyhow!("certificate store poisoned"))? =
            Some((fingerprint, Arc::new(certified)));
        Ok(true)
    }

    /// Records the CA bundle clients must trust (PEM); unchanged input is a no-op. Returns
    /// whether it changed.
    pub fn set_bundle(&self, bundle_pem: &[u8]) -> bool {
        let Ok(mut bundle) = self.bundle.write() else {
            return false;
        };
        if bundle
            .as_deref()
            .is_some_and(|b| b.as_slice() == bundle_pem)
        {
            return false;
        }
        *bundle = Some(Arc::new(bundle_pem.to_vec()));
        true
    }

    /// The CA bundle clients must trust (PEM), once known.
    pub fn bundle(&self) -> Option<Arc<Vec<u8>>> {
        self.bundle.read().ok()?.clone()
    }

    pub fn is_loaded(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .ok()?
            .as_ref()
            .map(|(_, key)| key.clone())
    }
}

pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

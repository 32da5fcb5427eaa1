//! The listener's TLS: the acceptor built from `server.tls`, swapped on
//! SIGHUP so new connections get a renewed certificate while open ones keep
//! theirs.

use std::io;
use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TlsConfig};

/// The listener's TLS acceptor, if `server.tls` is set; reloadable.
pub struct Tls {
    /// Where the certificate and key are read from, again on each reload.
    config: Option<TlsConfig>,
    /// The acceptor new connections use; replaced whole on reload.
    acceptor: RwLock<Option<TlsAcceptor>>,
}

impl Tls {
    /// Reads the certificate and key, if `server.tls` is set.
    pub fn load(config: &Config) -> io::Result<Arc<Tls>> {
        let tls = config.server.tls.clone();
        let acceptor = tls.as_ref().map(load_acceptor).transpose()?;
        Ok(Arc::new(Tls {
            config: tls,
            acceptor: RwLock::new(acceptor),
        }))
    }

    /// Reloads the certificate and key from their files; connections
    /// already open keep theirs. On error the old ones stay.
    pub fn reload(&self) -> io::Result<()> {
        let Some(tls) = &self.config else {
            return Ok(());
        };
        let acceptor = load_acceptor(tls)?;
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = Some(acceptor);
        Ok(())
    }

    /// The acceptor for a new connection; `None` serves plain TCP.
    pub(super) fn acceptor(&self) -> Option<TlsAcceptor> {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// SIGHUP reloads the TLS certificate and key; open connections keep theirs.
pub fn reload_on_sighup(tls: Arc<Tls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
                }
            }
        }
    });
}

fn load_acceptor(tls: &TlsConfig) -> io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    fn with_path(p: &std::path::Path) -> impl Fn(rustls::pki_types::pem::Error) -> io::Error + '_ {
        move |e| io::Error::other(format!("{}: {e}", p.display()))
    }
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(with_path(&tls.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(with_path(&tls.cert))?;
    if certs.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no certificate found",
            tls.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(with_path(&tls.key))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| io::Error::other(format!("{}: {e}", tls.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

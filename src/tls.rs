//! Extra CA certificates for TLS (`amqp.ca_file`, `cxone.ca_file`): a PEM
//! bundle trusted on top of the platform's store, for a private CA or a
//! TLS-inspecting proxy.
//!
//! The file is read where a connection is made, so a rotated bundle is
//! picked up on the next connection; configuration loading reads it once to
//! stop start-up early when it is unusable.

use lapin::tcp::OwnedTLSConfig;
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// A CA file that cannot be used. The message says what to fix and is
/// complete: it carries the underlying error's text, not a source chain.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error(
        "cannot read CA file {path:?} ({reason}); point it at a readable PEM file or leave it empty"
    )]
    Read {
        path: String,
        reason: std::io::Error,
    },
    #[error("CA file {path:?} is not valid PEM: {problem}; give the CA certificate(s) in PEM")]
    Pem { path: String, problem: String },
    #[error(
        "CA file {path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA certificate(s) in PEM"
    )]
    NoCertificate { path: String },
    #[error(
        "{path:?} holds a certificate that cannot be used ({reason}); give the CA certificate(s) in PEM"
    )]
    Unusable {
        path: String,
        reason: reqwest::Error,
    },
}

/// A PEM bundle of CA certificates: its text and each certificate (DER).
pub struct CaBundle {
    pub pem: String,
    pub certificates: Vec<CertificateDer<'static>>,
}

/// Reads a PEM bundle; it must hold at least one certificate.
pub fn load_ca_file(path: &str) -> Result<CaBundle, CaFileError> {
    let pem = std::fs::read_to_string(path).map_err(|reason| CaFileError::Read {
        path: path.to_owned(),
        reason,
    })?;
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaFileError::Pem {
            path: path.to_owned(),
            problem: describe_pem_error(&e),
        })?;
    if certificates.is_empty() {
        return Err(CaFileError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(CaBundle { pem, certificates })
}

/// The TLS settings of an AMQP connection: the platform's trust store, plus
/// the certificates of `ca_file` unless it is empty.
pub fn amqp_client_config(ca_file: &str) -> Result<OwnedTLSConfig, CaFileError> {
    let cert_chain = if ca_file.is_empty() {
        None
    } else {
        Some(load_ca_file(ca_file)?.pem)
    };
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}

/// Adds the certificates of `ca_file` to an HTTP client's roots, on top of
/// the platform's trust store; an empty path adds nothing.
pub fn add_ca_file(
    builder: reqwest::ClientBuilder,
    ca_file: &str,
) -> Result<reqwest::ClientBuilder, CaFileError> {
    if ca_file.is_empty() {
        return Ok(builder);
    }
    let certs = load_ca_file(ca_file)?
        .certificates
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| CaFileError::Unusable {
            path: ca_file.to_owned(),
            reason,
        })?;
    Ok(builder.tls_certs_merge(certs))
}

/// The PEM parser's error as a sentence: it holds its labels as bytes,
/// which its own message would show as numbers.
fn describe_pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!("a {label} block is not terminated by -----END {label}-----")
        }
        Error::IllegalSectionStart { line } => format!(
            "the line {:?} does not start a PEM block",
            String::from_utf8_lossy(line)
        ),
        Error::Base64Decode(why) => format!("a block is not valid base64 ({why})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn certificates_are_read_and_other_blocks_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "ca.pem",
            "junk\n-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n\
             -----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n\
             -----BEGIN CERTIFICATE-----\nAwQF\n-----END CERTIFICATE-----\n",
        );
        let bundle = load_ca_file(&path).unwrap();
        let ders: Vec<&[u8]> = bundle.certificates.iter().map(|c| c.as_ref()).collect();
        assert_eq!(ders, vec![&[0u8, 1, 2][..], &[3, 4, 5][..]]);
        assert!(bundle.pem.starts_with("junk\n"));
    }

    #[test]
    fn unusable_files_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("/nonexistent/ca.pem".to_owned(), "cannot read CA file"),
            (
                write(&dir, "empty.pem", "hello\n"),
                "holds no PEM certificate",
            ),
            (
                write(
                    &dir,
                    "bad.pem",
                    "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                ),
                "is not valid PEM: a block is not valid base64",
            ),
            (
                write(&dir, "open.pem", "-----BEGIN CERTIFICATE-----\nAAEC\n"),
                "is not valid PEM: a CERTIFICATE block is not terminated by -----END CERTIFICATE-----",
            ),
        ];
        for (path, expected) in cases {
            let err = load_ca_file(&path).err().expect(&path).to_string();
            assert!(err.contains(expected), "{path}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn an_empty_path_adds_no_certificate() {
        let config = amqp_client_config("").unwrap();
        assert!(config.cert_chain.is_none());
        assert!(add_ca_file(reqwest::Client::builder(), "").is_ok());
    }
}

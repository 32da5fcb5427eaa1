//! The `[cluster]` table: replicas that forward each other the requests of
//! the sessions they own. Validated here so a bad address or an unreadable
//! secret fails at boot, not on the first forwarded request.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::raw::RawCluster;
use super::{ConfigError, invalid, listeners_clash, socket_addr};

/// Where `cluster.advertise` may also come from (e.g. the pod IP through the
/// downward API); the variable wins over the file.
pub const ADVERTISE_ENV: &str = "WSBRIDGE_CLUSTER_ADVERTISE";

/// The shortest secret accepted: 256 bits, the HMAC-SHA256 key size.
pub const MIN_SECRET_BYTES: usize = 32;

/// `cluster.listen` when the table leaves it out.
const DEFAULT_LISTEN: &str = "0.0.0.0:8081";

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// The internal listener for requests forwarded by peers.
    pub listen: SocketAddr,
    /// How peers reach this replica; its hash is the owner tag in the ids
    /// this replica mints, so it must be the address peers discover.
    pub advertise: SocketAddr,
    /// Where the peer set comes from.
    pub peers: PeerSource,
    pub secret_file: PathBuf,
    /// The file's bytes, read at boot.
    pub secret: Secret,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PeerSource {
    /// `peers`: `host:port` each, resolved with the rest.
    Static(Vec<String>),
    /// `peers_dns`: one `name:port` whose addresses are the peers.
    Dns(String),
}

/// The shared secret. Never printed: `Debug` shows its length only.
#[derive(Clone, PartialEq)]
pub struct Secret(pub Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

pub(super) fn validate(
    raw: RawCluster,
    env_advertise: Option<String>,
    server_listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
) -> Result<ClusterConfig, ConfigError> {
    let listen = socket_addr(
        "cluster.listen",
        raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
    )?;
    for (other, name) in [
        (Some(server_listen), "server.listen"),
        (admin_listen, "admin.listen"),
    ] {
        if let Some(other) = other
            && listeners_clash(listen, other)
        {
            return Err(invalid(
                "cluster.listen",
                format!(
                    "{listen} clashes with {name} ({other}); give the cluster listener a port of its own"
                ),
            ));
        }
    }

    let (advertise, key) = match env_advertise.filter(|v| !v.is_empty()) {
        Some(v) => (Some(v), ADVERTISE_ENV),
        None => (raw.advertise, "cluster.advertise"),
    };
    let Some(advertise) = advertise else {
        return Err(invalid(
            "cluster.advertise",
            format!(
                "is required (or set {ADVERTISE_ENV}): the address peers reach this replica at, like \"10.1.2.3:8081\""
            ),
        ));
    };
    let advertise = socket_addr(key, &advertise)?;
    if advertise.ip().is_unspecified() || advertise.port() == 0 {
        return Err(invalid(
            key,
            format!(
                "{advertise} is not an address a peer can reach: give this replica's own IP and port"
            ),
        ));
    }

    let peers = match (raw.peers, raw.peers_dns) {
        (Some(_), Some(_)) => {
            return Err(invalid("cluster.peers", "set peers or peers_dns, not both"));
        }
        (None, None) => {
            return Err(invalid(
                "cluster.peers",
                "is required: a list of \"host:port\", or peers_dns = \"name:port\"",
            ));
        }
        (Some(list), None) => {
            for (i, p) in list.iter().enumerate() {
                host_port(&format!("cluster.peers[{i}]"), p)?;
            }
            PeerSource::Static(list)
        }
        (None, Some(name)) => {
            host_port("cluster.peers_dns", &name)?;
            PeerSource::Dns(name)
        }
    };

    let Some(secret_file) = raw.secret_file else {
        return Err(invalid(
            "cluster.secret_file",
            "is required: a file of at least 32 random bytes shared by every replica",
        ));
    };
    let bytes = std::fs::read(&secret_file).map_err(|e| {
        invalid(
            "cluster.secret_file",
            format!("cannot read {}: {e}", secret_file.display()),
        )
    })?;
    // A trailing newline from `echo` or an editor is not part of the key.
    let trimmed = bytes.trim_ascii_end();
    if trimmed.len() < MIN_SECRET_BYTES {
        return Err(invalid(
            "cluster.secret_file",
            format!(
                "{} holds {} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. `head -c 32 /dev/urandom | base64`)",
                secret_file.display(),
                trimmed.len()
            ),
        ));
    }
    Ok(ClusterConfig {
        listen,
        advertise,
        peers,
        secret_file,
        secret: Secret(trimmed.into()),
    })
}

/// `host:port` with a non-zero port and a non-empty host.
fn host_port(key: &str, text: &str) -> Result<(), ConfigError> {
    let bad = || {
        invalid(
            key,
            format!(
                "expected \"host:port\" like \"10.1.2.4:8081\" or \"wsbridge-peers.ns.svc.cluster.local:8081\", got {text:?}"
            ),
        )
    };
    if text.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

impl From<&ClusterConfig> for RawCluster {
    fn from(c: &ClusterConfig) -> RawCluster {
        let (peers, peers_dns) = match &c.peers {
            PeerSource::Static(list) => (Some(list.clone()), None),
            PeerSource::Dns(name) => (None, Some(name.clone())),
        };
        RawCluster {
            listen: Some(c.listen.to_string()),
            advertise: Some(c.advertise.to_string()),
            peers,
            peers_dns,
            secret_file: Some(c.secret_file.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::{Config, Overrides};
    use super::*;

    fn load(cluster: &str, advertise_env: Option<&str>) -> Result<Config, ConfigError> {
        let text = format!("[upstream]\nurl = \"http://127.0.0.1:3000\"\n[cluster]\n{cluster}\n");
        let overrides = Overrides {
            cluster_advertise: advertise_env.map(str::to_owned),
            ..Overrides::default()
        };
        Config::from_toml_with(&text, &overrides)
    }

    fn key(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn err(r: Result<Config, ConfigError>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn a_cluster_table_is_validated_like_the_rest() {
        let k = key(&[b'x'; 33]);
        let secret = format!("secret_file = {:?}", k.path());
        let good = format!(
            "advertise = \"10.0.0.1:8081\"\npeers = [\"10.0.0.2:8081\", \"peer-b.ns:8081\"]\n{secret}"
        );
        let c = load(&good, None).unwrap().cluster.unwrap();
        assert_eq!(c.listen, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.secret.0.len(), 33);
        assert!(
            !format!("{c:?}").contains("xxxx"),
            "the secret is never printed"
        );
        // The environment wins over the file.
        let c = load(&good, Some("10.9.9.9:8081")).unwrap().cluster.unwrap();
        assert_eq!(c.advertise, "10.9.9.9:8081".parse().unwrap());
        // The effective configuration loads back to the same.
        let cfg = load(&good, None).unwrap();
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap(), cfg);

        let dns = format!(
            "advertise = \"10.0.0.1:8081\"\npeers_dns = \"wsbridge-peers.ns.svc.cluster.local:8081\"\n{secret}"
        );
        assert!(matches!(
            load(&dns, None).unwrap().cluster.unwrap().peers,
            PeerSource::Dns(_)
        ));

        let cases = [
            (
                format!("peers = [\"10.0.0.2:8081\"]\n{secret}"),
                "cluster.advertise",
            ),
            (
                format!("advertise = \"0.0.0.0:8081\"\npeers = []\n{secret}"),
                "cluster.advertise",
            ),
            (
                format!("advertise = \"10.0.0.1\"\npeers = []\n{secret}"),
                "cluster.advertise",
            ),
            (
                format!("advertise = \"10.0.0.1:8081\"\n{secret}"),
                "cluster.peers",
            ),
            (
                format!("advertise = \"10.0.0.1:8081\"\npeers = []\npeers_dns = \"a:1\"\n{secret}"),
                "cluster.peers",
            ),
            (
                format!("advertise = \"10.0.0.1:8081\"\npeers = [\"nope\"]\n{secret}"),
                "cluster.peers[0]",
            ),
            (
                format!("advertise = \"10.0.0.1:8081\"\npeers = [\"a b:1\"]\n{secret}"),
                "cluster.peers[0]",
            ),
            (
                format!("advertise = \"10.0.0.1:8081\"\npeers_dns = \"name:0\"\n{secret}"),
                "cluster.peers_dns",
            ),
            (
                "advertise = \"10.0.0.1:8081\"\npeers = []".to_owned(),
                "cluster.secret_file",
            ),
            (
                "advertise = \"10.0.0.1:8081\"\npeers = []\nsecret_file = \"/nonexistent/key\""
                    .to_owned(),
                "cluster.secret_file",
            ),
            (
                format!(
                    "listen = \"0.0.0.0:8080\"\nadvertise = \"10.0.0.1:8081\"\npeers = []\n{secret}"
                ),
                "cluster.listen",
            ),
            (
                format!("advertise = \"10.0.0.1:8081\"\npeers = []\nsticky = true\n{secret}"),
                "sticky",
            ),
        ];
        for (text, key) in cases {
            let e = err(load(&text, None));
            assert!(e.contains(key), "{text:?}: {e}");
        }
        let short = key(b"too short\n");
        let text = format!(
            "advertise = \"10.0.0.1:8081\"\npeers = []\nsecret_file = {:?}",
            short.path()
        );
        assert!(err(load(&text, None)).contains("at least 32"));
    }
}

//! The config file (`config/pgtide.toml` is the embedded default): its schema, its defaults and
//! its validation.
//!
//! Parsing is serde + toml with `deny_unknown_fields`, so a typo is an error, not a silently
//! ignored key. Validation runs on the typed result; to point at the offending line it looks the
//! key's path up again in a span-keeping `toml_edit` document. Every error therefore reads
//! `FILE:LINE: KEY: what is wrong`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The default config, compiled into the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../config/pgtide.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub capacity: CapacityConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    /// The shared endpoint of every cluster (`[tenants]`), routed by TLS SNI, `options` or the
    /// database name; with it, config clusters may leave out `listen`.
    pub tenants: Option<TenantsConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Availability zones (`[[zones]] name, copies`). Not given: a zone per group of copies
    /// named alike (`a1`, `a2` are zone `a`), see [`Config::zones`].
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
}

/// One availability zone: a name, and the storage copies that live in it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    #[serde(default)]
    pub copies: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9187".parse().expect("valid address"),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    pub cpu_per_acu: f64,
    pub memory_mib_per_acu: u64,
    pub step_acu: f64,
    /// What all running clusters may hold together; `None`: the machine's cores and memory in
    /// ACUs, read at start (`crate::capacity`).
    pub max_total_acu: Option<f64>,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            cpu_per_acu: 0.25,
            memory_mib_per_acu: 2048,
            step_acu: 0.5,
            max_total_acu: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Process,
    Docker,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub kind: RuntimeKind,
    pub data_dir: PathBuf,
    pub run_as: String,
    pub warm_pool_size: usize,
    pub postgres_bin_dir: Option<PathBuf>,
    pub image: Option<String>,
    pub docker_host: Option<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            kind: RuntimeKind::Process,
            data_dir: PathBuf::from("data"),
            run_as: "postgres".to_string(),
            warm_pool_size: 1,
            postgres_bin_dir: None,
            image: None,
            docker_host: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `None` means "not given": six directories under `runtime.data_dir`. An empty list turns the
    /// copies off.
    pub copies: Option<Vec<PathBuf>>,
    pub write_quorum: usize,
    /// A new base backup is taken once this much WAL (MiB) was written since the last one, so
    /// that a rebuild replays a bounded amount of WAL.
    pub base_backup_after_mib: u64,
    /// How far back a branch or a restore can go: base backups and WAL are kept this long
    /// (besides the newest two). Not set: only the newest two backups are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Option<std::time::Duration>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            copies: None,
            write_quorum: 4,
            base_backup_after_mib: 1024,
            retention: None,
        }
    }
}

/// The CLI spells it as the config does (`pgtide create --pool-mode transaction`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    Transaction,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    /// The cluster's own port; optional when `[tenants]` serves every cluster on one endpoint.
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub min_acu: f64,
    pub max_acu: f64,
    #[serde(default = "default_auto_pause_after", with = "humantime_serde")]
    pub auto_pause_after: Duration,
    #[serde(default = "default_scale_down_after", with = "humantime_serde")]
    pub scale_down_after: Duration,
    #[serde(default = "default_pool_mode")]
    pub pool_mode: PoolMode,
    #[serde(default = "default_resume_timeout", with = "humantime_serde")]
    pub resume_timeout: Duration,
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Hot standby computes in other zones than the writer's (0: none). Each replays the
    /// writer's WAL, serves the reader endpoint and is promoted when the writer is lost.
    #[serde(default)]
    pub standbys: usize,
    /// The reader endpoint: read-only sessions spread over the standbys (session mode).
    #[serde(default)]
    pub reader_listen: Option<SocketAddr>,
    /// A standby further behind the writer than this leaves the reader endpoint's rotation.
    #[serde(default = "default_max_reader_lag", with = "humantime_serde")]
    pub max_reader_lag: Duration,
}

impl ClusterConfig {
    /// The checks of `min_acu`, `max_acu` and `auto_pause_after`, which clusters created at run
    /// time pass too: the offending key and what is wrong.
    pub fn check_capacity(&self, step: f64) -> Result<(), (&'static str, String)> {
        if !(self.min_acu >= 0.0 && is_step_multiple(self.min_acu, step)) {
            return Err((
                "min_acu",
                format!(
                    "must be 0 or a positive multiple of step_acu ({step}), got {}",
                    self.min_acu
                ),
            ));
        }
        if !(self.max_acu >= step && is_step_multiple(self.max_acu, step)) {
            return Err((
                "max_acu",
                format!(
                    "must be a multiple of step_acu ({step}) of at least one step, got {}",
                    self.max_acu
                ),
            ));
        }
        if self.max_acu < self.min_acu {
            return Err((
                "max_acu",
                format!(
                    "must be at least min_acu ({}), got {}",
                    self.min_acu, self.max_acu
                ),
            ));
        }
        if self.max_acu > 256.0 {
            return Err((
                "max_acu",
                format!("must be at most 256, got {}", self.max_acu),
            ));
        }
        if self.auto_pause_after < Duration::from_secs(1) {
            return Err((
                "auto_pause_after",
                format!(
                    "must be at least 1s, got {}",
                    humantime::format_duration(self.auto_pause_after)
                ),
            ));
        }
        Ok(())
    }
}

impl ClusterConfig {
    /// The checks of `standbys` and `reader_listen` against the machine's zones and copies.
    pub fn check_standbys(
        &self,
        zones: usize,
        has_copies: bool,
    ) -> Result<(), (&'static str, String)> {
        if self.standbys == 0 {
            if self.reader_listen.is_some() {
                return Err((
                    "reader_listen",
                    "needs standbys of at least 1 (the reader endpoint serves the standbys)"
                        .to_string(),
                ));
            }
            return Ok(());
        }
        if !has_copies {
            return Err((
                "standbys",
                "needs [storage] copies: a standby is built from the copies and takes over \
                 with the WAL they hold"
                    .to_string(),
            ));
        }
        if self.standbys + 1 > zones {
            return Err((
                "standbys",
                format!(
                    "{} standbys and the writer need {} zones, and there are {zones} \
                     (each compute runs in a zone of its own)",
                    self.standbys,
                    self.standbys + 1
                ),
            ));
        }
        Ok(())
    }
}

pub fn default_auto_pause_after() -> Duration {
    Duration::from_secs(300)
}
pub fn default_scale_down_after() -> Duration {
    Duration::from_secs(30)
}
pub fn default_pool_mode() -> PoolMode {
    PoolMode::Session
}
pub fn default_resume_timeout() -> Duration {
    Duration::from_secs(30)
}
pub fn default_max_client_connections() -> usize {
    10_000
}
pub fn default_max_reader_lag() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// A plain password or a `SCRAM-SHA-256$…` verifier. No password: the user logs in without
    /// one (trust), as with a `trust` line in pg_hba.conf.
    pub password: Option<String>,
    #[serde(default)]
    pub superuser: bool,
}

/// A config error that names the file, the line and the key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file. Relative paths in it are made relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        Config::parse(&text, &path.display().to_string(), &base)
    }

    /// Parses and validates config text; `file` is only used in errors, `base` anchors relative
    /// paths.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                file: file.to_string(),
                line,
                key: None,
                message: e.message().trim().to_string(),
            }
        })?;
        if let Err(invalid) = config.validate() {
            let line = locate(text, &invalid.path);
            return Err(ConfigError {
                file: file.to_string(),
                line,
                key: Some(path_to_string(&invalid.path)),
                message: invalid.message,
            });
        }
        config.resolve_paths(base);
        Ok(config)
    }

    /// The directories of the six storage copies, after defaults.
    pub fn storage_copies(&self) -> Vec<PathBuf> {
        match &self.storage.copies {
            Some(copies) => copies.clone(),
            None => ["a1", "a2", "b1", "b2", "c1", "c2"]
                .iter()
                .map(|zone| self.runtime.data_dir.join("copies").join(zone))
                .collect(),
        }
    }

    /// The zones: `[[zones]]` as given, else one per group of copies named alike (the default
    /// copies `a1 a2 b1 b2 c1 c2` are zones a, b and c), else (no copies) one zone, `a`.
    pub fn zones(&self) -> Vec<ZoneConfig> {
        if !self.zones.is_empty() {
            return self.zones.clone();
        }
        let mut zones: Vec<ZoneConfig> = Vec::new();
        for copy in self.storage_copies() {
            let name = zone_of_copy(&copy);
            match zones.iter_mut().find(|zone| zone.name == name) {
                Some(zone) => zone.copies.push(copy),
                None => zones.push(ZoneConfig {
                    name,
                    copies: vec![copy],
                }),
            }
        }
        if zones.is_empty() {
            zones.push(ZoneConfig {
                name: "a".to_string(),
                copies: Vec::new(),
            });
        }
        zones
    }

    fn resolve_paths(&mut self, base: &Path) {
        let absolute = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                normalize(&base.join(p))
            }
        };
        self.runtime.data_dir = absolute(&self.runtime.data_dir);
        if let Some(dir) = &self.runtime.postgres_bin_dir {
            self.runtime.postgres_bin_dir = Some(absolute(dir));
        }
        if let Some(copies) = &mut self.storage.copies {
            for copy in copies.iter_mut() {
                *copy = absolute(copy);
            }
        }
        for zone in &mut self.zones {
            for copy in zone.copies.iter_mut() {
                *copy = absolute(copy);
            }
        }
        if let Some(tls) = self.tenants.as_mut().and_then(|t| t.tls.as_mut()) {
            tls.cert = absolute(&tls.cert);
            tls.key = absolute(&tls.key);
        }
        for cluster in &mut self.clusters {
            if let Some(tls) = &mut cluster.tls {
                tls.cert = absolute(&tls.cert);
                tls.key = absolute(&tls.key);
            }
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        use PathPart::{Index, Key};
        let capacity = &self.capacity;
        if !(capacity.cpu_per_acu > 0.0 && capacity.cpu_per_acu.is_finite()) {
            return Err(Invalid::at(
                &[Key("capacity"), Key("cpu_per_acu")],
                format!(
                    "must be a positive number of cores, got {}",
                    capacity.cpu_per_acu
                ),
            ));
        }
        if capacity.memory_mib_per_acu < 64 {
            return Err(Invalid::at(
                &[Key("capacity"), Key("memory_mib_per_acu")],
                format!(
                    "must be at least 64 MiB, got {}",
                    capacity.memory_mib_per_acu
                ),
            ));
        }
        if !(capacity.step_acu > 0.0 && capacity.step_acu <= 16.0) {
            return Err(Invalid::at(
                &[Key("capacity"), Key("step_acu")],
                format!("must be above 0 and at most 16, got {}", capacity.step_acu),
            ));
        }
        if let Some(max) = capacity.max_total_acu {
            if !(max >= capacity.step_acu && max.is_finite()) {
                return Err(Invalid::at(
                    &[Key("capacity"), Key("max_total_acu")],
                    format!(
                        "must be at least one step ({} ACU), got {max}",
                        capacity.step_acu
                    ),
                ));
            }
        }
        if self.runtime.run_as.is_empty() {
            return Err(Invalid::at(
                &[Key("runtime"), Key("run_as")],
                "must name an OS user".to_string(),
            ));
        }
        let copies = self.storage_copies();
        if !copies.is_empty()
            && (self.storage.write_quorum == 0 || self.storage.write_quorum > copies.len())
        {
            return Err(Invalid::at(
                &[Key("storage"), Key("write_quorum")],
                format!(
                    "must be between 1 and the number of copies ({}), got {}",
                    copies.len(),
                    self.storage.write_quorum
                ),
            ));
        }
        let mut zone_names = HashSet::new();
        for (i, zone) in self.zones.iter().enumerate() {
            let valid = !zone.name.is_empty()
                && zone.name.len() <= 32
                && zone
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                return Err(Invalid::at(
                    &[Key("zones"), Index(i), Key("name")],
                    format!(
                        "\"{}\" is not a valid zone name (1 to 32 of a-z, 0-9 and '-')",
                        zone.name
                    ),
                ));
            }
            if !zone_names.insert(zone.name.as_str()) {
                return Err(Invalid::at(
                    &[Key("zones"), Index(i), Key("name")],
                    format!("zone \"{}\" is defined twice", zone.name),
                ));
            }
            for copy in &zone.copies {
                if !copies.contains(copy) {
                    return Err(Invalid::at(
                        &[Key("zones"), Index(i), Key("copies")],
                        format!("{} is not one of [storage] copies", copy.display()),
                    ));
                }
            }
        }
        let zone_count = self.zones().len();
        if self.clusters.is_empty() {
            return Err(Invalid::at(
                &[Key("clusters")],
                "at least one [[clusters]] entry is needed".to_string(),
            ));
        }
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        listens.insert(self.admin.listen);
        if let Some(tenants) = &self.tenants {
            if !listens.insert(tenants.listen) {
                return Err(Invalid::at(
                    &[Key("tenants"), Key("listen")],
                    format!("{} is already used by the admin endpoint", tenants.listen),
                ));
            }
        }
        for (i, cluster) in self.clusters.iter().enumerate() {
            let at = |key: &'static str| [Key("clusters"), Index(i), Key(key)];
            let valid_name = !cluster.name.is_empty()
                && cluster.name.len() <= 63
                && cluster
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_name {
                return Err(Invalid::at(
                    &at("name"),
                    format!(
                        "\"{}\" is not a valid cluster name (1 to 63 of a-z, 0-9, '-' and '_')",
                        cluster.name
                    ),
                ));
            }
            if !names.insert(cluster.name.as_str()) {
                return Err(Invalid::at(
                    &at("name"),
                    format!("cluster \"{}\" is defined twice", cluster.name),
                ));
            }
            match cluster.listen {
                None if self.tenants.is_none() => {
                    return Err(Invalid::at(
                        &[Key("clusters"), Index(i)],
                        format!(
                            "cluster \"{}\" needs listen (it may be left out only when [tenants] \
                             serves every cluster on one endpoint)",
                            cluster.name
                        ),
                    ));
                }
                Some(listen) if !listens.insert(listen) => {
                    return Err(Invalid::at(
                        &at("listen"),
                        format!(
                            "{listen} is already used by the admin endpoint, [tenants] or \
                             another cluster"
                        ),
                    ));
                }
                _ => {}
            }
            if let Err((key, message)) = cluster.check_capacity(capacity.step_acu) {
                return Err(Invalid::at(&at(key), message));
            }
            if cluster.resume_timeout < Duration::from_millis(100) {
                return Err(Invalid::at(
                    &at("resume_timeout"),
                    format!(
                        "must be at least 100ms, got {}",
                        humantime::format_duration(cluster.resume_timeout)
                    ),
                ));
            }
            if let Err((key, message)) = cluster.check_standbys(zone_count, !copies.is_empty()) {
                return Err(Invalid::at(&at(key), message));
            }
            if let Some(reader) = cluster.reader_listen {
                if !listens.insert(reader) {
                    return Err(Invalid::at(
                        &at("reader_listen"),
                        format!(
                            "{reader} is already used by the admin endpoint, [tenants] or \
                             another cluster"
                        ),
                    ));
                }
            }
            if cluster.max_client_connections == 0 {
                return Err(Invalid::at(
                    &at("max_client_connections"),
                    "must be at least 1".to_string(),
                ));
            }
            if cluster.users.is_empty() {
                return Err(Invalid::at(
                    &[Key("clusters"), Index(i)],
                    format!(
                        "cluster \"{}\" needs at least one [[clusters.users]] entry",
                        cluster.name
                    ),
                ));
            }
            let mut users = HashSet::new();
            for (j, user) in cluster.users.iter().enumerate() {
                let at = |key: &'static str| {
                    [Key("clusters"), Index(i), Key("users"), Index(j), Key(key)]
                };
                if user.name.is_empty() || user.name.len() > 63 || user.name.contains('\0') {
                    return Err(Invalid::at(
                        &at("name"),
                        "must be 1 to 63 characters".to_string(),
                    ));
                }
                if !users.insert(user.name.as_str()) {
                    return Err(Invalid::at(
                        &at("name"),
                        format!("user \"{}\" is defined twice", user.name),
                    ));
                }
                if let Some(password) = &user.password {
                    if password.starts_with("SCRAM-SHA-256$")
                        && crate::proxy::scram::ScramVerifier::parse(password).is_none()
                    {
                        return Err(Invalid::at(
                            &at("password"),
                            "is not a valid SCRAM-SHA-256 verifier".to_string(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The zone a copy directory implies: its name without the trailing digits (`a1` → `a`), or the
/// whole name when that leaves nothing.
fn zone_of_copy(copy: &Path) -> String {
    let name = copy
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.is_empty() {
        name
    } else {
        stem.to_string()
    }
}

fn is_step_multiple(value: f64, step: f64) -> bool {
    let steps = value / step;
    value.is_finite() && (steps - steps.round()).abs() < 1e-9
}

/// Lexically removes `.` and `..` so that paths in logs and `/status` read well.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum PathPart {
    Key(&'static str),
    Index(usize),
}

struct Invalid {
    path: Vec<PathPart>,
    message: String,
}

impl Invalid {
    fn at(path: &[PathPart], message: String) -> Invalid {
        Invalid {
            path: path.to_vec(),
            message,
        }
    }
}

fn path_to_string(path: &[PathPart]) -> String {
    let mut out = String::new();
    for part in path {
        match part {
            PathPart::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            PathPart::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line of the deepest part of `path` that the text spells out (a key left to its
/// default points at its table).
fn locate(text: &str, path: &[PathPart]) -> Option<usize> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut best = None;
    for part in path {
        let next = match part {
            PathPart::Key(key) => item.get(key),
            PathPart::Index(i) => item.get(*i),
        };
        match next {
            Some(next) => {
                item = next;
                if let Some(span) = item.span() {
                    best = Some(span.start);
                }
            }
            None => break,
        }
    }
    best.map(|offset| line_of(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/pgtide"))
    }

    const MINIMAL: &str = r#"
[[clusters]]
name = "main"
listen = "127.0.0.1:6432"
max_acu = 4

[[clusters.users]]
name = "app"
password = "secret"
"#;

    #[test]
    fn storage_retention_is_a_duration_and_optional() {
        let base = MINIMAL;
        let config = parse(&format!("[storage]\nretention = \"7d\"\n{base}")).unwrap();
        assert_eq!(
            config.storage.retention,
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        assert_eq!(parse(base).unwrap().storage.retention, None);
        let e = parse(&format!("[storage]\nretention = \"soon\"\n{base}")).unwrap_err();
        assert!(
            e.to_string().starts_with("test.toml:2: ") && e.to_string().contains("duration"),
            "{e}"
        );
    }

    #[test]
    fn the_docker_example_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/docker.toml"));
        let config = Config::load(path).unwrap();
        assert_eq!(config.runtime.kind, RuntimeKind::Docker);
        assert_eq!(config.runtime.warm_pool_size, 1);
        assert!(config.runtime.data_dir.ends_with("data-docker"));
    }

    #[test]
    fn the_tenants_example_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tenants.toml"));
        let config = Config::load(path).unwrap();
        assert_eq!(
            config.tenants.unwrap().listen,
            "127.0.0.1:5432".parse().unwrap()
        );
        assert_eq!(config.clusters[1].listen, None);
    }

    #[test]
    fn embedded_default_parses() {
        let config = parse(DEFAULT_CONFIG).expect("default config is valid");
        assert_eq!(config.clusters.len(), 1);
        let main = &config.clusters[0];
        assert_eq!(main.name, "main");
        assert_eq!(main.listen, Some("127.0.0.1:6432".parse().unwrap()));
        assert_eq!(main.auto_pause_after, Duration::from_secs(300));
        assert_eq!(main.users[0].name, "postgres");
        assert_eq!(config.storage_copies().len(), 6);
        assert_eq!(config.storage.write_quorum, 4);
    }

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.capacity, CapacityConfig::default());
        assert_eq!(config.runtime.data_dir, PathBuf::from("/etc/pgtide/data"));
        assert_eq!(
            config.storage_copies()[0],
            PathBuf::from("/etc/pgtide/data/copies/a1")
        );
        assert_eq!(config.clusters[0].pool_mode, PoolMode::Session);
        assert_eq!(config.clusters[0].min_acu, 0.0);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = MINIMAL.replace("max_acu = 4", "max_acu = 4\nmax_acus = 5");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");
        assert!(err.to_string().contains("max_acus"), "{err}");
        assert!(err.to_string().starts_with("test.toml:6:"), "{err}");
    }

    #[test]
    fn bad_value_type_names_the_line() {
        let text = MINIMAL.replace("max_acu = 4", "max_acu = \"lots\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
    }

    #[test]
    fn min_above_max_is_refused_with_key_and_line() {
        let text = MINIMAL.replace("max_acu = 4", "min_acu = 6\nmax_acu = 4");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[0].max_acu"));
        assert_eq!(err.line, Some(6), "{err}");
    }

    #[test]
    fn acu_must_be_a_step_multiple() {
        let err = parse(&MINIMAL.replace("max_acu = 4", "max_acu = 1.3")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[0].max_acu"), "{err}");
    }

    #[test]
    fn durations_use_humantime() {
        let text = MINIMAL.replace("max_acu = 4", "max_acu = 4\nauto_pause_after = \"1m 30s\"");
        assert_eq!(
            parse(&text).unwrap().clusters[0].auto_pause_after,
            Duration::from_secs(90)
        );
        let text = MINIMAL.replace("max_acu = 4", "max_acu = 4\nauto_pause_after = \"500ms\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[0].auto_pause_after"));
        assert_eq!(err.line, Some(6));
    }

    #[test]
    fn duplicate_names_and_ports_are_refused() {
        let twice = format!("{MINIMAL}{MINIMAL}");
        let err = parse(&twice).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[1].name"));
        assert_eq!(err.line, Some(12), "{err}");
        let same_port = format!("{MINIMAL}{}", MINIMAL.replace("\"main\"", "\"other\""));
        let err = parse(&same_port).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[1].listen"));
    }

    #[test]
    fn a_cluster_needs_a_user() {
        let text = MINIMAL
            .split("[[clusters.users]]")
            .next()
            .unwrap()
            .to_string();
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[0]"));
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn unknown_pool_mode_is_refused() {
        let text = MINIMAL.replace("max_acu = 4", "max_acu = 4\npool_mode = \"statement\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");
        assert!(err.message.contains("statement"), "{err}");
    }

    #[test]
    fn listen_may_be_left_out_only_with_tenants() {
        let text = MINIMAL.replace("listen = \"127.0.0.1:6432\"\n", "");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[0]"), "{err}");
        assert!(err.message.contains("[tenants]"), "{err}");
        let shared = format!("[tenants]\nlisten = \"127.0.0.1:5432\"\n{text}");
        let config = parse(&shared).unwrap();
        assert_eq!(config.clusters[0].listen, None);
        assert_eq!(
            config.tenants.unwrap().listen,
            "127.0.0.1:5432".parse().unwrap()
        );
        let clash = format!("[tenants]\nlisten = \"127.0.0.1:6432\"\n{MINIMAL}");
        let err = parse(&clash).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[0].listen"), "{err}");
    }

    #[test]
    fn write_quorum_must_fit_the_copies() {
        let text = format!("[storage]\nwrite_quorum = 7\n{MINIMAL}");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("storage.write_quorum"));
        assert_eq!(err.line, Some(2));
        let off = format!("[storage]\ncopies = []\n{MINIMAL}");
        assert!(parse(&off).unwrap().storage_copies().is_empty());
    }

    #[test]
    fn zones_come_from_the_copies_names_or_from_zones_tables() {
        let config = parse(MINIMAL).unwrap();
        let zones = config.zones();
        let names: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(zones[1].copies.len(), 2);
        let explicit = format!(
            "[storage]\ncopies = [\"x\", \"y\", \"z\"]\nwrite_quorum = 2\n\n\
             [[zones]]\nname = \"east\"\ncopies = [\"x\"]\n\n[[zones]]\nname = \"west\"\n\
             copies = [\"y\", \"z\"]\n\n{MINIMAL}"
        );
        let names: Vec<String> = parse(&explicit)
            .unwrap()
            .zones()
            .into_iter()
            .map(|z| z.name)
            .collect();
        assert_eq!(names, ["east", "west"]);
        let stray = explicit.replace("copies = [\"x\"]", "copies = [\"elsewhere\"]");
        let err = parse(&stray).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("zones[0].copies"));
        assert!(
            err.message.contains("is not one of [storage] copies"),
            "{err}"
        );
    }

    #[test]
    fn standbys_need_zones_copies_and_a_reader_endpoint_needs_standbys() {
        let with = |lines: &str, storage: &str| {
            let text = format!("{storage}{MINIMAL}").replacen(
                "max_acu = 4",
                &format!("max_acu = 4\n{lines}"),
                1,
            );
            parse(&text)
        };
        let two = with("standbys = 2\nreader_listen = \"127.0.0.1:7433\"", "").unwrap();
        assert_eq!(two.clusters[0].standbys, 2);
        assert_eq!(two.clusters[0].max_reader_lag, Duration::from_secs(30));
        let err = with("standbys = 3", "").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[0].standbys"));
        assert!(
            err.message.contains("need 4 zones, and there are 3"),
            "{err}"
        );
        let err = with("standbys = 1", "[storage]\ncopies = []\n").unwrap_err();
        assert!(err.message.contains("needs [storage] copies"), "{err}");
        let err = with("reader_listen = \"127.0.0.1:7433\"", "").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("clusters[0].reader_listen"));
        let err = with("standbys = 1\nreader_listen = \"127.0.0.1:6432\"", "").unwrap_err();
        assert!(err.message.contains("already used"), "{err}");
    }
}

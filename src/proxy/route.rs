//! Which cluster a client of the shared endpoint (`[tenants] listen`) is for, the way Neon's
//! proxy routes: by the TLS SNI host name's first label (`NAME.example.com`), else by
//! `endpoint=NAME` in the startup `options` (also `-c endpoint=NAME` and `--endpoint=NAME`),
//! else by the database name (the client then reaches that cluster's `postgres` database).
//!
//! A pure function of what the handshake saw, so that every rule is unit-tested here; the
//! `endpoint` option is pgtide's and is taken out of `options` before they reach the compute.

use super::handshake::{option_words, Escapes, Startup};
use crate::cluster::ClusterHandle;

/// The database a client routed by its database name is connected to.
pub const DEFAULT_DATABASE: &str = "postgres";

/// Where the proxy looks a routed cluster up (the tenants' registry).
pub trait Directory: Send + Sync + 'static {
    fn find(&self, name: &str) -> Option<ClusterHandle>;
}

/// Which rule chose the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteBy {
    Sni,
    Option,
    Database,
}

/// The cluster a connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub cluster: String,
    pub by: RouteBy,
}

/// Why no cluster could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "inconsistent cluster name: the TLS server name says \"{sni}\" and options say \"{option}\""
    )]
    Inconsistent { sni: String, option: String },
}

/// The cluster `startup` is for, and `startup` made ready for that cluster's compute: the
/// `endpoint` option taken out of `options`, and the database set to `postgres` when the
/// database name was the route.
///
/// SNI counts only for a host name of at least two labels (`alpha.db.example` → `alpha`): a
/// client that dials `localhost` or the machine's bare name routes by options or database.
pub fn resolve(sni: Option<&str>, startup: &mut Startup) -> Result<Route, RouteError> {
    let from_sni = sni.and_then(sni_label).map(str::to_ascii_lowercase);
    let mut from_option = None;
    startup.params.retain_mut(|(key, value)| {
        if key != "options" {
            return true;
        }
        let (endpoint, rest) = take_endpoint(value);
        from_option = endpoint.or(from_option.take());
        *value = rest;
        !value.is_empty()
    });
    match (from_sni, from_option) {
        (Some(sni), Some(option)) if sni != option => Err(RouteError::Inconsistent { sni, option }),
        (Some(cluster), _) => Ok(Route {
            cluster,
            by: RouteBy::Sni,
        }),
        (None, Some(cluster)) => Ok(Route {
            cluster,
            by: RouteBy::Option,
        }),
        (None, None) => {
            let cluster = std::mem::replace(&mut startup.database, DEFAULT_DATABASE.to_string());
            for (key, value) in &mut startup.params {
                if key == "database" {
                    *value = DEFAULT_DATABASE.to_string();
                }
            }
            Ok(Route {
                cluster,
                by: RouteBy::Database,
            })
        }
    }
}

/// The first label of a host name with a domain after it; none for an IP address (clients do
/// not send those as SNI, but a bad one may) or a bare name.
fn sni_label(host: &str) -> Option<&str> {
    let (label, domain) = host.split_once('.')?;
    if label.is_empty() || domain.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    Some(label)
}

/// Splits `options` into the `endpoint` it names (the last one wins, as with any setting) and
/// the words left, in order and with their escapes.
fn take_endpoint(options: &str) -> (Option<String>, String) {
    let words = option_words(options, Escapes::Keep);
    let mut endpoint = None;
    let mut kept: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        let (setting, used) = if word == "-c" {
            (words.get(i + 1).map(String::as_str), 2)
        } else if let Some(rest) = word.strip_prefix("--") {
            (Some(rest), 1)
        } else if let Some(rest) = word.strip_prefix("-c") {
            (Some(rest), 1)
        } else {
            (Some(word), 1)
        };
        match setting.and_then(|s| s.split_once('=')) {
            Some(("endpoint", name)) => {
                endpoint = Some(unescape(name).to_ascii_lowercase());
            }
            _ => kept.extend(
                words[i..(i + used).min(words.len())]
                    .iter()
                    .map(String::as_str),
            ),
        }
        i += used;
    }
    (endpoint, kept.join(" "))
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(database: &str, options: Option<&str>) -> Startup {
        let mut params = vec![
            ("user".to_string(), "app".to_string()),
            ("database".to_string(), database.to_string()),
        ];
        if let Some(options) = options {
            params.push(("options".to_string(), options.to_string()));
        }
        Startup {
            user: "app".to_string(),
            database: database.to_string(),
            params,
            minor: 0,
            unsupported_options: Vec::new(),
        }
    }

    fn param<'a>(startup: &'a Startup, key: &str) -> Option<&'a str> {
        startup
            .params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn sni_first_label_wins_and_keeps_the_database() {
        let mut s = startup("shop", None);
        let route = resolve(Some("alpha.db.example.com"), &mut s).unwrap();
        assert_eq!(route.cluster, "alpha");
        assert_eq!(route.by, RouteBy::Sni);
        assert_eq!(s.database, "shop");
        assert_eq!(param(&s, "database"), Some("shop"));
    }

    #[test]
    fn a_bare_host_name_or_an_address_is_not_a_route() {
        for sni in ["localhost", "127.0.0.1", ".x", "x."] {
            let mut s = startup("beta", None);
            let route = resolve(Some(sni), &mut s).unwrap();
            assert_eq!(route.by, RouteBy::Database, "{sni}");
            assert_eq!(route.cluster, "beta");
        }
    }

    #[test]
    fn endpoint_option_in_every_spelling_is_taken_out() {
        for (options, left) in [
            ("endpoint=gamma", None),
            ("-c endpoint=gamma", None),
            ("-cendpoint=gamma", None),
            ("--endpoint=gamma", None),
            (
                "-c search_path=a,b endpoint=gamma -c work_mem=4MB",
                Some("-c search_path=a,b -c work_mem=4MB"),
            ),
            ("-c x=a\\ b -c endpoint=GAMMA", Some("-c x=a\\ b")),
        ] {
            let mut s = startup("shop", Some(options));
            let route = resolve(None, &mut s).unwrap();
            assert_eq!(route.cluster, "gamma", "{options}");
            assert_eq!(route.by, RouteBy::Option);
            assert_eq!(param(&s, "options"), left, "{options}");
            assert_eq!(s.database, "shop");
        }
    }

    #[test]
    fn the_database_name_routes_to_the_postgres_database() {
        let mut s = startup("delta", Some("-c work_mem=4MB"));
        let route = resolve(None, &mut s).unwrap();
        assert_eq!(
            route,
            Route {
                cluster: "delta".to_string(),
                by: RouteBy::Database
            }
        );
        assert_eq!(s.database, DEFAULT_DATABASE);
        assert_eq!(param(&s, "database"), Some(DEFAULT_DATABASE));
        assert_eq!(param(&s, "options"), Some("-c work_mem=4MB"));
    }

    #[test]
    fn sni_and_option_must_agree() {
        let mut s = startup("shop", Some("endpoint=alpha"));
        assert_eq!(
            resolve(Some("alpha.example.com"), &mut s).unwrap().cluster,
            "alpha"
        );
        let mut s = startup("shop", Some("endpoint=beta"));
        assert_eq!(
            resolve(Some("alpha.example.com"), &mut s),
            Err(RouteError::Inconsistent {
                sni: "alpha".to_string(),
                option: "beta".to_string()
            })
        );
    }
}

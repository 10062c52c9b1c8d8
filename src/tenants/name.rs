//! The names clusters created at run time may take: a DNS label (lowercase letters, digits and
//! '-', starting with a letter, at most 63 characters), so that a name can be the first label
//! of the TLS server name that routes a client to it.

/// Names pgtide keeps for itself: `dropped` is the folder that holds what `drop --keep-data`
/// moved aside, beside the clusters' folders in each storage copy.
const RESERVED: &[&str] = &["dropped"];

/// Why a name cannot be a cluster's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid cluster name \"{0}\": it must be 1 to 63 characters")]
    Length(String),
    #[error("invalid cluster name \"{0}\": it must start with a lowercase letter")]
    Start(String),
    #[error(
        "invalid cluster name \"{0}\": only lowercase letters, digits and '-' are allowed \
         (it is a DNS label)"
    )]
    Characters(String),
    #[error("invalid cluster name \"{0}\": it must not end with '-' (it is a DNS label)")]
    End(String),
    #[error("invalid cluster name \"{0}\": the name is reserved")]
    Reserved(String),
}

/// Checks a name for a cluster created at run time.
pub fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 63 {
        return Err(NameError::Length(name.to_string()));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(NameError::Start(name.to_string()));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(NameError::Characters(name.to_string()));
    }
    if name.ends_with('-') {
        return Err(NameError::End(name.to_string()));
    }
    if RESERVED.contains(&name) {
        return Err(NameError::Reserved(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_accepted() {
        for name in ["a", "shop", "tenant-42", "a1-b2-c3", &"x".repeat(63)] {
            assert_eq!(check(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        let long = "x".repeat(64);
        for (name, error) in [
            ("", NameError::Length(String::new())),
            (long.as_str(), NameError::Length(long.clone())),
            ("1abc", NameError::Start("1abc".into())),
            ("-abc", NameError::Start("-abc".into())),
            ("Shop", NameError::Start("Shop".into())),
            ("sh_op", NameError::Characters("sh_op".into())),
            ("sh.op", NameError::Characters("sh.op".into())),
            ("shöp", NameError::Characters("shöp".into())),
            ("shop-", NameError::End("shop-".into())),
            ("dropped", NameError::Reserved("dropped".into())),
        ] {
            assert_eq!(check(name), Err(error), "{name}");
        }
    }
}

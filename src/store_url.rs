//! The one parser of the URLs that name where memex keeps data: `sqlite://PATH` (a SQLite
//! file), `redis://…` / `rediss://…` (a Redis database) and `file:///ABSOLUTE/FOLDER` (a shared
//! folder). `--episodic`, `--state` and `--kb-url` all go through [`StoreUrl::parse`], each
//! naming the schemes it accepts, so they agree on spelling, on errors, and on never echoing a
//! password ([`redact`]).

use std::path::{Component, PathBuf};

/// A URL scheme memex stores data under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `sqlite://PATH`.
    Sqlite,
    /// `redis://` or `rediss://`.
    Redis,
    /// `file:///ABSOLUTE/FOLDER`.
    File,
}

impl Scheme {
    /// How the scheme is written in messages.
    fn shape(self) -> &'static str {
        match self {
            Scheme::Sqlite => "sqlite://PATH",
            Scheme::Redis => "redis://HOST:PORT/DB",
            Scheme::File => "file:///ABSOLUTE/FOLDER",
        }
    }
}

/// A parsed store URL.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH`; `sqlite:///abs/path` gives an absolute path.
    Sqlite(PathBuf),
    /// `redis://...` or `rediss://...`, passed to the `redis` crate unchanged.
    Redis(String),
    /// `file:///abs/folder`: an absolute folder with no `..`.
    File(PathBuf),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A URL that cannot be used where it was given. The message never echoes more than the
/// scheme of a URL it did not accept, since URLs may carry passwords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(pub String);

impl StoreUrl {
    /// Parses `url`, accepting only the schemes in `accept`. `example` is the file a
    /// `sqlite://` with no path is told to name (`episodes.db`, `agent.db`).
    pub fn parse(url: &str, accept: &[Scheme], example: &str) -> Result<StoreUrl, UrlError> {
        let parsed = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(UrlError(format!(
                    "sqlite:// needs a file path, e.g. sqlite:///var/lib/memex/{example}"
                )));
            }
            Some(StoreUrl::Sqlite(path.into()))
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Some(StoreUrl::Redis(url.to_owned()))
        } else if let Some(path) = url
            .strip_prefix("file://")
            .filter(|_| accept.contains(&Scheme::File))
        {
            let root = PathBuf::from(path);
            let clean = root.is_absolute()
                && path.len() > 1
                && root
                    .components()
                    .all(|c| !matches!(c, Component::ParentDir));
            if !clean {
                return Err(UrlError(
                    "file:// needs an absolute folder with no `..`, e.g. file:///srv/memex/kb"
                        .into(),
                ));
            }
            Some(StoreUrl::File(root))
        } else {
            None
        };
        match parsed {
            Some(u) if accept.contains(&u.scheme()) => Ok(u),
            _ => {
                let scheme: String = match url.split_once("://") {
                    Some((s, _)) => s.chars().take(16).collect(),
                    None => String::new(),
                };
                let shapes: Vec<&str> = accept.iter().map(|s| s.shape()).collect();
                Err(UrlError(format!(
                    "must be {} (got {})",
                    shapes.join(" or "),
                    if scheme.is_empty() {
                        "no scheme".to_owned()
                    } else {
                        format!("scheme {scheme:?}")
                    }
                )))
            }
        }
    }

    /// The scheme of this URL.
    pub fn scheme(&self) -> Scheme {
        match self {
            StoreUrl::Sqlite(_) => Scheme::Sqlite,
            StoreUrl::Redis(_) => Scheme::Redis,
            StoreUrl::File(_) => Scheme::File,
        }
    }

    /// The URL for logs and errors: a password is replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            StoreUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
            StoreUrl::Redis(u) => redact(u),
            StoreUrl::File(p) => format!("file://{}", p.display()),
        }
    }
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`; other URLs unchanged. The
/// user information ends at the last `@` before any `?` or `#`, so a password holding `/` or
/// `@` is hidden whole.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo
                .split_once(':')
                .map_or("", |(u, _)| u)
                .split('/')
                .next()
                .unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Scheme] = &[Scheme::Sqlite, Scheme::Redis, Scheme::File];

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/e.db", ALL, "x.db").unwrap(),
            StoreUrl::Sqlite("/tmp/e.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite://rel/e.db", ALL, "x.db").unwrap(),
            StoreUrl::Sqlite("rel/e.db".into())
        );
        assert_eq!(
            StoreUrl::parse("rediss://h:6380/2", ALL, "x.db").unwrap(),
            StoreUrl::Redis("rediss://h:6380/2".into())
        );
        assert_eq!(
            StoreUrl::parse("file:///srv/kb", ALL, "x.db").unwrap(),
            StoreUrl::File("/srv/kb".into())
        );
    }

    #[test]
    fn refuses_what_it_must_and_never_echoes_a_password() {
        let e = StoreUrl::parse("sqlite://", ALL, "agent.db").unwrap_err();
        assert!(e.0.contains("agent.db"), "{e}");
        for bad in ["file://relative", "file:///a/../b", "file:///", "file://"] {
            assert!(StoreUrl::parse(bad, ALL, "x").is_err(), "{bad}");
        }
        let e = StoreUrl::parse("postgres://u:hunter2@db/x", ALL, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"postgres\"") && !e.contains("hunter2"), "{e}");
        let only = &[Scheme::Sqlite, Scheme::Redis];
        for file in ["file:///srv/kb", "file://rel"] {
            let e = StoreUrl::parse(file, only, "x").unwrap_err().0;
            assert_eq!(
                e,
                "must be sqlite://PATH or redis://HOST:PORT/DB (got scheme \"file\")"
            );
        }
        assert!(StoreUrl::parse("episodes.db", only, "x")
            .unwrap_err()
            .0
            .contains("no scheme"));
    }

    #[test]
    fn redacts_passwords() {
        let u = StoreUrl::parse("redis://:hunter2@127.0.0.1:6379/3", ALL, "x").unwrap();
        assert_eq!(u.redacted(), "redis://:***@127.0.0.1:6379/3");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(redact("redis://127.0.0.1/0"), "redis://127.0.0.1/0");
        assert_eq!(redact("redis://me:pw@h/0"), "redis://me:***@h/0");
        assert_eq!(redact("redis://:ab/cd@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("redis://:a@b@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("redis://h:6379/0?x=a@b"), "redis://h:6379/0?x=a@b");
    }
}

//! Client authentication: checks the credentials in CONNECT against the configured token, single
//! user, or users list (plain or bcrypt passwords). Secrets never leave this module in logs.

use natrium_protocol::ConnectInfo;

use crate::options::{AuthOptions, Permissions, User};

/// Who a client authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name, when users are configured.
    pub user: Option<String>,
    /// The account the client joins; `None` is the global account.
    pub account: Option<String>,
    pub permissions: Option<Permissions>,
}

/// Why a client was refused; the wire error is always `Authorization Violation`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("bad token")]
    BadToken,
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("bad password for user {0:?}")]
    BadPassword(String),
}

impl AuthError {
    /// The user name the failed attempt claimed, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            AuthError::UnknownUser(u) | AuthError::BadPassword(u) => Some(u),
            AuthError::Missing | AuthError::BadToken => None,
        }
    }
}

pub struct Authenticator {
    opts: AuthOptions,
}

impl Authenticator {
    pub fn new(opts: AuthOptions) -> Self {
        Authenticator { opts }
    }

    pub fn required(&self) -> bool {
        self.opts.required()
    }

    /// Checks CONNECT's credentials. Without configured auth everyone is accepted.
    pub fn check(&self, c: &ConnectInfo) -> Result<Identity, AuthError> {
        let o = &self.opts;
        if let Some(token) = &o.token {
            let given = c.auth_token.as_deref().ok_or(AuthError::Missing)?;
            return if password_matches(token, given) {
                Ok(self.anonymous())
            } else {
                Err(AuthError::BadToken)
            };
        }
        if let Some(user) = &o.user {
            let given = c.user.as_deref().ok_or(AuthError::Missing)?;
            let pass = c.pass.as_deref().unwrap_or("");
            if given != user {
                return Err(AuthError::UnknownUser(given.to_string()));
            }
            let want = o.password.as_deref().unwrap_or("");
            return if password_matches(want, pass) {
                Ok(Identity {
                    user: Some(user.clone()),
                    ..self.anonymous()
                })
            } else {
                Err(AuthError::BadPassword(given.to_string()))
            };
        }
        if !o.users.is_empty() {
            let given = match (&c.user, &o.no_auth_user) {
                (Some(u), _) => u.as_str(),
                (None, Some(nau)) if c.pass.is_none() && c.auth_token.is_none() => {
                    let entry = o
                        .users
                        .iter()
                        .find(|u| &u.user == nau)
                        .ok_or_else(|| AuthError::UnknownUser(nau.clone()))?;
                    return Ok(self.identity_of(entry));
                }
                _ => return Err(AuthError::Missing),
            };
            let entry = o
                .users
                .iter()
                .find(|u| u.user == given)
                .ok_or_else(|| AuthError::UnknownUser(given.to_string()))?;
            let pass = c.pass.as_deref().unwrap_or("");
            return if password_matches(&entry.password, pass) {
                Ok(self.identity_of(entry))
            } else {
                Err(AuthError::BadPassword(given.to_string()))
            };
        }
        Ok(self.anonymous())
    }

    /// The account a configured user belongs to.
    pub fn account_of(&self, user: Option<&str>) -> Option<&str> {
        let user = user?;
        self.opts
            .users
            .iter()
            .find(|u| u.user == user)?
            .account
            .as_deref()
    }

    fn anonymous(&self) -> Identity {
        Identity {
            user: None,
            account: None,
            permissions: self.opts.default_permissions.clone(),
        }
    }

    fn identity_of(&self, u: &User) -> Identity {
        Identity {
            user: Some(u.user.clone()),
            account: u.account.clone(),
            permissions: u
                .permissions
                .clone()
                .or_else(|| self.opts.default_permissions.clone()),
        }
    }
}

fn is_bcrypt(s: &str) -> bool {
    s.starts_with("$2a$") || s.starts_with("$2b$") || s.starts_with("$2y$") || s.starts_with("$2x$")
}

/// Compares a configured secret (plain or bcrypt hash) with what the client sent.
fn password_matches(configured: &str, given: &str) -> bool {
    if is_bcrypt(configured) {
        // bcrypt is deliberately slow (milliseconds to a second): on a multi-threaded runtime let
        // the worker's other tasks move elsewhere while this one hashes.
        let verify = || bcrypt::verify(given, configured).unwrap_or(false);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(verify),
            _ => verify(),
        }
    } else {
        constant_time_eq(configured.as_bytes(), given.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::User;

    fn connect(user: Option<&str>, pass: Option<&str>, token: Option<&str>) -> ConnectInfo {
        ConnectInfo {
            user: user.map(String::from),
            pass: pass.map(String::from),
            auth_token: token.map(String::from),
            ..ConnectInfo::default()
        }
    }

    #[test]
    fn token_user_and_users() {
        let a = Authenticator::new(AuthOptions {
            token: Some("s3cr3t".into()),
            ..AuthOptions::default()
        });
        assert!(a.check(&connect(None, None, Some("s3cr3t"))).is_ok());
        assert_eq!(
            a.check(&connect(None, None, Some("nope"))),
            Err(AuthError::BadToken)
        );
        assert_eq!(a.check(&connect(None, None, None)), Err(AuthError::Missing));

        let hash = bcrypt::hash("pw2", 4).expect("hash");
        let a = Authenticator::new(AuthOptions {
            users: vec![
                User {
                    user: "a".into(),
                    password: "pw1".into(),
                    ..User::default()
                },
                User {
                    user: "b".into(),
                    password: hash,
                    ..User::default()
                },
            ],
            no_auth_user: Some("a".into()),
            ..AuthOptions::default()
        });
        assert!(a.check(&connect(Some("a"), Some("pw1"), None)).is_ok());
        assert!(a.check(&connect(Some("b"), Some("pw2"), None)).is_ok());
        assert!(a.check(&connect(Some("b"), Some("pw1"), None)).is_err());
        assert!(a.check(&connect(Some("c"), Some("pw1"), None)).is_err());
        assert_eq!(
            a.check(&connect(None, None, None)).map(|i| i.user),
            Ok(Some("a".into()))
        );
    }
}

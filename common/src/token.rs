//! Join tokens: one line of text that lets a new box enroll with a controller.
//!
//! Form: `sparkjoin1.` followed by unpadded base64url of a small JSON object:
//! `{"gw":["192.168.1.10:9443"],"ca":"<sha256 hex of the CA certificate DER>","id":"<id>","secret":"<secret>"}`.
//!
//! - `gw`: the agent gateway addresses to try, in order (host:port; IPv6 in brackets).
//! - `ca`: pin for the controller's CA certificate, checked on first contact (as kubeadm does),
//!   so the agent cannot be fooled by a machine in the middle.
//! - `id` and `secret`: the controller stores the id and the SHA-256 of the secret; a token is
//!   single-use and expires.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "sparkjoin1.";
/// Longest token text accepted, so a pasted file or garbage is refused early.
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    #[serde(rename = "gw")]
    pub gateways: Vec<String>,
    #[serde(rename = "ca")]
    pub ca_sha256: String,
    pub id: String,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "this is not a Spark Control join token: it must start with '{PREFIX}' (copy the whole line printed by `spark-control token create`)"
    )]
    WrongPrefix,
    #[error("the join token is too long ({0} characters); copy just the one line")]
    TooLong(usize),
    #[error("the join token is damaged ({0}); copy the whole line again")]
    Damaged(String),
}

impl JoinToken {
    /// The one-line text form.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Parse the text form, tolerating surrounding white space. Validates every field.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong(text.len()));
        }
        let body = text.strip_prefix(PREFIX).ok_or(TokenError::WrongPrefix)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Damaged(format!("not base64url: {e}")))?;
        let token: JoinToken = serde_json::from_slice(&json)
            .map_err(|e| TokenError::Damaged(format!("bad contents: {e}")))?;
        token.validate()?;
        Ok(token)
    }

    fn validate(&self) -> Result<(), TokenError> {
        let damaged = |m: &str| Err(TokenError::Damaged(m.to_string()));
        if self.gateways.is_empty() {
            return damaged("no gateway address");
        }
        if self.gateways.iter().any(|g| !is_host_port(g)) {
            return damaged("a gateway address is not host:port");
        }
        if self.ca_sha256.len() != 64 || !self.ca_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return damaged("the CA pin is not a SHA-256 hex digest");
        }
        if !is_token_word(&self.id) || !is_token_word(&self.secret) {
            return damaged("bad id or secret");
        }
        Ok(())
    }
}

fn is_token_word(s: &str) -> bool {
    (8..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The host part of a `host:port` gateway address, without IPv6 brackets (`[::1]:9443` ->
/// `::1`). Text without a port is returned as it is.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `host:port` or `[v6]:port`, with a host of letters, digits, dots, hyphens (or a v6 literal).
pub fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            gateways: vec!["192.168.1.10:9443".into(), "[fe80::1]:9443".into()],
            ca_sha256: "ab".repeat(32),
            id: "tok_0123456789".into(),
            secret: "s3cr3t-s3cr3t-s3cr3t".into(),
        }
    }

    #[test]
    fn round_trips_and_tolerates_whitespace() {
        let text = token().encode();
        assert!(text.starts_with("sparkjoin1."));
        assert!(!text.contains(char::is_whitespace));
        assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), token());
    }

    #[test]
    fn refuses_bad_tokens_with_reasons() {
        let check = |text: &str, want: &str| {
            let err = JoinToken::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        };
        check("hello", "must start with");
        check("sparkjoin1.!!!", "not base64url");
        check(
            &format!("sparkjoin1.{}", URL_SAFE_NO_PAD.encode("{}")),
            "bad contents",
        );
        check(&"x".repeat(5000), "too long");
        let mut t = token();
        t.ca_sha256 = "zz".into();
        check(&t.encode(), "CA pin");
        let mut t = token();
        t.gateways = vec!["no-port".into()];
        check(&t.encode(), "host:port");
        let mut t = token();
        t.gateways = vec![];
        check(&t.encode(), "no gateway");
        let mut t = token();
        t.secret = "a b".into();
        check(&t.encode(), "bad id or secret");
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("10.0.0.1:9443"), "10.0.0.1");
        assert_eq!(host_of("[::1]:9443"), "::1");
        assert_eq!(host_of("spark.local:1"), "spark.local");
        assert_eq!(host_of("spark"), "spark");
    }

    #[test]
    fn host_port_forms() {
        for ok in ["a:1", "10.0.0.1:9443", "[::1]:9443", "spark-1.local:9443"] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in ["", ":1", "a:0", "a:99999", "a b:1", "[zz]:1", "a;rm:1"] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }
}

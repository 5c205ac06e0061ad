//! The daemon's configuration file (TOML): mailboxes, SMTP, store, rules, secrets, limits.
//!
//! Every error names the key path it is about (`mailbox[1].tls`), whether it
//! comes from TOML syntax, a type mismatch, or a check after loading.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// How long records are kept by default: the policy's "two years".
pub const DEFAULT_RETENTION_DAYS: u32 = 730;

/// The longest retention accepted (a century); 0 means for ever.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// A configuration problem, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `smtp.port` or `mailbox[0].password_file`; empty for the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// What the daemon does at start with a mail whose SMTP attempt began (recorded before
/// DATA) but whose outcome was never recorded: the server may or may not have taken it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InDoubt {
    /// At-least-once: send it again, with the same bytes and Message-ID.
    #[default]
    Resend,
    /// At-most-once: hold it for an operator (`complaintd outbox list --held`,
    /// `complaintd outbox release`).
    Hold,
}

impl InDoubt {
    pub fn as_str(self) -> &'static str {
        match self {
            InDoubt::Resend => "resend",
            InDoubt::Hold => "hold",
        }
    }
}

/// How a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text: only sensible on loopback.
    None,
    /// Plain connection upgraded with STARTTLS.
    Starttls,
    /// TLS from the first byte (IMAPS, SMTPS).
    Tls,
}

/// Where a password comes from: never written in the config itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Secret {
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
}

/// What to do with a message on the server once its case is committed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterIngest {
    /// Set `\Seen` (the default). Mail is never deleted.
    #[default]
    Seen,
    /// Move it to this folder.
    MoveTo(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxConfig {
    /// A short name, used in logs, metrics and the store's checkpoints.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// A PEM file of extra trusted roots (a self-signed test server).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub user: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "default_folder")]
    pub folder: String,
    /// The policy channel of complaints that arrive here.
    pub channel: String,
    /// Polling interval when the server has no IDLE.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default)]
    pub after_ingest: AfterIngest,
    /// Messages fetched per UID FETCH.
    #[serde(default = "default_batch")]
    pub batch_size: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Login user; no authentication when absent.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// Envelope and header sender of every mail we send.
    pub from: String,
    /// Most messages sent per minute.
    #[serde(default = "default_send_cap")]
    pub per_minute_cap: u32,
    /// Timeout of each SMTP command.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A mail in doubt after a crash: `"resend"` (default) or `"hold"`.
    #[serde(default)]
    pub in_doubt: InDoubt,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Case numbers look like `PREFIX-YYYY-NNNNNN`.
    #[serde(default = "default_prefix")]
    pub case_prefix: String,
    #[serde(default = "default_width")]
    pub case_number_width: u8,
    /// Memory for the store's page cache, in MiB.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// Days a closed case (and quarantined mail) is kept after its last
    /// event before the daily purge removes it; 0 keeps everything for ever.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    pub dir: PathBuf,
    /// Reload when files change (in addition to SIGHUP).
    #[serde(default = "default_true")]
    pub watch: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    /// The complaint address; reply-token addresses are its plus-addresses.
    pub complaint_address: String,
    /// Addresses that are the daemon itself: mail from them is a loop, never a case.
    #[serde(default)]
    pub own_addresses: Vec<String>,
    /// A file holding the secret that signs reply tokens (at least 32 bytes).
    pub reply_token_secret_file: PathBuf,
    /// How long a department's reply token stays valid.
    #[serde(default = "default_token_days")]
    pub token_valid_days: u32,
    /// Larger messages are recorded, not loaded.
    #[serde(default = "default_max_size")]
    pub max_message_bytes: u64,
    /// How long after closing a customer's reply reopens the case.
    #[serde(default = "default_reopen_days")]
    pub reopen_window_days: u32,
    /// Most acknowledgements one sender gets per hour.
    #[serde(default = "default_ack_cap")]
    pub acks_per_sender_per_hour: u32,
    /// Host part of our Message-IDs.
    #[serde(default = "default_hostname")]
    pub message_id_host: String,
    /// The organisation's name: the display name of our mail and `organisation` in templates.
    #[serde(default)]
    pub organisation: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `complaintd=debug`.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Health and `/metrics`; must be a loopback address.
    pub listen: SocketAddr,
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The IANA time zone the daemon reports in (calendars carry their own).
    #[serde(default = "default_zone")]
    pub time_zone: String,
    pub store: StoreConfig,
    pub rules: RulesConfig,
    pub mail: MailConfig,
    #[serde(rename = "mailbox", default)]
    pub mailboxes: Vec<MailboxConfig>,
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub http: Option<HttpConfig>,
}

fn default_folder() -> String {
    "INBOX".into()
}
fn default_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_batch() -> u32 {
    500
}
fn default_send_cap() -> u32 {
    600
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_prefix() -> String {
    "TS".into()
}
fn default_width() -> u8 {
    6
}
fn default_cache_mb() -> u64 {
    crate::store::DEFAULT_CACHE_MB
}
fn default_retention_days() -> u32 {
    DEFAULT_RETENTION_DAYS
}
fn default_true() -> bool {
    true
}
fn default_token_days() -> u32 {
    90
}
fn default_reopen_days() -> u32 {
    30
}
fn default_max_size() -> u64 {
    25 * 1024 * 1024
}
fn default_ack_cap() -> u32 {
    3
}
fn default_hostname() -> String {
    "complaintd.local".into()
}
fn default_level() -> String {
    "info".into()
}
fn default_zone() -> String {
    "UTC".into()
}

impl MailboxConfig {
    pub fn secret(&self) -> Secret {
        Secret {
            password_file: self.password_file.clone(),
            password_env: self.password_env.clone(),
        }
    }
}

impl SmtpConfig {
    pub fn secret(&self) -> Secret {
        Secret {
            password_file: self.password_file.clone(),
            password_env: self.password_env.clone(),
        }
    }
}

impl Config {
    /// Reads and checks a configuration file. Relative paths in it are taken
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                key: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }]
        })?;
        let mut config = Config::parse(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// Parses configuration text without looking at the file system.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = render_path(e.path());
            let inner = e.into_inner();
            let message = inner.message().to_owned();
            let location = inner.span().map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            });
            vec![ConfigError {
                key,
                message: format!("{message}{}", location.unwrap_or_default()),
            }]
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.store.path);
        fix(&mut self.rules.dir);
        fix(&mut self.mail.reply_token_secret_file);
        for m in &mut self.mailboxes {
            if let Some(p) = &mut m.password_file {
                fix(p);
            }
            if let Some(p) = &mut m.ca_file {
                fix(p);
            }
        }
        if let Some(p) = &mut self.smtp.password_file {
            fix(p);
        }
        if let Some(p) = &mut self.smtp.ca_file {
            fix(p);
        }
    }

    /// Checks what types alone cannot: every problem is reported, not just the first.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |key: String, message: String| errors.push(ConfigError { key, message });
        if self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            err(
                "time_zone".into(),
                format!("unknown time zone `{}`", self.time_zone),
            );
        }
        if self.mailboxes.is_empty() {
            err(
                "mailbox".into(),
                "at least one [[mailbox]] is needed".into(),
            );
        }
        for (i, m) in self.mailboxes.iter().enumerate() {
            let key = |k: &str| format!("mailbox[{i}].{k}");
            if self.mailboxes[..i].iter().any(|o| o.name == m.name) {
                err(key("name"), format!("duplicate mailbox name `{}`", m.name));
            }
            if m.batch_size == 0 {
                err(key("batch_size"), "must be at least 1".into());
            }
            if m.poll_interval < Duration::from_secs(1) {
                err(key("poll_interval"), "must be at least 1s".into());
            }
            check_secret(&m.secret(), &format!("mailbox[{i}]"), &mut err);
            check_readable(m.ca_file.as_deref(), &key("ca_file"), &mut err);
        }
        if self.smtp.per_minute_cap == 0 {
            err("smtp.per_minute_cap".into(), "must be at least 1".into());
        }
        if !self.smtp.from.contains('@') {
            err(
                "smtp.from".into(),
                format!("`{}` is not a mail address", self.smtp.from),
            );
        }
        if self.smtp.user.is_some() {
            check_secret(&self.smtp.secret(), "smtp", &mut err);
        }
        check_readable(self.smtp.ca_file.as_deref(), "smtp.ca_file", &mut err);
        if !self.mail.complaint_address.contains('@') {
            err(
                "mail.complaint_address".into(),
                format!("`{}` is not a mail address", self.mail.complaint_address),
            );
        }
        match std::fs::read(&self.mail.reply_token_secret_file) {
            Ok(bytes) if bytes.trim_ascii().len() < 32 => err(
                "mail.reply_token_secret_file".into(),
                format!(
                    "{} holds fewer than 32 bytes; reply tokens need a long secret",
                    self.mail.reply_token_secret_file.display()
                ),
            ),
            Ok(_) => {}
            Err(e) => err(
                "mail.reply_token_secret_file".into(),
                format!(
                    "cannot read {}: {e}",
                    self.mail.reply_token_secret_file.display()
                ),
            ),
        }
        if self.store.case_prefix.is_empty()
            || !self
                .store
                .case_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        {
            err(
                "store.case_prefix".into(),
                "must be letters and digits only".into(),
            );
        }
        if !(3..=12).contains(&self.store.case_number_width) {
            err(
                "store.case_number_width".into(),
                "must be between 3 and 12".into(),
            );
        }
        if self.store.cache_mb < crate::store::MIN_CACHE_MB {
            err(
                "store.cache_mb".into(),
                format!("must be at least {}", crate::store::MIN_CACHE_MB),
            );
        }
        let retention = self.store.retention_days;
        if retention > MAX_RETENTION_DAYS {
            err(
                "store.retention_days".into(),
                format!("must be at most {MAX_RETENTION_DAYS} (0 keeps records for ever)"),
            );
        } else if retention != 0 && retention < self.mail.reopen_window_days {
            err(
                "store.retention_days".into(),
                format!(
                    "must be 0 (keep for ever) or at least mail.reopen_window_days ({}), or a \
                     closed case could be purged while a reply may still reopen it",
                    self.mail.reopen_window_days
                ),
            );
        }
        let case_number_len = self.store.case_prefix.len()
            + "-YYYY-".len()
            + usize::from(self.store.case_number_width);
        if self.mail.complaint_address.contains('@')
            && !crate::mail::token::fits_local_part(&self.mail.complaint_address, case_number_len)
        {
            err(
                "mail.complaint_address".into(),
                format!(
                    "`{}` is too long for reply addresses: its local part and a case number \
                     ({case_number_len} characters) may have at most {} characters together, \
                     or departments' replies could not be addressed",
                    self.mail.complaint_address,
                    crate::mail::token::MAX_LOCAL_PART - 1 - 1 - crate::mail::token::KEY_CHARS,
                ),
            );
        }
        if !self.rules.dir.is_dir() {
            err(
                "rules.dir".into(),
                format!("{} is not a directory", self.rules.dir.display()),
            );
        }
        if let Some(http) = &self.http {
            if !http.listen.ip().is_loopback() {
                err(
                    "http.listen".into(),
                    format!(
                        "{} is not a loopback address; metrics are not for the network",
                        http.listen
                    ),
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Secret {
    /// Reads the password from its file or environment variable.
    pub fn read(&self) -> std::io::Result<String> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)?;
            return Ok(text.lines().next().unwrap_or("").to_owned());
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("environment variable {var} is not set"),
                )
            });
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no password_file or password_env",
        ))
    }
}

fn check_secret(secret: &Secret, prefix: &str, err: &mut impl FnMut(String, String)) {
    match (&secret.password_file, &secret.password_env) {
        (Some(_), Some(_)) => err(
            format!("{prefix}.password_env"),
            "give password_file or password_env, not both".into(),
        ),
        (None, None) => err(
            format!("{prefix}.password_file"),
            "a password_file or password_env is needed".into(),
        ),
        (Some(p), None) => check_readable(Some(p), &format!("{prefix}.password_file"), err),
        (None, Some(var)) => {
            if std::env::var_os(var).is_none() {
                err(
                    format!("{prefix}.password_env"),
                    format!("environment variable {var} is not set"),
                );
            }
        }
    }
}

fn check_readable(path: Option<&Path>, key: &str, err: &mut impl FnMut(String, String)) {
    if let Some(p) = path {
        if let Err(e) = std::fs::metadata(p) {
            err(key.to_owned(), format!("cannot read {}: {e}", p.display()));
        }
    }
}

/// Renders a serde path as `mailbox[0].tls`.
fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[store]
path = "store"
[rules]
dir = "rules"
[mail]
complaint_address = "complaints@example.test"
reply_token_secret_file = "secret"
[[mailbox]]
name = "complaints"
host = "127.0.0.1"
port = 10143
tls = "none"
user = "complaints@example.test"
password_env = "X"
channel = "own"
[smtp]
host = "127.0.0.1"
port = 10025
tls = "none"
from = "complaints@example.test"
"#;

    #[test]
    fn parses_a_minimal_file_with_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.mailboxes[0].folder, "INBOX");
        assert_eq!(config.mailboxes[0].poll_interval, Duration::from_secs(30));
        assert_eq!(config.mailboxes[0].after_ingest, AfterIngest::Seen);
        assert_eq!(config.smtp.per_minute_cap, 600);
        assert_eq!(config.smtp.in_doubt, InDoubt::Resend);
        assert_eq!(config.store.case_prefix, "TS");
        assert_eq!(config.store.cache_mb, crate::store::DEFAULT_CACHE_MB);
    }

    #[test]
    fn a_store_cache_below_the_minimum_is_refused_with_its_key() {
        let small = MINIMAL.replace("path = \"store\"", "path = \"store\"\ncache_mb = 64");
        assert_eq!(Config::parse(&small).unwrap().store.cache_mb, 64);
        let tiny = MINIMAL.replace("path = \"store\"", "path = \"store\"\ncache_mb = 2");
        let mut config = Config::parse(&tiny).unwrap();
        config.resolve_paths(Path::new("/nonexistent-dir"));
        let errors = config.validate().unwrap_err();
        let error = errors
            .iter()
            .find(|e| e.key == "store.cache_mb")
            .expect("the cache size is refused");
        assert_eq!(error.message, "must be at least 8");
    }

    #[test]
    fn the_retention_defaults_to_two_years_and_is_checked_with_its_key() {
        assert_eq!(Config::parse(MINIMAL).unwrap().store.retention_days, 730);
        let refused = |days: u32| {
            let text = MINIMAL.replace(
                "path = \"store\"",
                &format!("path = \"store\"\nretention_days = {days}"),
            );
            let mut config = Config::parse(&text).unwrap();
            assert_eq!(config.store.retention_days, days);
            config.resolve_paths(Path::new("/nonexistent-dir"));
            let errors = config.validate().err().unwrap_or_default();
            errors
                .into_iter()
                .find(|e| e.key == "store.retention_days")
                .map(|e| e.message)
        };
        assert_eq!(refused(0), None);
        assert_eq!(refused(365), None);
        assert_eq!(refused(MAX_RETENTION_DAYS), None);
        assert_eq!(
            refused(MAX_RETENTION_DAYS + 1).as_deref(),
            Some("must be at most 36500 (0 keeps records for ever)")
        );
        let short = refused(7).expect("shorter than the reopen window");
        assert!(short.contains("mail.reopen_window_days (30)"), "{short}");
        let negative = MINIMAL.replace("path = \"store\"", "path = \"store\"\nretention_days = -1");
        let errors = Config::parse(&negative).unwrap_err();
        assert_eq!(errors[0].key, "store.retention_days");
    }

    #[test]
    fn a_type_error_names_its_key_path() {
        let text = MINIMAL.replace("tls = \"none\"\nuser", "tls = \"sometimes\"\nuser");
        let errors = Config::parse(&text).unwrap_err();
        assert_eq!(errors[0].key, "mailbox[0].tls");
        assert!(
            errors[0].message.starts_with("unknown variant `sometimes`"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn in_doubt_is_resend_or_hold_and_anything_else_names_its_key() {
        let hold = MINIMAL.replace("[smtp]\n", "[smtp]\nin_doubt = \"hold\"\n");
        assert_eq!(Config::parse(&hold).unwrap().smtp.in_doubt, InDoubt::Hold);
        let resend = MINIMAL.replace("[smtp]\n", "[smtp]\nin_doubt = \"resend\"\n");
        assert_eq!(
            Config::parse(&resend).unwrap().smtp.in_doubt,
            InDoubt::Resend
        );
        let wrong = MINIMAL.replace("[smtp]\n", "[smtp]\nin_doubt = \"drop\"\n");
        let errors = Config::parse(&wrong).unwrap_err();
        assert_eq!(errors[0].key, "smtp.in_doubt");
        assert!(
            errors[0].message.starts_with("unknown variant `drop`"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_path() {
        let text = MINIMAL.replace("[smtp]\n", "[smtp]\nprot = 25\n");
        let errors = Config::parse(&text).unwrap_err();
        assert_eq!(errors[0].key, "smtp.prot");
        assert!(
            errors[0].message.starts_with("unknown field `prot`"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn validation_reports_every_problem_with_its_key() {
        let text = MINIMAL
            .replace(
                "password_env = \"X\"",
                "password_env = \"COMPLAINTD_TEST_UNSET_VARIABLE\"",
            )
            .replace("from = \"complaints@example.test\"", "from = \"nobody\"");
        let mut config = Config::parse(&text).unwrap();
        config.resolve_paths(Path::new("/nonexistent-dir"));
        let errors = config.validate().unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "mailbox[0].password_env",
                "smtp.from",
                "mail.reply_token_secret_file",
                "rules.dir"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn a_complaint_address_too_long_for_reply_tokens_is_refused() {
        let text = MINIMAL.replace(
            "complaint_address = \"complaints@example.test\"",
            "complaint_address = \"customer-complaints-and-feedback@example.test\"",
        );
        let mut config = Config::parse(&text).unwrap();
        config.resolve_paths(Path::new("/nonexistent-dir"));
        let errors = config.validate().unwrap_err();
        let error = errors
            .iter()
            .find(|e| e.key == "mail.complaint_address")
            .expect("the address is refused");
        assert_eq!(
            error.message,
            "`customer-complaints-and-feedback@example.test` is too long for reply addresses: \
             its local part and a case number (14 characters) may have at most 38 characters \
             together, or departments' replies could not be addressed"
        );
    }
}

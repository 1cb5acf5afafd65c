//! The C++ kvssink's own credential sources, as `aws-config` credential providers:
//!
//! - [`FileCredentials`]: the C++ SDK's rotating credential file (`credential-path`): one line
//!   `CREDENTIALS <access key id> [<expiration>] <secret access key> [<session token>]`, the expiration as
//!   `YYYY-MM-DDTHH:MM:SSZ`. The file is read again whenever it changes (its modification time or size), and
//!   the credentials it gives expire at its expiration or after `rotation-period`, whichever comes first, so
//!   that the SDK asks again.
//!
//! Written here because no AWS crate reads this format: it is the C++ producer SDK's, not the shared
//! `~/.aws/credentials` file that `aws-config` reads.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};

/// Parses the C++ SDK's credential file. `now + period` bounds the expiry.
pub fn parse_credential_file(text: &str, now: SystemTime, period: Duration) -> Result<Credentials, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let usage = "expected one line `CREDENTIALS <access key id> [<expiration YYYY-MM-DDTHH:MM:SSZ>] \
                 <secret access key> [<session token>]`";
    let expiration = |text: &str| {
        aws_smithy_types::DateTime::from_str(text, aws_smithy_types::date_time::Format::DateTime)
            .ok()
            .and_then(|t| SystemTime::try_from(t).ok())
    };
    let (key, expires, secret, token) = match fields.as_slice() {
        [] => return Err(format!("the file is empty: {usage}")),
        [first, ..] if *first != "CREDENTIALS" => {
            return Err(format!("the file does not start with CREDENTIALS: {usage}"));
        }
        ["CREDENTIALS", key, secret] => (*key, None, *secret, None),
        ["CREDENTIALS", key, when, secret] if expiration(when).is_some() => {
            (*key, expiration(when), *secret, None)
        }
        ["CREDENTIALS", key, secret, token] => (*key, None, *secret, Some(*token)),
        ["CREDENTIALS", key, when, secret, token] => match expiration(when) {
            Some(at) => (*key, Some(at), *secret, Some(*token)),
            None => {
                return Err(format!(
                    "the expiration (the third field) is not a YYYY-MM-DDTHH:MM:SSZ time: {usage}"
                ));
            }
        },
        fields => return Err(format!("{} fields after CREDENTIALS: {usage}", fields.len() - 1)),
    };
    if let Some(at) = expires
        && at <= now
    {
        let when = aws_smithy_types::DateTime::from(at)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default();
        return Err(format!("the credentials in it expired at {when}"));
    }
    let limit = now + period.max(Duration::from_secs(60));
    let expiry = expires.map_or(limit, |at| at.min(limit));
    Ok(Credentials::new(key, secret, token.map(str::to_owned), Some(expiry), "credential-path"))
}

/// A file's modification time and size: when either changes, the file is read again.
type FileStamp = (Option<SystemTime>, u64);

/// See the module documentation.
pub struct FileCredentials {
    path: PathBuf,
    period: Duration,
    /// The file's stamp when it was last read, and what it gave.
    cache: Mutex<Option<(FileStamp, Credentials)>>,
}

impl std::fmt::Debug for FileCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCredentials").field("path", &self.path).field("period", &self.period).finish()
    }
}

impl FileCredentials {
    pub fn new(path: impl Into<PathBuf>, period: Duration) -> Self {
        FileCredentials { path: path.into(), period, cache: Mutex::new(None) }
    }

    fn load(&self) -> Result<Credentials, CredentialsError> {
        let path = self.path.display();
        let metadata = std::fs::metadata(&self.path)
            .map_err(|e| CredentialsError::not_loaded(format!("credential-path {path}: {e}")))?;
        let stamp = (metadata.modified().ok(), metadata.len());
        let now = SystemTime::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, credentials)) = cache.as_ref()
            && *seen == stamp
            && credentials.expiry().is_some_and(|at| at > now)
        {
            return Ok(credentials.clone());
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| CredentialsError::not_loaded(format!("credential-path {path}: {e}")))?;
        let credentials = parse_credential_file(&text, now, self.period).map_err(|why| {
            CredentialsError::invalid_configuration(format!("credential-path {path}: {why}"))
        })?;
        *cache = Some((stamp, credentials.clone()));
        Ok(credentials)
    }
}

impl ProvideCredentials for FileCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(self.load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn every_form_of_the_cpp_credential_file() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let short = parse_credential_file("CREDENTIALS AKID SECRET\n", now, HOUR).unwrap();
        assert_eq!((short.access_key_id(), short.secret_access_key()), ("AKID", "SECRET"));
        assert_eq!(short.session_token(), None);
        assert_eq!(short.expiry(), Some(now + HOUR));

        // 2027-01-15T21:20:00Z is 1,800,000,000 + 48,000 s.
        let full =
            parse_credential_file("CREDENTIALS AKID 2027-01-15T21:20:00Z SECRET TOKEN", now, 20 * HOUR)
                .unwrap();
        assert_eq!(full.session_token(), Some("TOKEN"));
        assert_eq!(full.expiry(), Some(now + Duration::from_secs(48_000)));
        // The rotation period bounds it.
        let bounded =
            parse_credential_file("CREDENTIALS AKID 2027-01-15T21:20:00Z SECRET TOKEN", now, HOUR).unwrap();
        assert_eq!(bounded.expiry(), Some(now + HOUR));

        let four =
            parse_credential_file("CREDENTIALS AKID 2027-01-15T21:20:00Z SECRET", now, 20 * HOUR).unwrap();
        assert_eq!((four.secret_access_key(), four.session_token()), ("SECRET", None));
        let four = parse_credential_file("CREDENTIALS AKID SECRET TOKEN", now, HOUR).unwrap();
        assert_eq!((four.secret_access_key(), four.session_token()), ("SECRET", Some("TOKEN")));
    }

    #[test]
    fn a_bad_file_is_named_without_its_secrets() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let error = |text: &str| parse_credential_file(text, now, HOUR).unwrap_err();
        assert!(error("").starts_with("the file is empty"));
        assert!(
            error("[default]\naws_access_key_id = X").starts_with("the file does not start with CREDENTIALS")
        );
        assert!(error("CREDENTIALS AKID").starts_with("1 fields after CREDENTIALS"));
        assert!(
            error("CREDENTIALS AKID tomorrow SECRET-X TOKEN-Y")
                .starts_with("the expiration (the third field)")
        );
        let expired = error("CREDENTIALS AKID 2020-01-01T00:00:00Z SECRET-X TOKEN-Y");
        assert_eq!(expired, "the credentials in it expired at 2020-01-01T00:00:00Z");
        for text in [error("CREDENTIALS AKID tomorrow SECRET-X TOKEN-Y"), expired] {
            assert!(!text.contains("SECRET-X") && !text.contains("TOKEN-Y"), "{text}");
        }
    }

    #[test]
    fn the_file_is_read_again_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("kvs-credential-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("credential");
        std::fs::write(&path, "CREDENTIALS FIRST SECRET1").unwrap();
        let provider = FileCredentials::new(&path, HOUR);
        assert_eq!(provider.load().unwrap().access_key_id(), "FIRST");
        std::fs::write(&path, "CREDENTIALS SECOND SECRET22").unwrap();
        assert_eq!(provider.load().unwrap().access_key_id(), "SECOND");
        std::fs::remove_file(&path).unwrap();
        let error = provider.load().unwrap_err();
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert!(cause.starts_with(&format!("credential-path {}: No such file", path.display())), "{cause}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// SPDX-License-Identifier: MPL-2.0

//! The `kvs-emulator` command: prints its base URL on the first stdout line, logs to stderr.

use std::io::Write;
use std::net::SocketAddr;

use std::time::Duration;

use clap::Parser;
use kvs_emulator::putmedia::PutMediaConfig;
use kvs_emulator::{Config, Emulator};

/// A local Kinesis Video Streams-compatible server (control plane, PutMedia, GetMedia, archived media).
///
/// The first line printed on stdout is the base URL (e.g. http://127.0.0.1:41234), so scripts can start it
/// on a free port with `--listen 127.0.0.1:0`. Logs go to stderr.
// No Debug: the arguments hold secrets.
#[derive(Parser)]
#[command(name = "kvs-emulator", version)]
struct Args {
    /// Address and port to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:4567")]
    listen: SocketAddr,
    /// AWS region the emulator pretends to be in (used in ARNs and signature checks).
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// An access key the emulator accepts, as ACCESS_KEY_ID:SECRET_ACCESS_KEY (repeatable). With at least one,
    /// every request must carry a valid SigV4 signature by one of them; with none, signatures are not checked.
    /// Command lines are visible to every user of the machine (ps, /proc): `--credentials-file` or the
    /// KVS_EMULATOR_CREDENTIALS variable keep the secret off it.
    #[arg(long = "credentials", value_name = "AKID:SECRET", value_parser = parse_credentials)]
    credentials: Vec<(String, String)>,
    /// A file of accepted access keys, one ACCESS_KEY_ID:SECRET_ACCESS_KEY per line (blank lines and lines
    /// starting with # are skipped). Added to --credentials and KVS_EMULATOR_CREDENTIALS (keys separated by
    /// white space).
    #[arg(long, value_name = "FILE")]
    credentials_file: Option<std::path::PathBuf>,
    /// PEM certificate (chain) to serve HTTPS with; needs --tls-key. The base URL then starts with https://.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Directory where streams and fragments are kept, so they survive a restart (default: memory only).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Seconds after which a PutMedia connection gets ERROR 4003 MAX_CONNECTION_DURATION_REACHED and is closed
    /// (the service: 45 minutes).
    #[arg(long, value_name = "SECONDS", default_value_t = 2700)]
    max_connection_duration: u64,
    /// Seconds without PutMedia body bytes after which the emulator ends the connection (the service: 30).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    idle_timeout: u64,
    /// Lift the service's per-stream PutMedia limits (5 fragments/s, 12.5 MB/s, one connection per stream), for
    /// benchmarks that measure a client alone. Tests and users keep them.
    #[arg(long)]
    no_service_limits: bool,
    /// Record when every uploaded frame arrives (GET /_emulator/streams/NAME/arrivals), to measure a producer's
    /// latency.
    #[arg(long)]
    record_arrivals: bool,
    /// Also serve the AWS IoT credentials provider endpoint (GET /role-aliases/ALIAS/credentials, over HTTPS
    /// with client certificates) on this address; needs --iot-cert, --iot-key and --iot-client-ca. Its address
    /// is printed on stderr ("IoT credentials endpoint on HOST:PORT").
    #[arg(long, value_name = "ADDR", requires_all = ["iot_cert", "iot_key", "iot_client_ca"])]
    iot_listen: Option<std::net::SocketAddr>,
    /// PEM certificate (chain) of the IoT endpoint.
    #[arg(long, value_name = "FILE")]
    iot_cert: Option<std::path::PathBuf>,
    /// PEM private key for --iot-cert.
    #[arg(long, value_name = "FILE")]
    iot_key: Option<std::path::PathBuf>,
    /// PEM CA that signs the device certificates the IoT endpoint accepts.
    #[arg(long, value_name = "FILE")]
    iot_client_ca: Option<std::path::PathBuf>,
    /// A role alias the IoT endpoint answers (repeatable; any when none is given).
    #[arg(long, value_name = "NAME")]
    iot_role_alias: Vec<String>,
    /// Seconds the IoT endpoint's credentials last.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    iot_credential_lifetime: u64,
}

/// `AKID:SECRET` → (AKID, SECRET). Access key ids never contain `:`; the secret may.
fn parse_credentials(value: &str) -> Result<(String, String), String> {
    match value.split_once(':') {
        Some((key_id, secret)) if !key_id.is_empty() && !secret.is_empty() => {
            Ok((key_id.to_owned(), secret.to_owned()))
        }
        _ => Err("expected ACCESS_KEY_ID:SECRET_ACCESS_KEY".to_owned()),
    }
}

/// The access keys from `--credentials-file` and `KVS_EMULATOR_CREDENTIALS`. An error names the place, never the
/// text (it may hold a secret).
fn more_credentials(file: Option<&std::path::Path>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    if let Ok(value) = std::env::var("KVS_EMULATOR_CREDENTIALS") {
        for (n, item) in value.split_whitespace().enumerate() {
            out.push(
                parse_credentials(item)
                    .map_err(|e| format!("KVS_EMULATOR_CREDENTIALS, key {}: {e}", n + 1))?,
            );
        }
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(
                parse_credentials(line)
                    .map_err(|e| format!("{}, line {}: {e}", path.display(), n + 1))?,
            );
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    match more_credentials(args.credentials_file.as_deref()) {
        Ok(more) => args.credentials.extend(more),
        Err(err) => {
            eprintln!("kvs-emulator: {err}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let config = Config {
        listen: args.listen,
        region: args.region,
        credentials: args.credentials,
        tls: args.tls_cert.zip(args.tls_key),
        data_dir: args.data_dir,
        record_arrivals: args.record_arrivals,
        iot: match (
            args.iot_listen,
            args.iot_cert,
            args.iot_key,
            args.iot_client_ca,
        ) {
            (Some(listen), Some(cert), Some(key), Some(client_ca)) => {
                Some(kvs_emulator::iot::IotConfig {
                    listen,
                    cert,
                    key,
                    client_ca,
                    role_aliases: args.iot_role_alias,
                    lifetime: Duration::from_secs(args.iot_credential_lifetime.max(1)),
                })
            }
            _ => None,
        },
        put_media: PutMediaConfig {
            max_connection_duration: Duration::from_secs(args.max_connection_duration),
            idle_timeout: Duration::from_secs(args.idle_timeout),
            service_limits: !args.no_service_limits,
            ..PutMediaConfig::default()
        },
    };
    let emulator = match Emulator::start(config).await {
        Ok(emulator) => emulator,
        Err(err) => {
            if err.kind() == std::io::ErrorKind::InvalidInput {
                eprintln!("kvs-emulator: {err}"); // a TLS or data-dir problem, named in the message
            } else {
                eprintln!("kvs-emulator: cannot listen on {}: {err}", args.listen);
            }
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{}", emulator.base_url());
    let _ = stdout.flush();
    eprintln!("kvs-emulator: listening on {}", emulator.base_url());
    if let Some(iot) = emulator.iot_addr() {
        eprintln!("kvs-emulator: IoT credentials endpoint on {iot}");
    }
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("kvs-emulator: shutting down");
    std::process::ExitCode::SUCCESS
}

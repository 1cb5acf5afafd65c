// SPDX-License-Identifier: MPL-2.0

//! The `kvs-emulator` binary prints its base URL first and answers HTTP on it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs-emulator"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvs-emulator");
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    (Running(child), first_line.trim_end().to_owned())
}

#[test]
fn first_stdout_line_is_the_base_url_and_it_answers() {
    let (_emulator, base_url) = start(&["--listen", "127.0.0.1:0"]);
    let host_port = base_url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not a base URL: {base_url:?}"));
    let port: u16 = host_port
        .strip_prefix("127.0.0.1:")
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(port, 0);

    let mut conn = TcpStream::connect(host_port).unwrap();
    write!(conn, "POST /noSuchOperation HTTP/1.1\r\nhost: {host_port}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 404 "), "{response}");
}

#[test]
fn help_documents_the_options() {
    let output = Command::new(env!("CARGO_BIN_EXE_kvs-emulator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--listen",
        "--region",
        "--credentials",
        "--max-connection-duration",
        "--idle-timeout",
        "--tls-cert",
        "--tls-key",
    ] {
        assert!(
            help.contains(option),
            "--help does not mention {option}:\n{help}"
        );
    }
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let (_emulator, base_url) = start(&["--listen", "127.0.0.1:0"]);
    let addr = base_url.strip_prefix("http://").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kvs-emulator"))
        .args(["--listen", addr])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

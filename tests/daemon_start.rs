//! Starting `complaintd run` with a policy or configuration it must refuse: it prints the
//! rendered diagnostics and exits 1 without touching any mail server (none runs here).

use std::path::Path;
use std::process::Command;

fn write_config(dir: &Path, channel: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.join("secret"),
        "start-test-secret-0123456789abcdefghijklmnopqrstuvwxyz\n",
    )
    .unwrap();
    std::fs::write(dir.join("password"), "secret\n").unwrap();
    // Nothing listens on these ports: a daemon that got past its checks would only log
    // connection errors; the tests below expect it never to get there.
    let text = format!(
        r#"
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
port = 9
tls = "none"
user = "complaints@example.test"
password_file = "password"
channel = "{channel}"
[smtp]
host = "127.0.0.1"
port = 9
tls = "none"
from = "complaints@example.test"
"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn copy_rules(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    std::fs::create_dir_all(to.join("templates")).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    for entry in std::fs::read_dir(from.join("templates")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("templates").join(entry.file_name())).unwrap();
    }
}

fn run(config: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_complaintd"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_broken_policy_is_refused_with_its_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    copy_rules(&dir.path().join("rules"));
    std::fs::write(
        dir.path().join("rules/15-broken.rules"),
        "classify {\n    rule vip \"VIP\":\n        when subjekt contains \"VIP\"\n        then tag vip\n}\n",
    )
    .unwrap();
    let config = write_config(dir.path(), "own");
    let (code, stderr) = run(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("error: the policy has errors; not starting"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `subjekt`"), "{stderr}");
    assert!(stderr.contains("15-broken.rules:3:14"), "{stderr}");
    assert!(
        stderr.contains("^^^^^^^"),
        "the offending text is underlined: {stderr}"
    );
    assert!(stderr.contains("did you mean `subject`?"), "{stderr}");
    // The store was not created: the daemon stopped before opening anything for writing.
    assert!(!dir.path().join("store").join("conf").exists());
}

#[test]
fn a_mailbox_channel_the_policy_does_not_declare_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_rules(&dir.path().join("rules"));
    let config = write_config(dir.path(), "fax");
    let (code, stderr) = run(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "mailbox[0].channel: `fax` is not a channel of the policy (declared: own, hotline, government)"
        ),
        "{stderr}"
    );
}

#[test]
fn a_configuration_error_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    copy_rules(&dir.path().join("rules"));
    let config = write_config(dir.path(), "own");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "port = 9\ntls = \"none\"\nfrom",
        "port = 9\ntls = \"maybe\"\nfrom",
    );
    std::fs::write(&config, text).unwrap();
    let (code, stderr) = run(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("smtp.tls: unknown variant `maybe`"),
        "{stderr}"
    );
}

#[test]
fn sighup_reloads_sigterm_stops_cleanly_and_json_logs_are_json() {
    use std::io::BufRead;
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    copy_rules(&dir.path().join("rules"));
    let config = write_config(dir.path(), "own");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[log]\nformat = \"json\"\nlevel = \"info\"\n");
    std::fs::write(&config, text).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_complaintd"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let wait_for = |message: &str, lines: &mut Vec<String>| loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no {message:?} in the log:\n{}", lines.join("\n")));
        let found = line.contains(message);
        lines.push(line);
        if found {
            break;
        }
    };
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    wait_for("daemon: running", &mut lines);
    // SIGHUP reloads the policy and the daemon runs on.
    signal("-HUP");
    wait_for("reload: new policy running", &mut lines);
    signal("-TERM");
    let exit = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(lines_rx.try_iter());
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("reload: SIGHUP received"))
            .count(),
        1
    );
    assert!(exit.success(), "exit {exit}; log:\n{}", lines.join("\n"));
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["fields"]["message"].is_string(), "{line}");
    }
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split("\"message\":\"").nth(1))
        .filter_map(|m| m.split('"').next())
        .collect();
    for expected in [
        "daemon: running",
        "daemon: SIGTERM received",
        "daemon: shutting down",
        "daemon: stopped",
    ] {
        assert!(
            messages.contains(&expected),
            "no {expected:?} in {messages:?}"
        );
    }
}

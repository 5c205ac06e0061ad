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

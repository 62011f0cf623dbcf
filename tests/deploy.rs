//! The files in `deploy/` against the real binary and the real systemd tools:
//!
//! - `deploy/burrow.service` passes `systemd-analyze verify` without a
//!   warning, keeps its hardening (`systemd-analyze security`), and keeps
//!   the settings burrow relies on (`Type=notify`, reload by SIGHUP, ...);
//! - `deploy/burrow.env.example`, the unit's `Environment=` lines and the
//!   Dockerfile's `ENV` name only variables that `burrow --help` lists, so
//!   they cannot drift from the flags; and the example's values, commented
//!   ones included, start a server;
//! - `deploy/Dockerfile` copies everything the release build reads.
//!
//! Needs `systemd-analyze` (Debian package `systemd`, which `.ci/run`
//! installs). Without it the systemd tests fail with a message saying so,
//! unless `BURROW_SKIP_SYSTEMD_TESTS=1` is set, which skips them. Nothing
//! here needs systemd to be running: `verify` and `security --offline` only
//! read unit files.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const UNIT: &str = include_str!("../deploy/burrow.service");
const ENV_EXAMPLE: &str = include_str!("../deploy/burrow.env.example");
const DOCKERFILE: &str = include_str!("../deploy/Dockerfile");
const BURROW: &str = env!("CARGO_BIN_EXE_burrow");

/// Set to `1` to skip the systemd tests where `systemd-analyze` is missing.
const SKIP_ENV: &str = "BURROW_SKIP_SYSTEMD_TESTS";
/// Where the unit expects the binary and the settings once installed.
const INSTALLED_BINARY: &str = "/usr/local/bin/burrow";
const INSTALLED_ENV_FILE: &str = "/etc/burrow/burrow.env";
/// `systemd-analyze security` exposure (0-100, shown as 0.0-10.0) the unit
/// must stay at or under: 2.0 is "OK"; the unit scores about 1.5.
const MAX_EXPOSURE: &str = "20";
/// Variables the env example may set that are not flags.
const NOT_FLAGS: &[&str] = &["RUST_LOG"];
/// How long the env example's server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

/// True when `systemd-analyze` can run. When it cannot: false (after saying
/// so) with `BURROW_SKIP_SYSTEMD_TESTS=1`, a panic otherwise, because a
/// unit check that silently passes without the checker proves nothing.
fn systemd_analyze_or_skip(test: &str) -> bool {
    let why = match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!(
            "`systemd-analyze --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => format!("cannot run systemd-analyze: {err}"),
    };
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!("SKIPPED systemd test {test}: {why} ({SKIP_ENV}=1)");
        return false;
    }
    panic!(
        "systemd test {test} needs systemd-analyze: {why}.\n\
         Install it (Debian: `apt-get install systemd`, as .ci/run does), \
         or set {SKIP_ENV}=1 to skip the systemd tests."
    );
}

/// A copy of the unit that `systemd-analyze` can check on this machine: the
/// binary is the one cargo built, the env file a copy of the example (both
/// must exist for `verify`). `extra` is appended to the file.
struct TestUnit {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn test_unit(extra: &str) -> TestUnit {
    let dir = tempfile::tempdir().expect("temp dir");
    let env_file = dir.path().join("burrow.env");
    std::fs::write(&env_file, ENV_EXAMPLE).expect("write env file");
    let exec_start = format!("ExecStart={INSTALLED_BINARY}");
    let environment_file = format!("EnvironmentFile={INSTALLED_ENV_FILE}");
    for line in [&exec_start, &environment_file] {
        assert_eq!(
            UNIT.lines().filter(|l| l.trim() == line.as_str()).count(),
            1,
            "deploy/burrow.service must have the line `{line}` once (README's install steps use these paths)"
        );
    }
    let unit: String = UNIT
        .lines()
        .map(|line| match line.trim() {
            l if l == exec_start => format!("ExecStart={BURROW}\n"),
            l if l == environment_file => format!("EnvironmentFile={}\n", env_file.display()),
            _ => format!("{line}\n"),
        })
        .collect::<String>()
        + extra;
    // The file name is the unit name: keep it, DynamicUser's user is named
    // after it.
    let path = dir.path().join("burrow.service");
    std::fs::write(&path, unit).expect("write unit");
    TestUnit { _dir: dir, path }
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        // Plain, untranslated messages.
        .env("LANG", "C")
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze")
}

/// The stderr lines of `systemd-analyze verify` that are about the unit
/// (they start with its path; the checker may also talk about other units
/// on the machine, which are not ours to judge).
fn verify_complaints(unit: &Path) -> (Output, Vec<String>) {
    let out = systemd_analyze(&["verify"], unit);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints = stderr
        .lines()
        .filter(|l| l.contains("burrow"))
        .map(str::to_owned)
        .collect();
    (out, complaints)
}

#[test]
fn unit_verifies_without_warnings() {
    if !systemd_analyze_or_skip("unit_verifies_without_warnings") {
        return;
    }
    let unit = test_unit("");
    let (out, complaints) = verify_complaints(&unit.path);
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify deploy/burrow.service: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );

    // The check above must be able to fail: systemd only warns (and exits 0)
    // about an unknown key or a bad value, so those warnings are what
    // catches a typo in the unit.
    let broken = test_unit("ProtectSystm=strict\n");
    let (_, complaints) = verify_complaints(&broken.path);
    assert!(
        complaints.iter().any(|l| l.contains("ProtectSystm")),
        "systemd-analyze verify did not warn about an unknown key: {complaints:?}"
    );
}

#[test]
fn unit_keeps_its_hardening() {
    if !systemd_analyze_or_skip("unit_keeps_its_hardening") {
        return;
    }
    let unit = test_unit("");
    let out = systemd_analyze(
        &[
            "security",
            "--offline=yes",
            &format!("--threshold={MAX_EXPOSURE}"),
        ],
        &unit.path,
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let verdict = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall exposure line)");
    assert!(
        out.status.success(),
        "systemd-analyze security: exposure above {MAX_EXPOSURE} (or the check failed): {verdict}\n\
         findings:\n{}\nstderr:\n{}",
        report
            .lines()
            .filter(|l| l.contains('✗'))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{verdict}");
}

/// `Key=value` settings of the unit (last one wins, as in systemd for most
/// keys), comments and section headers left out.
fn unit_settings() -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut settings: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with(['#', ';', '[']) || line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once('=').expect("unit line is Key=value");
        settings.entry(key.trim()).or_default().push(value.trim());
    }
    settings
}

/// What burrow and the README rely on; systemd would accept the unit
/// without any of it, so `verify` cannot tell.
#[test]
fn unit_has_the_settings_burrow_relies_on() {
    let settings = unit_settings();
    let required = [
        // burrow sends READY=1, RELOADING=1 and STOPPING=1 itself.
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        // SIGHUP reloads the certificate and the keys file.
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        // SIGTERM drains; systemd must give it the grace and then some.
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "20"),
        ("Restart", "always"),
        ("RestartSec", "2"),
        ("LimitNOFILE", "524288"),
        ("EnvironmentFile", INSTALLED_ENV_FILE),
        // Not root; only the right to bind ports below 1024.
        ("DynamicUser", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        // The only writable directory: host key and name secret.
        ("StateDirectory", "burrow"),
        ("Environment", "STATE_DIR=/var/lib/burrow"),
        ("Environment", "HOST_KEY_PATH=/var/lib/burrow/host_key"),
    ];
    let missing: Vec<String> = required
        .iter()
        .filter(|(key, value)| !settings.get(key).is_some_and(|v| v.contains(value)))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/burrow.service lacks {missing:?}"
    );
}

// ---------------------------------------------------------------------------
// Variable names
// ---------------------------------------------------------------------------

/// Every variable `burrow --help` shows as `[env: NAME=...]`.
fn help_variables() -> BTreeSet<String> {
    let out = Command::new(BURROW)
        .arg("--help")
        .env_clear()
        .output()
        .expect("run burrow --help");
    assert!(out.status.success(), "burrow --help: {}", out.status);
    let help = String::from_utf8(out.stdout).expect("help is UTF-8");
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split_once('='))
        .map(|(name, _)| name.to_owned())
        .collect();
    // A clap that printed its markers differently must not make every name
    // look unknown (or, worse, the check vacuous).
    for expected in [
        "DOMAIN",
        "SSH_ADDR",
        "TLS_CERT",
        "STATE_DIR",
        "HOST_KEY_PATH",
    ] {
        assert!(
            names.contains(expected),
            "burrow --help has no [env: {expected}=] marker; parsed {names:?}"
        );
    }
    names
}

/// `NAME=value` lines of an env file, with `#NAME=value` (an optional
/// setting, shown commented out) as well: `(name, value, commented)`. Prose
/// comments start with `# `, so they never match.
fn env_assignments(text: &str) -> Vec<(&str, &str, bool)> {
    text.lines()
        .filter_map(|line| {
            let (line, commented) = match line.strip_prefix('#') {
                Some(rest) => (rest, true),
                None => (line, false),
            };
            let (name, value) = line.split_once('=')?;
            let is_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            is_name.then_some((name, value, commented))
        })
        .collect()
}

#[test]
fn env_example_names_only_real_variables() {
    let known = help_variables();
    let assignments = env_assignments(ENV_EXAMPLE);
    assert!(
        assignments.len() >= 10,
        "deploy/burrow.env.example: too few NAME=value lines parsed: {assignments:?}"
    );
    let unknown: BTreeSet<&str> = assignments
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|name| !known.contains(*name) && !NOT_FLAGS.contains(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/burrow.env.example names variables that `burrow --help` does not: {unknown:?}"
    );

    // One file for systemd's EnvironmentFile= and `docker run --env-file`:
    // only the syntax both read the same way.
    let mut active = BTreeSet::new();
    for (name, value, commented) in &assignments {
        assert!(
            !value.starts_with(['"', '\'']) && value.trim() == *value && !value.is_empty(),
            "deploy/burrow.env.example: {name}={value}: no quotes, no spaces around the value \
             (docker --env-file would keep them)"
        );
        if !commented {
            assert!(
                active.insert(*name),
                "deploy/burrow.env.example sets {name} twice"
            );
        }
    }
    for line in ENV_EXAMPLE.lines() {
        let line = line.trim();
        assert!(
            line.is_empty() || line.starts_with('#') || env_assignments(line).len() == 1,
            "deploy/burrow.env.example: `{line}` is neither a comment nor NAME=value"
        );
    }
    for name in [
        "DOMAIN",
        "TLS_CERT",
        "TLS_KEY",
        "STATE_DIR",
        "HOST_KEY_PATH",
    ] {
        assert!(
            active.contains(name),
            "deploy/burrow.env.example should set {name}"
        );
    }
}

#[test]
fn unit_and_dockerfile_name_only_real_variables() {
    let known = help_variables();
    let unit_names: Vec<&str> = unit_settings()
        .get("Environment")
        .into_iter()
        .flatten()
        .filter_map(|v| v.split_once('=').map(|(name, _)| name))
        .collect();
    // ENV NAME=value \ NAME=value ... (one instruction, continued lines).
    let mut docker_names = Vec::new();
    let mut in_env = false;
    for line in DOCKERFILE.lines().map(str::trim) {
        let rest = match line.strip_prefix("ENV ") {
            Some(rest) => rest,
            None if in_env => line,
            None => continue,
        };
        in_env = rest.ends_with('\\');
        for word in rest.trim_end_matches('\\').split_whitespace() {
            let (name, _) = word.split_once('=').expect("ENV NAME=value");
            docker_names.push(name);
        }
    }
    assert!(
        unit_names.len() >= 2 && !docker_names.is_empty(),
        "parsed no variables: unit {unit_names:?}, Dockerfile {docker_names:?}"
    );
    for (file, names) in [
        ("deploy/burrow.service", &unit_names),
        ("deploy/Dockerfile", &docker_names),
    ] {
        let unknown: Vec<&&str> = names.iter().filter(|n| !known.contains(**n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} sets variables that `burrow --help` does not list: {unknown:?}"
        );
    }
}

/// The example's values are real values: with every setting in it, the
/// commented-out ones too, burrow starts. Only what would touch the
/// machine is replaced: listeners go to loopback port 0, files to a temp
/// dir, and the certificate is the self-signed one.
#[test]
fn env_example_values_start_a_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, "").expect("write keys file");
    let plans_file = dir.path().join("plans");
    std::fs::write(&plans_file, "default bandwidth=1MiB/s transfer=1GiB/day\n")
        .expect("write plans file");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("spool dir");

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    // Commented lines second: they are the alternatives to try.
    let mut assignments = env_assignments(ENV_EXAMPLE);
    assignments.sort_by_key(|(_, _, commented)| *commented);
    for (name, value, _) in assignments {
        env.insert(name.to_owned(), value.to_owned());
    }
    // The cluster settings need a Redis and other nodes (tests/cluster.rs
    // runs them): this server starts alone.
    for name in [
        "TLS_CERT",
        "TLS_KEY",
        "CLUSTER_REDIS",
        "CLUSTER_REDIS_CA",
        "NODE_ID",
        "CLUSTER_LISTEN",
        "CLUSTER_ADVERTISE",
        "CLUSTER_SECRET_FILE",
    ] {
        env.remove(name);
    }
    let loopback = "127.0.0.1:0".to_owned();
    let path = |p: &Path| p.display().to_string();
    for (name, value) in [
        ("SSH_ADDR", loopback.clone()),
        ("HTTP_ADDR", loopback.clone()),
        ("HTTPS_ADDR", loopback.clone()),
        ("STATS_ADDR", loopback),
        ("TCP_BIND", "127.0.0.1".to_owned()),
        ("STATE_DIR", path(&dir.path().join("state"))),
        ("HOST_KEY_PATH", path(&dir.path().join("host_key"))),
        ("KEYS_FILE", path(&keys_file)),
        ("PLANS_FILE", path(&plans_file)),
        ("SPOOL_DIR", path(&spool)),
        ("HEALTH_ADDR", "127.0.0.1:0".to_owned()),
    ] {
        env.insert(name.to_owned(), value);
    }
    let domain = env.get("DOMAIN").cloned().expect("the example sets DOMAIN");

    let mut child = Command::new(BURROW)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start burrow");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = loop {
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.starts_with("burrow ready:") => break Some(line),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut errors = String::new();
    let _ = stderr.read_to_string(&mut errors);
    let ready = ready.unwrap_or_else(|| {
        panic!("burrow did not start with the env example's values {env:?}:\n{errors}")
    });
    assert!(
        ready.contains(&format!("domain={domain}")),
        "the ready line does not name DOMAIN={domain}: {ready}"
    );
}

// ---------------------------------------------------------------------------
// HAProxy
// ---------------------------------------------------------------------------

/// deploy/haproxy.cfg is a configuration HAProxy accepts (`haproxy -c`).
#[test]
fn haproxy_config_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg");
    let out = Command::new("haproxy")
        .args(["-c", "-f", config])
        .output()
        .expect("haproxy is not installed: apt-get install -y haproxy (or run .ci/run)");
    assert!(
        out.status.success(),
        "haproxy -c rejects deploy/haproxy.cfg:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// `docker build` cannot run here, so check what can go stale without it:
/// the builder copies every path the release build reads (a new
/// `build.rs`, or an `include_str!` of a file outside the copied
/// directories, would break the image), and the image runs as non-root.
#[test]
fn dockerfile_copies_what_the_build_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `COPY SRC... DEST` in the build stage (not `COPY --from=...`).
    let copied: Vec<PathBuf> = DOCKERFILE
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|rest| !rest.starts_with("--"))
        .flat_map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| root.join(w))
                .collect::<Vec<_>>()
        })
        .collect();
    for path in &copied {
        assert!(
            path.exists(),
            "deploy/Dockerfile copies {} which does not exist",
            path.display()
        );
    }
    let is_copied = |p: &Path| copied.iter().any(|c| p.starts_with(c));
    for needed in ["Cargo.toml", "Cargo.lock", "src", "build.rs"] {
        let needed = root.join(needed);
        assert!(
            !needed.exists() || is_copied(&needed),
            "deploy/Dockerfile does not copy {}",
            needed.display()
        );
    }
    // Files pulled into the binary at compile time.
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            for macro_name in ["include_str!(\"", "include_bytes!(\""] {
                for rest in text.split(macro_name).skip(1) {
                    let Some((file, _)) = rest.split_once('"') else {
                        continue;
                    };
                    if file.contains("env!") || file.contains('{') {
                        continue;
                    }
                    let target = path.parent().expect("parent").join(file);
                    let target = target.canonicalize().unwrap_or(target);
                    assert!(
                        is_copied(&target),
                        "{} includes {}, which deploy/Dockerfile does not copy",
                        path.display(),
                        target.display()
                    );
                }
            }
        }
    }

    assert!(
        DOCKERFILE.contains("cargo build --release --locked"),
        "deploy/Dockerfile must build with --release --locked"
    );
    let user = DOCKERFILE
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("deploy/Dockerfile sets USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.trim()),
        "deploy/Dockerfile runs as root"
    );
    let exposed: BTreeSet<&str> = DOCKERFILE
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from(["22", "80", "443"]),
        "deploy/Dockerfile EXPOSE"
    );
}

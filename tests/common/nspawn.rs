//! A throwaway Debian machine for tests that need a real systemd as PID 1:
//! a bookworm root made once by `debootstrap` (cached between runs), booted
//! with `systemd-nspawn -b --private-network`, driven from the host with
//! `nsenter` into the container's namespaces.
//!
//! What this host needs, and why (see [`boot`]):
//!
//! - `--register=no`: there is no systemd-machined (nor a D-Bus system bus)
//!   on a host whose PID 1 is not systemd; registering fails with "Failed to
//!   open system bus: No such file or directory". So no `machinectl shell`
//!   or `systemd-run -M` either: commands go in with `nsenter`.
//! - `--keep-unit`, inside a cgroup of the test's own: without a host
//!   systemd nspawn cannot ask for a scope. With `--keep-unit` it uses the
//!   cgroup it was started in, so the test starts it in a fresh one (else
//!   its `payload`/`supervisor` cgroups land at the root of the host's
//!   hierarchy and stay there) and removes it afterwards, killing anything
//!   left (there should be nothing: that is checked).
//! - `SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`: on a hybrid host (cgroup v1 with
//!   cgroup2 at /sys/fs/cgroup/unified) the container would get the hybrid
//!   layout too; this gives it the pure cgroup2 layout a bookworm server
//!   has.
//! - `--volatile=overlay`: the cached root is the read-only lower layer of
//!   an overlay whose upper layer is a tmpfs, so every boot starts from the
//!   same pristine root and nothing is written to the cache.
//! - `--system-call-filter=@memlock`: nspawn's own seccomp filter, which
//!   every process of the container inherits, answers mlock(2) and friends
//!   with EPERM unless the container has CAP_IPC_LOCK (russh then logs
//!   "OS has failed to lock/unlock memory for a cryptographic buffer:
//!   mlock: Operation not permitted" under any unit, even an unsandboxed
//!   one). On a real machine they work up to LimitMEMLOCK=.
//! - The root gets an `/etc/hosts` (debootstrap writes none, and without it
//!   `localhost` does not resolve in the container).
//!
//! Every wait is bounded, and dropping a [`Machine`] that is still up kills
//! it and everything in its cgroup.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set to `1` to skip the systemd tests (tests/deploy.rs reads it too).
pub const SKIP_ENV: &str = "BURROW_SKIP_SYSTEMD_TESTS";
/// Set to `1` (.ci/run does) to make missing tools or privileges a failure
/// instead of a skip.
pub const REQUIRE_ENV: &str = "BURROW_REQUIRE_NSPAWN_TESTS";
/// Where built roots are kept (default `$HOME/.cache/burrow-nspawn`).
pub const CACHE_ENV: &str = "BURROW_NSPAWN_CACHE";
/// A Debian mirror for debootstrap (default: debootstrap's own).
pub const MIRROR_ENV: &str = "BURROW_DEBIAN_MIRROR";

/// The longest a debootstrap may take (a first run downloads ~60 MB).
pub const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Boot to `READY=1` (a fraction of a second here).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// `systemctl poweroff` to the end of systemd-nspawn.
pub const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound on one command run in the container.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// The PATH commands get inside the container.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------------------
// Can it run here?
// ---------------------------------------------------------------------------

/// True when this machine can build and boot a container: root, with
/// `debootstrap`, `systemd-nspawn` and `nsenter`, and a writable cgroup
/// tree. Otherwise false after saying why, or a panic when `REQUIRE_ENV=1`
/// (CI), since a test that silently skips there proves nothing.
pub fn available_or_skip(test: &str) -> bool {
    let why = match missing() {
        None if std::env::var(SKIP_ENV).as_deref() == Ok("1") => format!("{SKIP_ENV}=1"),
        None => return true,
        Some(why) => why,
    };
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") && std::env::var(SKIP_ENV).is_err() {
        panic!(
            "{test} needs a container: {why}.\n\
             Run it as root with `apt-get install debootstrap systemd-container` \
             (.ci/run does both), or unset {REQUIRE_ENV} to let it skip."
        );
    }
    eprintln!(
        "SKIPPED {test}: {why}. It boots deploy/burrow.service under a real systemd in \
         systemd-nspawn: run it as root with `apt-get install debootstrap systemd-container` \
         (set {REQUIRE_ENV}=1 to make this a failure, as .ci/run does)"
    );
    false
}

fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for (tool, package) in [
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
    ] {
        if which(tool).is_none() {
            return Some(format!("`{tool}` not found (Debian package {package})"));
        }
    }
    if cgroup_roots().is_empty() {
        return Some("no writable cgroup hierarchy under /sys/fs/cgroup".into());
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file());
    found
}

// ---------------------------------------------------------------------------
// The root
// ---------------------------------------------------------------------------

/// What goes into a root. The cache key is a hash of all of it.
pub struct RootSpec {
    pub suite: &'static str,
    /// Packages on top of `--variant=minbase`.
    pub packages: &'static [&'static str],
}

impl RootSpec {
    fn key(&self) -> String {
        // Bump when the post-debootstrap set-up below changes.
        let mut text = format!("v1 {} minbase", self.suite);
        for p in self.packages {
            text.push(' ');
            text.push_str(p);
        }
        if let Ok(mirror) = std::env::var(MIRROR_ENV) {
            text.push(' ');
            text.push_str(&mirror);
        }
        // FNV-1a: stable across Rust releases, unlike DefaultHasher.
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{}-{hash:016x}", self.suite)
    }
}

/// The cache directory: `$BURROW_NSPAWN_CACHE`, else
/// `$HOME/.cache/burrow-nspawn`, else `target/nspawn-cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Path::new(&home).join(".cache/burrow-nspawn"),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/nspawn-cache"),
    }
}

/// A root built by [`root`], with how long getting it took.
pub struct Root {
    pub path: PathBuf,
    /// `Some(time)` when debootstrap ran now, `None` when it was cached.
    pub built_in: Option<Duration>,
}

/// The root for `spec`, from the cache or built now (`debootstrap
/// --variant=minbase --include=...`, then the few files it lacks). Built in
/// a temporary directory and renamed into place, under a lock, so a killed
/// run never leaves a half-made root for the next one.
pub fn root(spec: &RootSpec) -> Root {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .unwrap_or_else(|e| panic!("cannot create the root cache {}: {e}", cache.display()));
    let key = spec.key();
    let path = cache.join(&key);
    let lock = File::create(cache.join(format!("{key}.lock"))).expect("create the cache lock");
    lock.lock().expect("lock the root cache");
    if path.join("usr/lib/systemd/systemd").exists() {
        return Root {
            path,
            built_in: None,
        };
    }
    let tmp = cache.join(format!("{key}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).expect("remove a partial root left by a killed run");
    }
    let log_path = cache.join(format!("{key}.debootstrap.log"));
    let log = File::create(&log_path).expect("create the debootstrap log");
    let started = Instant::now();
    eprintln!(
        "building a {} root with debootstrap into {} (log: {}); later runs reuse it",
        spec.suite,
        path.display(),
        log_path.display()
    );
    let mut cmd = Command::new(which("debootstrap").expect("debootstrap"));
    cmd.args([
        "--variant=minbase",
        &format!("--include={}", spec.packages.join(",")),
        spec.suite,
    ])
    .arg(&tmp);
    if let Ok(mirror) = std::env::var(MIRROR_ENV) {
        cmd.arg(mirror);
    }
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log);
    let status = wait_bounded(cmd.spawn().expect("start debootstrap"), DEBOOTSTRAP_TIMEOUT);
    let ok = status.is_some_and(|s| s.success());
    if !ok {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let _ = std::fs::remove_dir_all(&tmp);
        panic!(
            "debootstrap {} failed ({status:?}, bound {DEBOOTSTRAP_TIMEOUT:?}); last lines of {}:\n{}",
            spec.suite,
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // What debootstrap leaves out: without /etc/hosts `localhost` does not
    // resolve. The package cache is of no use in a test root.
    std::fs::write(
        tmp.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    .expect("write /etc/hosts");
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = std::fs::read_dir(tmp.join(dir)) {
            for entry in entries.flatten() {
                if entry.path().is_file() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    std::fs::rename(&tmp, &path).expect("move the new root into the cache");
    // Roots of an older package list are of no more use: one per suite.
    if let Ok(entries) = std::fs::read_dir(&cache) {
        let prefix = format!("{}-", spec.suite);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && !name.starts_with(&key) {
                let old = entry.path();
                let _ = if old.is_dir() {
                    std::fs::remove_dir_all(&old)
                } else {
                    std::fs::remove_file(&old)
                };
            }
        }
    }
    let took = started.elapsed();
    eprintln!("debootstrap {} took {took:.1?}", spec.suite);
    Root {
        path,
        built_in: Some(took),
    }
}

// ---------------------------------------------------------------------------
// cgroups
// ---------------------------------------------------------------------------

/// The hierarchies a container's cgroup must be made in: the cgroup2 one
/// (all of /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host), and
/// on a hybrid host the named `systemd` v1 one, which nspawn keeps in step.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    ["unified", "systemd"]
        .iter()
        .map(|h| base.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// A cgroup (one per hierarchy) that systemd-nspawn runs in: every process
/// of the container lives below it, so it can be checked empty and cleaned.
struct Jail {
    dirs: Vec<PathBuf>,
}

impl Jail {
    fn new(name: &str) -> Jail {
        let dirs: Vec<PathBuf> = cgroup_roots().iter().map(|r| r.join(name)).collect();
        for dir in &dirs {
            if dir.exists() {
                // Left by a run that was killed: empty it first.
                Jail {
                    dirs: vec![dir.clone()],
                }
                .destroy();
            }
            std::fs::create_dir(dir)
                .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
        }
        Jail { dirs }
    }

    /// Every process in the jail and below, with its cgroup.
    fn processes(&self) -> Vec<(u32, PathBuf)> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            for cg in subtree(dir) {
                let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
                out.extend(
                    procs
                        .lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .map(|pid| (pid, cg.clone())),
                );
            }
        }
        out
    }

    /// Kills whatever is left (cgroup.kill where the kernel has it, SIGKILL
    /// to each process otherwise) and removes the cgroups, deepest first.
    fn destroy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for dir in &self.dirs {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            }
            let left = self.processes();
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for (pid, _) in left {
                // SAFETY: kill(2) with a pid read from cgroup.procs.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for dir in &self.dirs {
            let mut all = subtree(dir);
            all.reverse();
            for cg in all {
                let _ = std::fs::remove_dir(&cg);
            }
        }
    }
}

/// `dir` and every cgroup below it, parents first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            let mut children: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            children.sort();
            out.extend(children);
        }
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------

/// A file or directory of the host, bind-mounted read-only into the
/// container at boot.
pub struct BindRo<'a> {
    pub host: &'a Path,
    pub container: &'a str,
}

/// A booted container. Dropped while up, it is killed.
pub struct Machine {
    pub name: String,
    nspawn: Option<Child>,
    /// The container's PID 1, as the host sees it.
    pub leader: u32,
    jail: Jail,
    /// Holds the console log and the notify socket.
    dir: tempfile::TempDir,
    pub boot_time: Duration,
}

/// Boots `root` (read-only, with a tmpfs overlay) as machine `name` with
/// only a loopback network, and returns once its systemd says the boot is
/// over (`READY=1`, passed on by `--notify-ready=yes`).
pub fn boot(root: &Path, name: &str, binds: &[BindRo]) -> Machine {
    let dir = tempfile::Builder::new()
        .prefix("burrow-nspawn-")
        .tempdir()
        .expect("temp dir");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let console = File::create(dir.path().join("console.log")).expect("console log");
    let jail = Jail::new(&format!("burrow-nspawn-{name}"));

    // A shell moves itself into the jail, then becomes systemd-nspawn.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("for cg in $CGROUPS; do echo $$ > \"$cg/cgroup.procs\" || exit 1; done; exec \"$@\"")
        .arg("sh")
        .arg(which("systemd-nspawn").expect("systemd-nspawn"))
        .args([
            "--boot",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--notify-ready=yes",
            "--console=read-only",
            // nspawn's own seccomp filter refuses @memlock (mlock, ...) with
            // EPERM in a container without CAP_IPC_LOCK, which no service on
            // a real machine meets (there mlock works up to LimitMEMLOCK=,
            // 8 MiB by default): let it through, without the capability.
            "--system-call-filter=@memlock",
        ])
        .arg(format!("--machine={name}"))
        .arg("--directory")
        .arg(root);
    for b in binds {
        cmd.arg(format!("--bind-ro={}:{}", b.host.display(), b.container));
    }
    let cgroups: Vec<String> = jail.dirs.iter().map(|d| d.display().to_string()).collect();
    cmd.env("CGROUPS", cgroups.join(" "))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .stdout(console.try_clone().expect("console fd"))
        .stderr(console);
    let started = Instant::now();
    let child = cmd.spawn().expect("start systemd-nspawn");
    let mut machine = Machine {
        name: name.to_owned(),
        leader: 0,
        nspawn: Some(child),
        jail,
        dir,
        boot_time: Duration::ZERO,
    };

    // Booted: nspawn passes the container's READY=1 on.
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("socket timeout");
    let deadline = started + BOOT_TIMEOUT;
    let mut buf = [0u8; 4096];
    let mut said = String::new();
    loop {
        if let Ok(n) = notify.recv(&mut buf) {
            said.push_str(&String::from_utf8_lossy(&buf[..n]));
            said.push('\n');
            if said.lines().any(|l| l == "READY=1") {
                break;
            }
        }
        if let Some(status) = machine.nspawn_exited() {
            panic!(
                "systemd-nspawn exited ({status}) before the container was ready:\n{}",
                machine.console()
            );
        }
        assert!(
            Instant::now() < deadline,
            "container {name} not ready within {BOOT_TIMEOUT:?} (nspawn said {said:?}):\n{}",
            machine.console()
        );
    }
    machine.boot_time = started.elapsed();
    machine.leader = machine.find_leader();
    machine
}

impl Machine {
    fn nspawn_exited(&mut self) -> Option<ExitStatus> {
        self.nspawn.as_mut()?.try_wait().ok().flatten()
    }

    /// The container's PID 1: the child of systemd-nspawn that lives in
    /// another PID namespace.
    fn find_leader(&self) -> u32 {
        let nspawn = self.nspawn.as_ref().expect("nspawn").id();
        let own_ns = std::fs::read_link("/proc/self/ns/pid").expect("own pid namespace");
        let children = std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
            .unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns != own_ns)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no container PID 1 among the children of systemd-nspawn {nspawn}: {children:?}"
                )
            })
    }

    /// What systemd-nspawn and the container's console printed.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// A path inside the container, as the host reaches it.
    pub fn path(&self, path: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.leader)).join(path.trim_start_matches('/'))
    }

    /// Writes a file inside the container (parents created), with `mode`.
    pub fn write(&self, path: &str, contents: &[u8], mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let host = self.path(path);
        if let Some(parent) = host.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir in the container");
        }
        std::fs::write(&host, contents)
            .unwrap_or_else(|e| panic!("write {path} in the container: {e}"));
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode))
            .expect("chmod in the container");
    }

    /// `sh -c SCRIPT` inside the container (every namespace of its PID 1,
    /// a clean environment), as root.
    pub fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        // Entering the PID namespace makes nsenter fork: the command gets
        // SIGKILL when nsenter dies (setpriv --pdeathsig; the container's
        // util-linux has it, its nsenter has no --kill-child yet), so
        // killing our child kills the command.
        cmd.arg(format!("--target={}", self.leader))
            .args(["--all", "--root", "--wd", "--"])
            .args(["setpriv", "--pdeathsig=KILL", "--", "env", "-i"])
            .arg(format!("PATH={PATH}"))
            .args([
                "HOME=/root",
                "LANG=C.UTF-8",
                "SYSTEMD_COLORS=0",
                "SYSTEMD_PAGER=",
                "SYSTEMD_LESS=",
                "/bin/sh",
                "-c",
                script,
            ]);
        cmd
    }

    /// Runs `script` in the container, at most `timeout`.
    pub fn exec_for(&self, script: &str, timeout: Duration) -> Output {
        let mut cmd = self.command(script);
        cmd.stdin(Stdio::null());
        run_bounded(cmd, timeout).unwrap_or_else(|seen| {
            panic!(
                "`{script}` in {} did not finish within {timeout:?}; output so far:\n{seen}",
                self.name
            )
        })
    }

    /// Runs `script` in the container ([`EXEC_TIMEOUT`]).
    pub fn exec(&self, script: &str) -> Output {
        self.exec_for(script, EXEC_TIMEOUT)
    }

    /// Runs `script`, panics unless it exits 0, returns its stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(script);
        assert!(
            out.status.success(),
            "`{script}` in {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `script` in the container in the background, with a stdin
    /// pipe kept open and its output collected; killed on drop.
    pub fn spawn(&self, script: &str) -> Background {
        let mut child = self
            .command(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nsenter");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().expect("stdout"), Arc::clone(&stdout));
        collect(child.stderr.take().expect("stderr"), Arc::clone(&stderr));
        Background {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// `systemctl poweroff` in the container, then waits for systemd-nspawn
    /// to end.
    pub fn poweroff(mut self) -> Halted {
        let started = Instant::now();
        // systemctl may be cut off as the system goes down: its status
        // tells nothing, nspawn's does. Its output is not collected:
        // whatever holds the pipes open then would make us wait for nothing.
        let mut cmd = self.command("systemctl poweroff");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Ok(child) = cmd.spawn() {
            let _ = wait_bounded(child, EXEC_TIMEOUT);
        }
        let mut child = self.nspawn.take().expect("nspawn");
        let status = wait_bounded_ref(&mut child, POWEROFF_TIMEOUT);
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "container {} still up {POWEROFF_TIMEOUT:?} after `systemctl poweroff`:\n{}",
                self.name,
                self.console()
            );
        };
        Halted {
            status,
            left: self.jail.processes(),
            console: self.console(),
            took: started.elapsed(),
        }
    }
}

/// How a [`Machine::poweroff`] went.
pub struct Halted {
    /// systemd-nspawn's exit status.
    pub status: ExitStatus,
    /// Processes still in the container's cgroup afterwards (there should
    /// be none).
    pub left: Vec<(u32, PathBuf)>,
    /// Everything the container printed on its console.
    pub console: String,
    pub took: Duration,
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            // SIGTERM asks nspawn for an orderly poweroff; SIGKILL if that
            // does not come quickly. The jail takes what is left.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if wait_bounded_ref(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.jail.destroy();
        // nspawn will not delete its propagation directory from a /run that
        // is not a tmpfs ("Attempted to remove disk file system ..."): it
        // is empty, remove it here.
        let _ = std::fs::remove_dir(format!("/run/systemd/nspawn/propagate/{}", self.name));
    }
}

/// A command running in the container; killed (from the host) on drop.
pub struct Background {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `f` finds something in stdout + stderr, at most
    /// `timeout`; `Err` with everything seen otherwise.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        f: impl Fn(&str, &str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let (out, err) = (self.stdout(), self.stderr());
            if let Some(v) = f(&out, &err) {
                return Ok(v);
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                // Output written just before the exit may still be in the
                // pipe: one more look.
                std::thread::sleep(Duration::from_millis(100));
                let (out, err) = (self.stdout(), self.stderr());
                if let Some(v) = f(&out, &err) {
                    return Ok(v);
                }
                return Err(format!(
                    "{}\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
                    match exited {
                        Some(s) => format!("exited: {s}"),
                        None => format!("still running after {timeout:?}"),
                    }
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        self.stdin = None;
        kill_nsenter(&mut self.child);
    }

    pub fn write_stdin(&mut self, data: &[u8]) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(data);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect(mut r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

// ---------------------------------------------------------------------------
// Bounded waits on host processes
// ---------------------------------------------------------------------------

/// Waits for `child` at most `timeout`; kills it and returns `None` then.
fn wait_bounded(mut child: Child, timeout: Duration) -> Option<ExitStatus> {
    let status = wait_bounded_ref(&mut child, timeout);
    if status.is_none() {
        kill_nsenter(&mut child);
    }
    status
}

/// Ends an `nsenter` and the command it forked into the container: the
/// command first, so that nsenter reaps it. (Killing nsenter alone leaves
/// the command to die of --pdeathsig as an orphan whose new parent, outside
/// the container, may never reap it, and the container's shutdown then
/// waits 10 s for that zombie.)
fn kill_nsenter(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let pid = child.id();
        let inside =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for p in inside
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a child of our own child.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if wait_bounded_ref(child, Duration::from_secs(5)).is_some() {
            return;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_bounded_ref(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion with its output collected, at most `timeout`:
/// `Err(output so far)` after killing it when it overruns.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (done, finished) = std::sync::mpsc::channel();
    read_all(
        child.stdout.take().expect("stdout"),
        Arc::clone(&stdout),
        done.clone(),
    );
    read_all(
        child.stderr.take().expect("stderr"),
        Arc::clone(&stderr),
        done,
    );
    let text = |v: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&v.lock().unwrap()).into_owned();
    let Some(status) = wait_bounded_ref(&mut child, timeout) else {
        kill_nsenter(&mut child);
        return Err(format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            text(&stdout),
            text(&stderr)
        ));
    };
    // Both pipes at EOF, unless something the command started keeps one
    // open: then what came so far.
    for _ in 0..2 {
        if finished.recv_timeout(Duration::from_secs(5)).is_err() {
            break;
        }
    }
    let stdout = std::mem::take(&mut *stdout.lock().unwrap());
    let stderr = std::mem::take(&mut *stderr.lock().unwrap());
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn read_all(
    mut r: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
    done: std::sync::mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        let _ = done.send(());
    });
}

//! The node's processes: a holder for the private namespaces, containerd, the control plane
//! and the node agents, each started inside those namespaces and recorded by PID for
//! `teardown.sh`.
//!
//! Facts this builds on (measured, `K8S-NODE.md` in the project's shared notes): a private
//! network + mount namespace keeps every address inside; `/sys` is remounted there so
//! `/sys/class/net` is the namespace's while the cgroup hierarchies stay visible; containerd
//! 1.6 needs `restrict_oom_score_adj` (no `CAP_SYS_RESOURCE` here) and keeps shim sockets in
//! `/run/containerd` (a tmpfs of the namespace); the kubelet runs with cgroupfs under a
//! cgroup root of its own, created in every v1 controller first.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The node's name in the API.
pub const NODE_NAME: &str = "dte-node";
/// The node's address: on a veth whose peer stays down, so nothing routes out of the
/// namespace. Pods reach the node (and the test ClickHouse) here.
pub const NODE_IP: &str = "10.217.0.2";
/// Pod addresses (one node: host-local IPAM on one bridge).
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// Service addresses.
pub const SERVICE_RANGE: &str = "10.96.0.0/24";
/// The `kubernetes` Service's address (the first of [`SERVICE_RANGE`]).
pub const API_SERVICE_IP: &str = "10.96.0.1";
/// The API server's port, inside the namespace.
pub const API_PORT: u16 = 6443;
/// The pod sandbox image, imported from a tarball (no registry).
pub const PAUSE_IMAGE: &str = "datatracing.test/pause:e2e";
/// The admin's bearer token (group `system:masters`); it only works inside the namespace.
pub const ADMIN_TOKEN: &str = "dte-admin";

/// The holder's setup, run as the init of the new PID namespace before it becomes the
/// pause program: `$1` the cluster directory, `$2` the pause binary, `$3` the node
/// address with its prefix.
const HOLDER_SETUP: &str = r#"set -e
mkdir -p "$1/cgroup-move"
mount --rbind /sys/fs/cgroup "$1/cgroup-move"
umount -l /sys
mount -t sysfs sysfs /sys
mount --move "$1/cgroup-move" /sys/fs/cgroup
mkdir -p /run/containerd
mount -t tmpfs tmpfs /run/containerd
ip link set lo up
ip link add dte-node type veth peer name dte-peer
ip addr add "$3" dev dte-node
ip link set dte-node up
ip route add default dev dte-node
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1
echo ready
exec "$2" --until-stdin-closes
"#;

/// The cleanup script: stops the processes by PID, then the holder, removes the cgroups
/// and the directory. The watchdog runs it when the test process ends.
pub const TEARDOWN: &str = include_str!("teardown.sh");

/// A process of the node, as `teardown.sh` knows it.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Component name (also its log file's).
    pub name: String,
    /// Host PID.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): with the PID,
    /// the identity of the process.
    pub start: String,
}

/// The namespaces, the processes in them and the directory everything lives in.
#[derive(Debug)]
pub struct Node {
    /// The cluster directory (configuration, data, logs, sockets).
    pub dir: PathBuf,
    /// Where the Kubernetes binaries are.
    pub bins: PathBuf,
    /// Host PID of the namespaces' init (the holder).
    pub holder_pid: u32,
    /// The kubelet's cgroup root (in every v1 controller).
    pub cgroup_root: String,
    procs: Mutex<Vec<Proc>>,
    /// nsenter processes, reaped when they end.
    launchers: Mutex<Vec<Child>>,
    /// The write ends of the holder's and the watchdog's stdin: when this process ends they
    /// close, and the cluster is torn down.
    _lifelines: (ChildStdin, ChildStdin),
    _children: (Child, Child),
}

fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19).map(str::to_string)
}

fn alive(p: &Proc) -> bool {
    start_time(p.pid).as_deref() == Some(p.start.as_str())
}

/// Runs a command to completion, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The children of `pid` (its main thread's).
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Polls `f` every 100 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Clusters of earlier runs whose test process is gone and whose watchdog did not finish
/// (it was killed too, or the machine stopped): torn down now, before a new one starts.
pub fn reap_leftovers(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_cluster = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("dte-"));
        if !is_cluster || !dir.is_dir() {
            continue;
        }
        let running = |file: &str| {
            fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|s| {
                    let mut it = s.split_whitespace();
                    let pid: u32 = it.next()?.parse().ok()?;
                    let start = it.next()?.to_string();
                    Some(alive(&Proc {
                        name: file.into(),
                        pid,
                        start,
                    }))
                })
                .unwrap_or(false)
        };
        if running("owner") || running("watchdog") {
            continue;
        }
        eprintln!(
            "e2e cluster: tearing down the leftovers of a previous run in {}",
            dir.display()
        );
        let script = base.join(format!("dte-teardown-{}.sh", std::process::id()));
        fs::write(&script, TEARDOWN).expect("write teardown.sh");
        let status = Command::new("sh")
            .arg(&script)
            .arg(&dir)
            .stdin(Stdio::null())
            .status()
            .expect("run teardown.sh");
        let _ = fs::remove_file(&script);
        assert!(
            status.success(),
            "could not tear down the leftover cluster in {} (run: sh e2e/src/cluster/teardown.sh {})",
            dir.display(),
            dir.display()
        );
    }
}

impl Node {
    /// Creates the directory, the cgroup root, the namespaces (with their holder) and the
    /// watchdog that tears everything down when this process ends.
    pub fn create(base: &Path, bins: &Path) -> Node {
        let me = std::process::id();
        let dir = base.join(format!("dte-{me}"));
        if dir.exists() {
            // A PID reused from a dead run whose leftovers were not reaped: start clean.
            fs::remove_dir_all(&dir).expect("remove a stale cluster directory");
        }
        fs::create_dir_all(dir.join("logs")).expect("create the cluster directory");
        let my_start = start_time(me).expect("own start time");
        fs::write(dir.join("owner"), format!("{me} {my_start}\n")).expect("write owner");
        fs::write(dir.join("teardown.sh"), TEARDOWN).expect("write teardown.sh");

        let cgroup_root = format!("dte-{me}");
        fs::write(dir.join("cgroup"), &cgroup_root).expect("write cgroup");
        create_cgroup_root(&cgroup_root);

        // The watchdog first: from here on, whatever happens to this process, the cluster
        // is torn down.
        let mut watchdog = Command::new("sh")
            .arg(dir.join("teardown.sh"))
            .arg(&dir)
            .arg("--watch")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("logs/teardown.log")).expect("teardown log"))
            // Its own process group: a Ctrl-C meant for the tests must not stop it.
            .process_group(0)
            .spawn()
            .expect("start the teardown watchdog (sh)");
        let watchdog_start = start_time(watchdog.id()).unwrap_or_default();
        fs::write(
            dir.join("watchdog"),
            format!("{} {watchdog_start}\n", watchdog.id()),
        )
        .expect("write watchdog");

        let mut holder = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--net",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                HOLDER_SETUP,
                "holder",
            ])
            .arg(&dir)
            .arg(bins.join("pause"))
            .arg(format!("{NODE_IP}/24"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(dir.join("logs/holder.log")).expect("holder log"))
            .process_group(0)
            .spawn()
            .expect("start the namespace holder (unshare, from util-linux)");
        let stdout = holder.stdout.take().expect("holder stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        assert!(
            line.trim() == "ready",
            "the namespace holder failed to set up: {}",
            fs::read_to_string(dir.join("logs/holder.log")).unwrap_or_default()
        );
        // unshare forks the namespace's init; that child is the holder.
        let holder_pid = poll(Duration::from_secs(5), "the holder's PID", || {
            children(holder.id()).first().copied()
        });
        let node = Node {
            procs: Mutex::new(Vec::new()),
            launchers: Mutex::new(Vec::new()),
            _lifelines: (
                holder.stdin.take().expect("holder stdin"),
                watchdog.stdin.take().expect("watchdog stdin"),
            ),
            _children: (holder, watchdog),
            dir,
            bins: bins.to_path_buf(),
            holder_pid,
            cgroup_root,
        };
        node.record(Proc {
            name: "holder".into(),
            pid: holder_pid,
            start: start_time(holder_pid).expect("holder start time"),
        });
        node
    }

    fn record(&self, p: Proc) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pids"))
            .expect("open pids");
        writeln!(f, "{} {} {}", p.name, p.pid, p.start).expect("write pids");
        self.procs.lock().unwrap().push(p);
    }

    /// The path of a component's log file.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The last `lines` lines of a component's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A command run inside the namespaces (network, mount and PID), in its own process
    /// group.
    pub fn inside(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder_pid.to_string())
            .args(["-m", "-n", "-p", "--"])
            .arg(program)
            .process_group(0);
        c
    }

    /// Starts `program` inside the namespaces as component `name` (log in
    /// `logs/<name>.log`) and records its PID.
    pub fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Proc {
        let log = File::create(self.log_path(name)).expect("create a log file");
        let launcher = self
            .inside(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} with nsenter: {e}"));
        // nsenter forks into the PID namespace: the program is its one child.
        let pid = poll(Duration::from_secs(10), &format!("{name}'s PID"), || {
            children(launcher.id()).first().copied()
        });
        let p = Proc {
            name: name.to_string(),
            pid,
            start: start_time(pid).unwrap_or_default(),
        };
        self.record(p.clone());
        let mut launchers = self.launchers.lock().unwrap();
        launchers.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        launchers.push(launcher);
        p
    }

    /// Whether component `name`'s latest process is running.
    pub fn running(&self, name: &str) -> bool {
        self.procs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|p| p.name == name)
            .is_some_and(alive)
    }

    /// Stops component `name` (SIGTERM, SIGKILL after `grace`) and waits until it is gone.
    pub fn stop(&self, name: &str, grace: Duration) {
        let Some(p) = self
            .procs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|p| p.name == name)
            .cloned()
        else {
            return;
        };
        if !alive(&p) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &p.pid.to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while alive(&p) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(&p) {
            let _ = Command::new("kill")
                .args(["-KILL", &p.pid.to_string()])
                .status();
            poll(Duration::from_secs(10), &format!("{name} to exit"), || {
                (!alive(&p)).then_some(())
            });
        }
    }

    /// The namespace's network namespace file, for threads of this process to enter.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder_pid))
    }
}

/// Creates the kubelet's cgroup root in every v1 controller (cpuset needs its CPUs and
/// memory nodes copied from the root before anything can join it), or, on a unified (v2)
/// hierarchy, once at its top.
fn create_cgroup_root(root: &str) {
    let top = Path::new("/sys/fs/cgroup");
    if top.join("cgroup.controllers").exists() {
        // Not tried on this machine kind (cgroup v1); GitHub's runners are v2.
        let dir = top.join(root);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let controllers = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let enable: Vec<String> = controllers
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        let _ = fs::write(dir.join("cgroup.subtree_control"), enable.join(" "));
        return;
    }
    let Ok(controllers) = fs::read_dir(top) else {
        panic!("no /sys/fs/cgroup: the e2e cluster needs cgroups");
    };
    for c in controllers.flatten() {
        let path = c.path();
        if c.file_name() == "unified" || !path.join("cgroup.procs").exists() {
            continue;
        }
        let dir = path.join(root);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        if c.file_name() == "cpuset" {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = fs::read_to_string(path.join(f)).expect("read the root cpuset");
                fs::write(dir.join(f), v.trim()).expect("write the cpuset");
            }
        }
    }
}

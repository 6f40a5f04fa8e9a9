//! Real QEMU guests attached to a switch, for end-to-end tests.
//!
//! A [`QemuGuest`] is Debian's `qemu-system-x86_64` (TCG: no KVM needed)
//! booting a Debian cloud kernel with a tiny initramfs built at test time:
//! the host's static busybox (Debian's `busybox-static`), the virtio network
//! modules of that kernel, and a generated `/init` script that configures
//! `eth0`, pings a peer and powers the machine off.  Its NIC is a
//! `virtio-net-pci` on one of QEMU's network back ends that uml-switch
//! serves ([`Netdev`]): `-netdev stream` (`--stream PATH`) or `-netdev vde`
//! (`--vde-dir DIR`, through libvdeplug).
//!
//! The guest reports through its serial console (`console.log` in its run
//! directory) with lines starting with [`MARKER`]:
//!
//! | line | meaning |
//! |---|---|
//! | `E2E-QEMU: ready UPTIME` | `eth0` is configured (`UPTIME` = guest seconds since boot) |
//! | `E2E-QEMU: error ...` | something in `/init` failed |
//! | `E2E-QEMU: ping-begin` ... `E2E-QEMU: ping-end RC` | busybox `ping` output and exit code |
//! | `E2E-QEMU: poweroff` | the guest is powering off |
//!
//! The kernel is not installed on the host: [`guest_kernel`] runs
//! `apt-get download` for the package that Debian's `linux-image-cloud-amd64`
//! depends on, unpacks it with `dpkg-deb -x` and keeps only `vmlinuz` and
//! the few modules needed, in a cache directory reused by later runs
//! ([`CACHE_ENV`], default [`DEFAULT_CACHE_DIR`]).
//!
//! Every wait is bounded; failures panic with the tail of the guest console
//! and of QEMU's own log.  Dropping a [`QemuGuest`] kills the QEMU process
//! (by its pid, only if it is still running) and removes its run directory.

use crate::process::find_program;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::uml::{log_tail, parse_ping, PingOutcome};

/// Prefix of every line the guest's `/init` prints for the host.
pub const MARKER: &str = "E2E-QEMU:";
/// How long a guest may take from spawn to a configured `eth0`.  It takes
/// about 3-5 s under TCG on an idle machine; allow for a loaded CI machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a guest may take, once ready, to report its ping of the peer.
pub const PING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a guest may take to power off after its report.
pub const POWEROFF_TIMEOUT: Duration = Duration::from_secs(20);
/// Environment variable naming the cache directory for the guest kernel.
pub const CACHE_ENV: &str = "UML_SWITCH_QEMU_CACHE";
/// Cache directory for the guest kernel unless [`CACHE_ENV`] is set.
pub const DEFAULT_CACHE_DIR: &str = "/var/tmp/uml-switch-qemu-cache";
/// Debian's meta package whose dependency is the guest kernel package.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// The virtio network modules, in load order.  Some exist only in some
/// kernel versions (virtio_pci_*_dev since 5.14) or may be built in: those
/// not found in the package are left out.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];
/// QEMU's binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// The Debian packages these tests need on the host (for messages).
pub const PACKAGES: &str = "qemu-system-x86 busybox-static (and apt lists for \
                            `apt-get download linux-image-cloud-amd64`'s dependency)";

/// Polling interval of every wait in this module.
const POLL: Duration = Duration::from_millis(50);
/// Lines of each log quoted in failure messages.
const TAIL_LINES: usize = 40;
/// Unique names for run and scratch directories within this process.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Panics unless this process can boot QEMU guests in private namespaces:
/// root, `qemu-system-x86_64` with the `stream` and `vde` network back ends,
/// a static `busybox`, and `apt-get`/`dpkg-deb` (unless the guest kernel is
/// already cached).  Never skips: the message names the missing packages.
pub fn require_qemu_environment() {
    let mut missing = Vec::new();
    if !crate::process::is_root() {
        missing.push("root (effective uid 0)".to_string());
    }
    for program in ["ip", QEMU] {
        if find_program(program).is_none() {
            missing.push(format!("`{program}` in PATH"));
        }
    }
    match find_program("busybox") {
        None => missing.push("`busybox` in PATH (package busybox-static)".into()),
        Some(path) => match is_static_elf(&path) {
            Ok(true) => {}
            Ok(false) => missing.push(format!(
                "a statically linked busybox ({} is dynamic: install busybox-static)",
                path.display()
            )),
            Err(e) => missing.push(format!("a readable busybox ({}: {e})", path.display())),
        },
    }
    if find_program(QEMU).is_some() {
        let out = Command::new(QEMU)
            .args(["-netdev", "help"])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                for backend in ["stream", "vde"] {
                    if !text.lines().any(|l| l.trim() == backend) {
                        missing.push(format!("QEMU's `-netdev {backend}` back end"));
                    }
                }
            }
            Err(e) => missing.push(format!("a runnable {QEMU} ({e})")),
        }
    }
    if missing.is_empty() {
        return;
    }
    panic!(
        "QEMU tests need root and Debian's {PACKAGES}; run ./run-tests.sh, which installs \
         them (these tests never skip). Missing: {}",
        missing.join(", ")
    );
}

/// Whether the ELF64 little-endian executable at `path` has no `PT_INTERP`
/// program header (no dynamic loader), i.e. runs in an empty initramfs.
fn is_static_elf(path: &Path) -> io::Result<bool> {
    let data = fs::read(path)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not an ELF64 LE executable");
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let header = data.get(at..at + 4).ok_or_else(bad)?;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(header.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A guest kernel with the modules [`MODULES`] needs, unpacked in the cache.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// Debian package it came from, e.g. `linux-image-6.1.0-57-cloud-amd64`.
    pub package: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// Uncompressed `.ko` files, in load order.
    pub modules: Vec<PathBuf>,
}

/// The guest kernel, downloaded and unpacked on first use (once per
/// process; other processes racing for the same cache entry are harmless:
/// each builds in a directory of its own and renames it into place).
/// Panics with an explanation if it cannot be had.
pub fn guest_kernel() -> GuestKernel {
    static KERNEL: OnceLock<Result<GuestKernel, String>> = OnceLock::new();
    match KERNEL.get_or_init(prepare_kernel) {
        Ok(kernel) => kernel.clone(),
        Err(e) => panic!("cannot prepare the QEMU guest kernel: {e}"),
    }
}

/// The cache directory ([`CACHE_ENV`] or [`DEFAULT_CACHE_DIR`]).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_CACHE_DIR),
    }
}

fn prepare_kernel() -> Result<GuestKernel, String> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let package = match kernel_package() {
        Ok(package) => package,
        Err(e) => {
            // No apt lists (offline?): any kernel cached earlier will do.
            return newest_cached(&cache)
                .ok_or_else(|| format!("{e}; and no kernel is cached in {}", cache.display()));
        }
    };
    let entry = cache.join(&package);
    if let Some(kernel) = load_cached(&entry, &package) {
        return Ok(kernel);
    }
    let work = cache.join(format!(
        ".build-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    ));
    let result = build_cache_entry(&work, &package, &entry);
    let _ = fs::remove_dir_all(&work);
    result?;
    load_cached(&entry, &package)
        .ok_or_else(|| format!("{} is incomplete after building it", entry.display()))
}

/// The concrete kernel package `linux-image-cloud-amd64` depends on.
fn kernel_package() -> Result<String, String> {
    let out = command_output(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "`apt-cache depends {KERNEL_META_PACKAGE}` names no linux-image package \
                 (run `apt-get update`?): {}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// A complete cache entry: `vmlinuz`, `modules/NAME.ko` and `modules.order`.
fn load_cached(entry: &Path, package: &str) -> Option<GuestKernel> {
    let vmlinuz = entry.join("vmlinuz");
    let order = fs::read_to_string(entry.join("modules.order")).ok()?;
    if !vmlinuz.is_file() {
        return None;
    }
    let modules: Vec<PathBuf> = order
        .lines()
        .filter(|l| !l.is_empty())
        .map(|name| entry.join("modules").join(format!("{name}.ko")))
        .collect();
    if !modules.iter().all(|m| m.is_file()) {
        return None;
    }
    Some(GuestKernel {
        package: package.to_string(),
        vmlinuz,
        modules,
    })
}

/// The cache entry of the highest-named kernel package in `cache`.
fn newest_cached(cache: &Path) -> Option<GuestKernel> {
    let mut names: Vec<String> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("linux-image-"))
        .collect();
    names.sort();
    names
        .iter()
        .rev()
        .find_map(|n| load_cached(&cache.join(n), n))
}

/// Downloads `package` into `work`, unpacks it, and renames the cache entry
/// it makes into `entry`.
fn build_cache_entry(work: &Path, package: &str, entry: &Path) -> Result<(), String> {
    fs::create_dir_all(work).map_err(|e| format!("create {}: {e}", work.display()))?;
    // apt downloads as the unprivileged `_apt` user when it can write here.
    let _ = fs::set_permissions(work, fs::Permissions::from_mode(0o777));
    command_ok(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(work),
    )
    .map_err(|e| format!("{e} (the package index may be missing: run `apt-get update`)"))?;
    let deb = fs::read_dir(work)
        .map_err(|e| format!("read {}: {e}", work.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                work.display()
            )
        })?;
    let root = work.join("x");
    command_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;

    let out = work.join("out");
    let out_modules = out.join("modules");
    fs::create_dir_all(&out_modules).map_err(|e| format!("create {}: {e}", out.display()))?;
    let vmlinuz = only_match(&root.join("boot"), |n| n.starts_with("vmlinuz-"))?;
    fs::copy(&vmlinuz, out.join("vmlinuz"))
        .map_err(|e| format!("copy {}: {e}", vmlinuz.display()))?;
    let release_dir = only_match(&root.join("lib/modules"), |_| true)
        .or_else(|_| only_match(&root.join("usr/lib/modules"), |_| true))?;
    let mut files = Vec::new();
    collect_files(&release_dir.join("kernel"), &mut files)
        .map_err(|e| format!("list modules in {}: {e}", release_dir.display()))?;
    let mut order = String::new();
    for name in MODULES {
        let Some(file) = files
            .iter()
            .find(|f| module_name(f).as_deref() == Some(*name))
        else {
            continue;
        };
        let target = out_modules.join(format!("{name}.ko"));
        decompress_module(file, &target)?;
        order.push_str(name);
        order.push('\n');
    }
    if !order.contains("virtio_net\n") {
        return Err(format!("{package} has no virtio_net module"));
    }
    fs::write(out.join("modules.order"), order).map_err(|e| format!("write modules.order: {e}"))?;
    match fs::rename(&out, entry) {
        Ok(()) => Ok(()),
        // Another process finished first: its entry is as good as ours.
        Err(_) if entry.join("modules.order").is_file() => Ok(()),
        Err(e) => Err(format!(
            "rename {} to {}: {e}",
            out.display(),
            entry.display()
        )),
    }
}

/// The single entry of `dir` whose file name satisfies `want`.
fn only_match(dir: &Path, want: impl Fn(&str) -> bool) -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&want))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(format!(
            "expected one match in {}, found {n}",
            dir.display()
        )),
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// `virtio_net` for `.../virtio_net.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz`.
fn module_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .map(str::to_string)
}

/// Copies a module, decompressing it (busybox `insmod` wants plain ELF).
fn decompress_module(from: &Path, to: &Path) -> Result<(), String> {
    let name = from.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::copy(from, to)
            .map(drop)
            .map_err(|e| format!("copy {}: {e}", from.display())),
        Some(tool) => {
            let out = command_ok(Command::new(tool).arg("-dc").arg(from))
                .map_err(|e| format!("{e} (install the package providing `{tool}`)"))?;
            fs::write(to, out.stdout).map_err(|e| format!("write {}: {e}", to.display()))
        }
    }
}

fn command_output(cmd: &mut Command) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))
}

fn command_ok(cmd: &mut Command) -> Result<Output, String> {
    let out = command_output(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// Writes a `newc` cpio archive (what the kernel unpacks as initramfs).
#[derive(Debug, Default)]
pub struct Cpio {
    data: Vec<u8>,
    next_ino: u32,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio::default()
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 0, &[]);
    }

    /// Adds a regular file with permissions `perm` (e.g. `0o755`).
    pub fn file(&mut self, name: &str, perm: u32, contents: &[u8]) {
        self.entry(name, 0o100_000 | perm, 0, contents);
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major << 8) | minor, &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: u32, contents: &[u8]) {
        self.next_ino += 1;
        let size = u32::try_from(contents.len()).expect("cpio member below 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("short name");
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            namesize,
            0, // check
        ];
        self.data.extend_from_slice(b"070701");
        for field in fields {
            self.data
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(contents);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    /// The finished archive (with its `TRAILER!!!`).
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.data
    }
}

/// The QEMU network back end the guest's NIC uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netdev {
    /// `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH`
    /// (uml-switch `--stream PATH`).
    Stream(PathBuf),
    /// `-netdev vde,id=n0,sock=DIR` (uml-switch `--vde-dir DIR`).
    Vde(PathBuf),
}

impl Netdev {
    /// The `-netdev` argument.
    pub fn option(&self) -> String {
        match self {
            Netdev::Stream(path) => format!(
                "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                checked_word(path)
            ),
            Netdev::Vde(dir) => format!("vde,id=n0,sock={}", checked_word(dir)),
        }
    }
}

/// Returns `path` as a string after checking it is safe in a QEMU option
/// (no comma) and on the kernel command line (no whitespace or quotes).
fn checked_word(path: &Path) -> String {
    let s = path
        .to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", path.display()));
    assert!(
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-:+=@%".contains(c)),
        "{s:?} cannot be passed to QEMU verbatim"
    );
    s.to_string()
}

/// Checks that `s` is one harmless shell word (an address, a MAC).
fn shell_word(s: &str) -> String {
    assert!(
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c)),
        "{s:?} is not a plain word"
    );
    s.to_string()
}

/// Configures and boots a [`QemuGuest`]; see [`QemuGuest::builder`].
#[derive(Debug)]
pub struct QemuGuestBuilder<'a> {
    name: String,
    netdev: Netdev,
    netns: Option<&'a NetNs>,
    mac: Option<String>,
    addr: Option<String>,
    peers: Vec<String>,
    ping_count: u32,
    hold_secs: u32,
    mem_mib: u32,
}

impl<'a> QemuGuestBuilder<'a> {
    /// Gives the NIC this MAC address (`02:...`; default: QEMU's
    /// `52:54:00:12:34:56`, the same for every guest).
    pub fn mac(mut self, mac: &str) -> Self {
        assert!(
            mac.len() == 17 && mac.chars().all(|c| c.is_ascii_hexdigit() || c == ':'),
            "bad MAC {mac:?}"
        );
        self.mac = Some(mac.to_string());
        self
    }

    /// Gives `eth0` this address in CIDR form (required).
    pub fn addr(mut self, cidr: &str) -> Self {
        self.addr = Some(shell_word(cidr));
        self
    }

    /// Makes the guest ping `peer` (after any peers given before): it waits
    /// (bounded) until one echo request is answered, then runs
    /// `ping -c COUNT` and reports it.
    pub fn ping(mut self, peer: &str, count: u32) -> Self {
        self.peers.push(shell_word(peer));
        self.ping_count = count;
        self
    }

    /// Keeps the guest up this long after its pings (so that others can
    /// ping it) before it powers off.
    pub fn hold_before_poweroff(mut self, hold: Duration) -> Self {
        self.hold_secs = hold.as_secs() as u32;
        self
    }

    /// Runs QEMU inside `netns` (where the switch and its UML guests run).
    pub fn netns(mut self, netns: &'a NetNs) -> Self {
        self.netns = Some(netns);
        self
    }

    /// Guest RAM in MiB (default 256).
    pub fn mem_mib(mut self, mib: u32) -> Self {
        self.mem_mib = mib;
        self
    }

    /// Builds the initramfs in a fresh run directory `parent/NAME` and starts
    /// QEMU.  Does not wait for the guest; see [`QemuGuest::wait_ready`].
    pub fn boot(self, parent: &Path) -> QemuGuest {
        let kernel = guest_kernel();
        let addr = self
            .addr
            .clone()
            .expect("QemuGuestBuilder::addr is required");
        let run_dir = parent.join(&self.name);
        fs::create_dir_all(&run_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", run_dir.display()));
        let initrd = run_dir.join("initrd.cpio");
        let archive = self.initramfs(&kernel, &addr);
        File::create(&initrd)
            .and_then(|mut f| f.write_all(&archive))
            .unwrap_or_else(|e| panic!("write {}: {e}", initrd.display()));

        let console = run_dir.join("console.log");
        let qemu_log = run_dir.join("qemu.log");
        let mut device = "virtio-net-pci,netdev=n0,romfile=".to_string();
        if let Some(mac) = &self.mac {
            device.push_str(",mac=");
            device.push_str(mac);
        }
        let args: Vec<String> = vec![
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-accel".into(),
            "tcg".into(),
            "-smp".into(),
            "1".into(),
            "-m".into(),
            self.mem_mib.to_string(),
            "-kernel".into(),
            checked_word(&kernel.vmlinuz),
            "-initrd".into(),
            checked_word(&initrd),
            "-append".into(),
            "console=ttyS0 panic=-1 loglevel=4".into(),
            "-serial".into(),
            format!("file:{}", checked_word(&console)),
            "-device".into(),
            device,
            "-netdev".into(),
            self.netdev.option(),
        ];
        let mut cmd = match self.netns {
            Some(ns) => ns.exec_command(QEMU),
            None => Command::new(QEMU),
        };
        cmd.args(&args);
        let out = File::create(&qemu_log)
            .unwrap_or_else(|e| panic!("create {}: {e}", qemu_log.display()));
        let err = out.try_clone().expect("dup qemu log fd");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {QEMU} for guest {}: {e}", self.name));
        QemuGuest {
            name: self.name,
            run_dir,
            console,
            qemu_log,
            args,
            child,
            exit: None,
            started,
            kernel_package: kernel.package,
            peers: self.peers.clone(),
        }
    }

    /// The initramfs: busybox, the modules, `/dev/console` and `/init`.
    fn initramfs(&self, kernel: &GuestKernel, addr: &str) -> Vec<u8> {
        let busybox_path = find_program("busybox").expect("busybox in PATH (busybox-static)");
        let busybox = fs::read(&busybox_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", busybox_path.display()));
        let mut cpio = Cpio::new();
        for dir in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
            cpio.dir(dir);
        }
        cpio.char_dev("dev/console", 5, 1);
        cpio.char_dev("dev/null", 1, 3);
        cpio.file("bin/busybox", 0o755, &busybox);
        let mut names = Vec::new();
        for module in &kernel.modules {
            let file = module
                .file_name()
                .and_then(|n| n.to_str())
                .expect("module name");
            let contents =
                fs::read(module).unwrap_or_else(|e| panic!("read {}: {e}", module.display()));
            cpio.file(&format!("lib/modules/{file}"), 0o644, &contents);
            names.push(file.trim_end_matches(".ko").to_string());
        }
        cpio.file("init", 0o755, self.init_script(addr, &names).as_bytes());
        cpio.finish()
    }

    /// The guest's `/init`: a busybox shell script.
    fn init_script(&self, addr: &str, modules: &[String]) -> String {
        let mut ping: String = self
            .peers
            .iter()
            .map(|peer| {
                format!(
                    r#"
tries=0
until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -ge 50 ] && break
    sleep 0.2
done
ping -c {count} -W 2 {peer} >/ping.out 2>&1
rc=$?
echo "{MARKER} ping-begin {peer} after $tries failed probes"
cat /ping.out
echo "{MARKER} ping-end {peer} $rc"
"#,
                    count = self.ping_count,
                )
            })
            .collect();
        if self.hold_secs > 0 {
            ping.push_str(&format!(
                "echo \"{MARKER} holding {hold}\"\nsleep {hold}\n",
                hold = self.hold_secs
            ));
        }
        format!(
            r#"#!/bin/busybox sh
# /init of QEMU guest {name}, generated by uml-switch-tests (tests/src/qemu.rs).
/bin/busybox --install -s /bin
PATH=/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in {modules}; do
    insmod /lib/modules/$m.ko || echo "{MARKER} error: insmod $m failed"
done
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
if ip addr add {addr} dev eth0 && ip link set eth0 up; then
    echo "{MARKER} ready $(cut -d' ' -f1 /proc/uptime)"
else
    echo "{MARKER} error: cannot configure eth0"
    ip link
fi
{ping}
echo "{MARKER} poweroff"
poweroff -f
"#,
            name = self.name,
            modules = modules.join(" "),
        )
    }
}

/// A running QEMU guest; see the module documentation.
#[derive(Debug)]
pub struct QemuGuest {
    name: String,
    run_dir: PathBuf,
    console: PathBuf,
    qemu_log: PathBuf,
    args: Vec<String>,
    child: Child,
    exit: Option<ExitStatus>,
    started: Instant,
    kernel_package: String,
    /// Whom the guest pings, in order.
    peers: Vec<String>,
}

impl QemuGuest {
    /// Starts configuring a guest called `name` (its run directory's name;
    /// unique within the test) whose NIC uses `netdev`.
    pub fn builder<'a>(name: &str, netdev: Netdev) -> QemuGuestBuilder<'a> {
        QemuGuestBuilder {
            name: shell_word(name),
            netdev,
            netns: None,
            mac: None,
            addr: None,
            peers: Vec::new(),
            ping_count: 3,
            hold_secs: 0,
            mem_mib: 256,
        }
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest's serial console log.
    pub fn console(&self) -> &Path {
        &self.console
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most [`BOOT_TIMEOUT`]) until the guest has configured
    /// `eth0`; returns the time since QEMU was started and the guest's own
    /// uptime then (seconds).
    pub fn wait_ready(&mut self) -> (Duration, f64) {
        let line = self.wait_marker("ready", BOOT_TIMEOUT);
        let uptime = line.trim().parse().unwrap_or(f64::NAN);
        (self.started.elapsed(), uptime)
    }

    /// Waits (at most [`PING_TIMEOUT`]) for the guest's ping report.
    pub fn wait_ping(&mut self) -> PingOutcome {
        let first = self
            .peers
            .first()
            .cloned()
            .unwrap_or_else(|| self.fail("wait_ping: the guest pings nobody"));
        self.wait_ping_of(&first)
    }

    /// Waits (at most [`PING_TIMEOUT`]) for the guest's report of its ping
    /// of `peer`.
    pub fn wait_ping_of(&mut self, peer: &str) -> PingOutcome {
        let rc = self.wait_marker(&format!("ping-end {peer}"), PING_TIMEOUT);
        let exit_code = rc.trim().parse().unwrap_or_else(|_| {
            self.fail(format!("guest {}: bad ping exit code {rc:?}", self.name))
        });
        let console = self.console_text();
        let begin = format!("{MARKER} ping-begin {peer} ");
        let end = format!("{MARKER} ping-end {peer} ");
        let output: String = console
            .lines()
            .skip_while(|l| !l.starts_with(&begin))
            .skip(1)
            .take_while(|l| !l.starts_with(&end))
            .map(|l| format!("{l}\n"))
            .collect();
        let stats = parse_ping(&output);
        PingOutcome {
            exit_code,
            output,
            stats,
        }
    }

    /// Waits (at most [`POWEROFF_TIMEOUT`]) for the guest to power off and
    /// QEMU to exit; panics if it does not.
    pub fn wait_poweroff(&mut self) -> ExitStatus {
        match poll_until(POWEROFF_TIMEOUT, || self.try_exit()) {
            Some(status) => status,
            None => self.fail(format!(
                "guest {} did not power off within {POWEROFF_TIMEOUT:?}",
                self.name
            )),
        }
    }

    /// The tail of the console and of QEMU's log, for messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- QEMU guest {} ({} {}; kernel {}) ---\n\
             --- console {} (last {TAIL_LINES} lines) ---\n{}\n\
             --- qemu log {} ---\n{}\n---",
            self.name,
            QEMU,
            self.args.join(" "),
            self.kernel_package,
            self.console.display(),
            log_tail(&self.console, TAIL_LINES),
            self.qemu_log.display(),
            log_tail(&self.qemu_log, TAIL_LINES),
        )
    }

    /// Panics with `msg` and [`QemuGuest::diagnostics`].
    pub fn fail(&self, msg: impl fmt::Display) -> ! {
        panic!("{msg}\n{}", self.diagnostics());
    }

    fn console_text(&self) -> String {
        fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits for the console line `MARKER WORD REST` and returns `REST`;
    /// panics on an `error` marker, if QEMU exits first, or after `timeout`.
    fn wait_marker(&mut self, word: &str, timeout: Duration) -> String {
        let prefix = format!("{MARKER} {word}");
        let error = format!("{MARKER} error");
        let found = poll_until(timeout, || {
            let text = self.console_text();
            for line in text.lines() {
                let line = line.trim_end_matches('\r');
                if line.starts_with(&error) {
                    return Some(Err(line.to_string()));
                }
                if let Some(rest) = line.strip_prefix(&prefix) {
                    return Some(Ok(rest.trim().to_string()));
                }
            }
            self.try_exit()
                .map(|status| Err(format!("QEMU exited ({status})")))
        });
        match found {
            Some(Ok(rest)) => rest,
            Some(Err(why)) => self.fail(format!(
                "guest {} did not print `{prefix}`: {why}",
                self.name
            )),
            None => self.fail(format!(
                "guest {} did not print `{prefix}` within {timeout:?}",
                self.name
            )),
        }
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            // The guest powers itself off after its report; if it is still
            // here, give it a moment, then kill QEMU (by its pid: our child,
            // unreaped, so the pid cannot have been reused).
            if poll_until(Duration::from_secs(2), || self.try_exit()).is_none() {
                eprintln!(
                    "QEMU guest {} still running; killing pid {}",
                    self.name,
                    self.pid()
                );
                let _ = self.child.kill();
                self.exit = self.child.wait().ok();
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.run_dir) {
            eprintln!("warning: cannot remove {}: {e}", self.run_dir.display());
        }
    }
}

/// Polls `f` every [`POLL`] until it returns `Some` or `timeout` passes.
fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_layout() {
        let mut cpio = Cpio::new();
        cpio.file("init", 0o755, b"abc");
        let data = cpio.finish();
        assert_eq!(&data[..6], b"070701");
        // ino 1, mode 0100755, ..., filesize 3, ..., namesize 5 ("init\0").
        assert_eq!(&data[6..22], b"00000001000081ed");
        assert_eq!(&data[54..62], b"00000003");
        assert_eq!(&data[94..102], b"00000005");
        // 110-byte header + "init\0" = 115, padded to 116; data 3, padded to 4.
        assert_eq!(&data[110..115], b"init\0");
        assert_eq!(&data[116..119], b"abc");
        assert_eq!(&data[120..126], b"070701");
        assert!(data.len().is_multiple_of(4));
        assert!(data.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn netdev_options() {
        assert_eq!(
            Netdev::Stream("/tmp/x/qemu.sock".into()).option(),
            "stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/x/qemu.sock"
        );
        assert_eq!(
            Netdev::Vde("/tmp/x/vde".into()).option(),
            "vde,id=n0,sock=/tmp/x/vde"
        );
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name(Path::new("/m/virtio_net.ko.xz")).as_deref(),
            Some("virtio_net")
        );
        assert_eq!(
            module_name(Path::new("/m/virtio.ko")).as_deref(),
            Some("virtio")
        );
        assert_eq!(module_name(Path::new("/m/README")), None);
    }

    #[test]
    fn busybox_elf_check() {
        // This test binary is dynamically linked (it has a PT_INTERP).
        let me = std::env::current_exe().expect("current exe");
        assert!(!is_static_elf(&me).expect("ELF"));
    }
}

//! Network namespaces the tests create, each with a tap device for the VMM and an address on
//! the host side of it. Traffic stays inside them: the tests never reach another address.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

use super::TestVm;

/// The guest's MAC in every network test.
pub const GUEST_MAC: &str = "06:00:0a:00:00:02";

/// A namespace with `tap0` (or another name) at `10.0.0.1/24` (the guest is 10.0.0.2);
/// deleted on drop.
pub struct TapNetns {
    pub name: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success())
}

impl TapNetns {
    /// Creates the namespace and its tap; None (after one SKIPPED line) when this host cannot.
    pub fn create(test: &str) -> Option<Self> {
        Self::create_with_tap(test, "tap0")
    }

    /// As [`TapNetns::create`], with the tap named `tap` instead of `tap0`.
    pub fn create_with_tap(test: &str, tap: &str) -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pal{}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        if !ip(&["netns", "add", &name]) {
            super::skip::skip(
                test,
                "cannot create a network namespace (root and iproute2 needed)",
            );
            return None;
        }
        let ns = Self { name };
        let steps: [&[&str]; 4] = [
            &["tuntap", "add", "dev", tap, "mode", "tap"],
            &["addr", "add", "10.0.0.1/24", "dev", tap],
            &["link", "set", tap, "up"],
            &["link", "set", "lo", "up"],
        ];
        for step in steps {
            let mut args = vec!["netns", "exec", &ns.name, "ip"];
            args.extend_from_slice(step);
            if !ip(&args) {
                super::skip::skip(test, &format!("cannot set up {tap} in {}", ns.name));
                return None;
            }
        }
        Some(ns)
    }

    /// Runs `f` on a thread inside the namespace (sockets it creates stay there).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        std::thread::spawn(move || {
            // SAFETY: setns with a namespace fd owned by `file`, alive for the call; it moves
            // only this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Output of a command run inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TapNetns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.name]);
    }
}

/// Makes `cmd` start inside namespace `name`.
pub fn run_in(cmd: &mut Command, name: &str) {
    let file = File::open(format!("/run/netns/{name}")).expect("netns file");
    let enter = move || {
        // SAFETY: setns with a descriptor the child inherited from `file`; it only changes
        // the calling process's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec and calls only setns, which is
    // async-signal-safe, and allocates nothing.
    unsafe { cmd.pre_exec(enter) };
}

/// The host's TSC rate in MHz, for the probe's clock.
pub fn tsc_mhz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(2000, |mhz| mhz as u64)
}

/// A probe VM on `ns`'s tap0 with `firewall` (None: no firewall object) running `scenario`.
pub fn net_vm(ns: &TapNetns, scenario: &str, params: &str, firewall: Option<Value>) -> TestVm {
    let mut vm = TestVm::probe(scenario, 1, 64);
    vm.config["boot-source"]["boot_args"] = json!(format!(
        "console=ttyS0 probe.run={scenario} probe.ip=10.0.0.2/24 probe.tsc_mhz={} {params}",
        tsc_mhz()
    ));
    let mut iface = json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC});
    if let Some(fw) = firewall {
        iface["firewall"] = fw;
    }
    vm.config["network-interfaces"] = json!([iface]);
    let metrics = vm.dir.path().join("metrics.json");
    vm.args
        .extend(["--metrics-path".into(), metrics.to_str().unwrap().into()]);
    vm.netns = Some(ns.name.clone());
    vm
}

/// The interface's counters summed over every metrics line.
pub fn net_totals(vm: &TestVm) -> BTreeMap<String, u64> {
    super::group_totals(
        &std::fs::read_to_string(vm.dir.path().join("metrics.json")).unwrap(),
        "net_eth0",
    )
}

//! Step 4: cgroups. The jailer (on the host) creates `<hierarchy>/<parent-cgroup>/<id>` and
//! writes the `--cgroup` values; the jailed process joins it before it execs.
//!
//! Hierarchies are found in /proc/mounts: cgroup v1 controllers (one mount per controller or
//! group of controllers) and the v2 unified hierarchy, which may both be present.

mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spec::{CgroupRequest, CgroupVersion};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("Cannot read /proc/mounts")]
    Mounts(#[source] std::io::Error),
    #[error("No cgroup {0} hierarchy is mounted")]
    NoHierarchy(&'static str),
    #[error("Cgroup controller {0:?} is not available")]
    ControllerUnavailable(String),
    #[error("Cannot create cgroup {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("Cgroup {0} already holds processes")]
    InUse(PathBuf),
    #[error("Cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("Cannot write {1:?} to {0}")]
    Write(PathBuf, String, #[source] std::io::Error),
}

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Default)]
pub struct Hierarchies {
    /// cgroup v1 mounts: (mount point, mount options naming the controllers).
    v1: Vec<(PathBuf, Vec<String>)>,
    v2: Option<PathBuf>,
}

impl Hierarchies {
    pub fn read() -> Result<Self, CgroupError> {
        let text = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
        Ok(Self::parse(&text))
    }

    fn parse(mounts: &str) -> Self {
        let mut h = Hierarchies::default();
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, target, fstype, options, ..] = fields[..] else {
                continue;
            };
            let target = PathBuf::from(unescape_mount_path(target));
            match fstype {
                "cgroup" => {
                    h.v1.push((target, options.split(',').map(str::to_string).collect()))
                }
                "cgroup2" if h.v2.is_none() => h.v2 = Some(target),
                _ => {}
            }
        }
        h
    }

    /// v1 when any v1 controller is mounted (hybrid hosts), else v2.
    fn detect_version(&self) -> CgroupVersion {
        let has_v1_controller = self
            .v1
            .iter()
            .any(|(_, opts)| opts.iter().any(|o| is_controller(o)));
        if has_v1_controller || self.v2.is_none() {
            CgroupVersion::V1
        } else {
            CgroupVersion::V2
        }
    }

    /// The v1 mount point that carries `controller`.
    fn v1_mount(&self, controller: &str) -> Option<(&Path, bool)> {
        self.v1
            .iter()
            .find(|(_, opts)| opts.iter().any(|o| o == controller))
            .map(|(dir, opts)| (dir.as_path(), opts.iter().any(|o| o == "cpuset")))
    }
}

/// Mount options that are not controllers.
fn is_controller(option: &str) -> bool {
    !matches!(
        option,
        "rw" | "ro"
            | "relatime"
            | "noatime"
            | "nosuid"
            | "nodev"
            | "noexec"
            | "xattr"
            | "noprefix"
            | "clone_children"
            | "cpuset_v2_mode"
            | "favordynmods"
            | "nsdelegate"
    ) && !option.starts_with("name=")
        && !option.contains('=')
}

/// /proc/mounts writes space, tab, newline and backslash in paths as octal escapes.
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, b| acc.wrapping_mul(8) + (b - b'0')),
                );
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The jail's cgroups: those it joins and those this start created.
#[derive(Debug, Default)]
pub struct JailCgroups {
    join: Vec<PathBuf>,
    created: Vec<PathBuf>,
}

impl JailCgroups {
    /// Creates the cgroups and writes their values (on the host, before the jail is entered).
    pub fn create(req: &CgroupRequest, id: &str) -> Result<Self, CgroupError> {
        let mut cgroups = JailCgroups::default();
        if req.properties.is_empty() && !req.parent_given {
            return Ok(cgroups);
        }
        let hierarchies = Hierarchies::read()?;
        let result = match req.version.unwrap_or_else(|| hierarchies.detect_version()) {
            CgroupVersion::V1 => v1::create(&hierarchies, req, id, &mut cgroups),
            CgroupVersion::V2 => v2::create(&hierarchies, req, id, &mut cgroups),
        };
        match result {
            Ok(()) => Ok(cgroups),
            Err(e) => {
                cgroups.remove();
                Err(e)
            }
        }
    }

    /// Moves the calling process into every jail cgroup ("0" is the writer itself, which also
    /// holds as pid 1 of a new pid namespace).
    pub fn attach_self(&self) -> Result<(), CgroupError> {
        self.join
            .iter()
            .try_for_each(|dir| write_value(&dir.join("cgroup.procs"), "0"))
    }

    /// Removes the cgroups this start created, deepest first. Waits briefly for a process that
    /// just exited to leave; a cgroup still shared with another instance stays.
    pub fn remove(&self) {
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    // Busy with a process on its way out (not with another instance's cgroup).
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && !has_children(dir) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
        }
    }

    /// Creates every missing directory from `mount` down to `leaf`; a `leaf` that already
    /// exists must be empty of processes.
    fn make_dirs(&mut self, mount: &Path, leaf: &Path) -> Result<(), CgroupError> {
        let relative = leaf.strip_prefix(mount).unwrap_or(leaf);
        let mut dir = mount.to_path_buf();
        for part in relative.components() {
            dir.push(part);
            self.make_dir(&dir)?;
        }
        let procs = read_value(&leaf.join("cgroup.procs"))?;
        if !procs.trim().is_empty() {
            return Err(CgroupError::InUse(leaf.to_path_buf()));
        }
        Ok(())
    }

    fn make_dir(&mut self, dir: &Path) -> Result<(), CgroupError> {
        match std::fs::create_dir(dir) {
            Ok(()) => {
                self.created.push(dir.to_path_buf());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(CgroupError::Create(dir.to_path_buf(), e)),
        }
    }
}

/// A cgroup directory with child cgroups.
fn has_children(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().any(|e| e.path().is_dir()))
        .unwrap_or(false)
}

fn read_value(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| CgroupError::Read(path.to_path_buf(), e))
}

fn write_value(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, format!("{value}\n"))
        .map_err(|e| CgroupError::Write(path.to_path_buf(), value.to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn hybrid_hosts_default_to_v1_and_find_each_controller() {
        let h = Hierarchies::parse(HYBRID);
        assert_eq!(h.detect_version(), CgroupVersion::V1);
        assert_eq!(
            h.v1_mount("cpuacct").unwrap().0,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert!(h.v1_mount("pids").is_none());
        assert_eq!(h.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn pure_v2_hosts_default_to_v2() {
        let h = Hierarchies::parse(
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n\
             cgroup /sys/fs/cgroup/systemd cgroup rw,xattr,name=systemd 0 0\n",
        );
        assert_eq!(h.detect_version(), CgroupVersion::V2);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b\\c"), r"/a b\\c");
        assert_eq!(unescape_mount_path(r"/x\134y"), r"/x\y");
    }
}

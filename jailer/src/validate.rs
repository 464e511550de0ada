//! Step 1: validate the command line into a `JailSpec` before anything is created.

use std::path::{Component, Path, PathBuf};

use crate::cli::Cli;
use crate::spec::{
    CgroupProperty, CgroupRequest, CgroupVersion, JailSpec, LandlockRule, ResourceLimits,
    DEFAULT_NO_FILE,
};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("Invalid instance id {0:?}: 1 to 64 characters of [A-Za-z0-9-]")]
    InvalidId(String),
    #[error("Cannot use exec file {0}")]
    ExecFile(PathBuf, #[source] std::io::Error),
    #[error("Exec file {0} is not a regular file")]
    ExecFileNotAFile(PathBuf),
    #[error("Exec file {0} has no usable file name")]
    ExecFileName(PathBuf),
    #[error("Cannot use chroot base dir {0}")]
    ChrootBase(PathBuf, #[source] std::io::Error),
    #[error("Chroot base dir {0} is not a directory")]
    ChrootBaseNotADir(PathBuf),
    #[error("Cannot use network namespace {0}")]
    Netns(PathBuf, #[source] std::io::Error),
    #[error("Invalid --cgroup {0:?}: expected FILE=VALUE, FILE a cgroup file like pids.max")]
    CgroupFormat(String),
    #[error("Invalid --cgroup-version {0:?}: expected 1 or 2")]
    CgroupVersion(String),
    #[error("Invalid --parent-cgroup {0}: a relative path without . or ..")]
    ParentCgroup(PathBuf),
    #[error("Invalid --resource-limit {0:?}: expected fsize=N or no-file=N")]
    ResourceLimit(String),
    #[error("Invalid --landlock-rule {0:?}: expected an absolute PATH:r or PATH:rw")]
    LandlockRule(String),
    #[error("--landlock-rule and --no-landlock exclude each other")]
    LandlockRuleWithoutLandlock,
}

/// Checks every flag; touches nothing on the host.
pub fn validate(cli: Cli) -> Result<JailSpec, ValidateError> {
    if !valid_id(&cli.id) {
        return Err(ValidateError::InvalidId(cli.id));
    }
    let exec_file = std::fs::canonicalize(&cli.exec_file)
        .map_err(|e| ValidateError::ExecFile(cli.exec_file.clone(), e))?;
    if !exec_file.is_file() {
        return Err(ValidateError::ExecFileNotAFile(exec_file));
    }
    let exec_name = exec_file
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| ValidateError::ExecFileName(exec_file.clone()))?;
    let chroot_base = std::fs::canonicalize(&cli.chroot_base_dir)
        .map_err(|e| ValidateError::ChrootBase(cli.chroot_base_dir.clone(), e))?;
    if !chroot_base.is_dir() {
        return Err(ValidateError::ChrootBaseNotADir(chroot_base));
    }
    if let Some(netns) = &cli.netns {
        std::fs::metadata(netns).map_err(|e| ValidateError::Netns(netns.clone(), e))?;
    }
    let cgroups = cgroup_request(&cli, &exec_name)?;
    let limits = resource_limits(&cli.resource_limits)?;
    let landlock_rules = match (cli.no_landlock, cli.landlock_rules.is_empty()) {
        (true, false) => return Err(ValidateError::LandlockRuleWithoutLandlock),
        (true, true) => None,
        (false, _) => Some(
            cli.landlock_rules
                .iter()
                .map(|r| landlock_rule(r))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(JailSpec {
        id: cli.id,
        exec_file,
        exec_name,
        uid: cli.uid,
        gid: cli.gid,
        chroot_base,
        netns: cli.netns,
        daemonize: cli.daemonize,
        new_pid_ns: cli.new_pid_ns,
        cgroups,
        limits,
        landlock_rules,
        exec_args: cli.exec_args,
    })
}

/// Firecracker's rule: alphanumeric and '-', 1 to 64 characters.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A relative path of plain names: nothing that climbs or restarts at `/`.
fn plain_relative(path: &Path) -> bool {
    path.components().count() > 0 && path.components().all(|c| matches!(c, Component::Normal(_)))
}

fn cgroup_request(cli: &Cli, exec_name: &str) -> Result<CgroupRequest, ValidateError> {
    let version = match cli.cgroup_version.as_deref() {
        None => None,
        Some("1") => Some(CgroupVersion::V1),
        Some("2") => Some(CgroupVersion::V2),
        Some(other) => return Err(ValidateError::CgroupVersion(other.to_string())),
    };
    let parent = cli
        .parent_cgroup
        .clone()
        .unwrap_or_else(|| PathBuf::from(exec_name));
    if !plain_relative(&parent) {
        return Err(ValidateError::ParentCgroup(parent));
    }
    let properties = cli
        .cgroups
        .iter()
        .map(|arg| cgroup_property(arg))
        .collect::<Result<_, _>>()?;
    Ok(CgroupRequest {
        version,
        parent,
        parent_given: cli.parent_cgroup.is_some(),
        properties,
    })
}

/// `FILE=VALUE` where FILE is one file name `controller.property`.
fn cgroup_property(arg: &str) -> Result<CgroupProperty, ValidateError> {
    let bad = || ValidateError::CgroupFormat(arg.to_string());
    let (file, value) = arg.split_once('=').ok_or_else(bad)?;
    let file_ok = file.split_once('.').is_some_and(|(controller, property)| {
        !controller.is_empty()
            && !property.is_empty()
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    });
    if !file_ok || value.is_empty() || value.contains('\n') {
        return Err(bad());
    }
    Ok(CgroupProperty {
        file: file.to_string(),
        value: value.to_string(),
    })
}

fn resource_limits(args: &[String]) -> Result<ResourceLimits, ValidateError> {
    let mut limits = ResourceLimits {
        no_file: DEFAULT_NO_FILE,
        fsize: None,
    };
    for arg in args {
        let bad = || ValidateError::ResourceLimit(arg.clone());
        let (name, value) = arg.split_once('=').ok_or_else(bad)?;
        let value: u64 = value.parse().map_err(|_| bad())?;
        match name {
            "no-file" => limits.no_file = value,
            "fsize" => limits.fsize = Some(value),
            _ => return Err(bad()),
        }
    }
    Ok(limits)
}

fn landlock_rule(arg: &str) -> Result<LandlockRule, ValidateError> {
    let bad = || ValidateError::LandlockRule(arg.to_string());
    let (path, mode) = arg.rsplit_once(':').ok_or_else(bad)?;
    let write = match mode {
        "r" => false,
        "rw" => true,
        _ => return Err(bad()),
    };
    let path = PathBuf::from(path);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(bad());
    }
    Ok(LandlockRule { path, write })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_firecracker_rules() {
        assert!(valid_id("vm-1"));
        assert!(valid_id(&"a".repeat(64)));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a_b"));
        assert!(!valid_id(".."));
    }

    #[test]
    fn cgroup_properties_need_file_and_value() {
        let p = cgroup_property("memory.limit_in_bytes=1G").unwrap();
        assert_eq!((p.controller(), p.value.as_str()), ("memory", "1G"));
        assert_eq!(cgroup_property("cpuset.cpus=0-1,3").unwrap().value, "0-1,3");
        for bad in [
            "pids.max",
            "=5",
            "pids.max=",
            "pids=5",
            "../pids.max=5",
            "a/pids.max=1",
            ".max=1",
        ] {
            assert!(cgroup_property(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parent_cgroup_must_stay_below_the_hierarchy_root() {
        assert!(plain_relative(Path::new("palisade/tenants")));
        assert!(!plain_relative(Path::new("/palisade")));
        assert!(!plain_relative(Path::new("../palisade")));
        assert!(!plain_relative(Path::new("./palisade")));
        assert!(!plain_relative(Path::new("")));
    }

    #[test]
    fn resource_limits_parse_with_no_file_default() {
        let l = resource_limits(&[]).unwrap();
        assert_eq!((l.no_file, l.fsize), (DEFAULT_NO_FILE, None));
        let l = resource_limits(&["fsize=10".into(), "no-file=64".into()]).unwrap();
        assert_eq!((l.no_file, l.fsize), (64, Some(10)));
        assert!(resource_limits(&["nproc=5".into()]).is_err());
        assert!(resource_limits(&["no-file=x".into()]).is_err());
    }

    #[test]
    fn landlock_rules_are_absolute_with_a_mode() {
        assert_eq!(
            landlock_rule("/dev/vhost-vsock:rw").unwrap(),
            LandlockRule {
                path: "/dev/vhost-vsock".into(),
                write: true
            }
        );
        assert!(!landlock_rule("/data:r").unwrap().write);
        for bad in ["data:r", "/data", "/data:x", "/a/../b:r"] {
            assert!(landlock_rule(bad).is_err(), "{bad}");
        }
    }
}

//! cgroup v1: one directory per controller hierarchy that a `--cgroup` file names.

use std::path::{Path, PathBuf};

use super::{read_value, write_value, CgroupError, Hierarchies, JailCgroups};
use crate::spec::{CgroupProperty, CgroupRequest};

/// Creates `<controller mount>/<parent>/<id>` for each controller named and writes the values.
pub fn create(
    hierarchies: &Hierarchies,
    req: &CgroupRequest,
    id: &str,
    cgroups: &mut JailCgroups,
) -> Result<(), CgroupError> {
    // Properties grouped by hierarchy: controllers mounted together share one directory.
    let mut groups: Vec<(&Path, bool, Vec<&CgroupProperty>)> = Vec::new();
    for property in &req.properties {
        let controller = property.controller();
        let (mount, cpuset) = hierarchies
            .v1_mount(controller)
            .ok_or_else(|| CgroupError::ControllerUnavailable(controller.to_string()))?;
        match groups.iter_mut().find(|(m, _, _)| *m == mount) {
            Some((_, _, props)) => props.push(property),
            None => groups.push((mount, cpuset, vec![property])),
        }
    }
    for (mount, cpuset, properties) in groups {
        let leaf = mount.join(&req.parent).join(id);
        cgroups.make_dirs(mount, &leaf)?;
        if cpuset {
            inherit_cpuset(mount, &leaf)?;
        }
        for p in properties {
            write_value(&leaf.join(&p.file), &p.value)?;
        }
        cgroups.join.push(leaf);
    }
    Ok(())
}

/// A new v1 cpuset starts with no CPUs and no memory nodes and accepts no task until both are
/// set: copy them down from the nearest ancestor.
fn inherit_cpuset(mount: &Path, leaf: &Path) -> Result<(), CgroupError> {
    let relative = leaf.strip_prefix(mount).unwrap_or(leaf);
    let mut parent: PathBuf = mount.to_path_buf();
    for part in relative.components() {
        let dir = parent.join(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if read_value(&dir.join(file))?.trim().is_empty() {
                let value = read_value(&parent.join(file))?;
                write_value(&dir.join(file), value.trim())?;
            }
        }
        parent = dir;
    }
    Ok(())
}

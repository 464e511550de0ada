//! cgroup v2: one directory in the unified hierarchy, with the controllers its files need
//! enabled in every ancestor's `cgroup.subtree_control`.

use std::collections::BTreeSet;
use std::path::Path;

use super::{read_value, write_value, CgroupError, Hierarchies, JailCgroups};
use crate::spec::CgroupRequest;

/// Creates `<unified>/<parent>/<id>` and writes the values. Without values but with
/// `--parent-cgroup`, the jail joins that cgroup if it exists (Firecracker's behaviour).
pub fn create(
    hierarchies: &Hierarchies,
    req: &CgroupRequest,
    id: &str,
    cgroups: &mut JailCgroups,
) -> Result<(), CgroupError> {
    let mount = hierarchies
        .v2
        .as_deref()
        .ok_or(CgroupError::NoHierarchy("v2"))?;
    if req.properties.is_empty() {
        let parent = mount.join(&req.parent);
        if parent.is_dir() {
            cgroups.join.push(parent);
        }
        return Ok(());
    }
    // Core files (cgroup.*) need no controller.
    let controllers: BTreeSet<&str> = req
        .properties
        .iter()
        .map(|p| p.controller())
        .filter(|c| *c != "cgroup")
        .collect();
    let available = read_value(&mount.join("cgroup.controllers"))?;
    if let Some(missing) = controllers
        .iter()
        .find(|c| !available.split_whitespace().any(|a| a == **c))
    {
        return Err(CgroupError::ControllerUnavailable(missing.to_string()));
    }
    let leaf = mount.join(&req.parent).join(id);
    let mut dir = mount.to_path_buf();
    for part in req.parent.join(id).components() {
        enable_controllers(&dir, &controllers)?;
        dir.push(part);
        cgroups.make_dir(&dir)?;
    }
    cgroups.make_dirs(mount, &leaf)?;
    for p in &req.properties {
        write_value(&leaf.join(&p.file), &p.value)?;
    }
    cgroups.join.push(leaf);
    Ok(())
}

/// Writes `+controller` to `dir/cgroup.subtree_control` for each controller not yet enabled.
/// An enabled controller stays enabled after the jail is gone: other cgroups may rely on it.
fn enable_controllers(dir: &Path, controllers: &BTreeSet<&str>) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = read_value(&file)?;
    for c in controllers {
        if !enabled.split_whitespace().any(|e| e == *c) {
            write_value(&file, &format!("+{c}"))?;
        }
    }
    Ok(())
}

//! Step 9: drop every privilege. Securebits locked so root (were `--uid 0` given) gains nothing
//! at exec, the capability bounding and ambient sets emptied, supplementary groups cleared,
//! uid and gid switched, the remaining capability sets emptied and no_new_privs set.

use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("Cannot lock the securebits")]
    Securebits(#[source] std::io::Error),
    #[error("Cannot clear the ambient capabilities")]
    Ambient(#[source] std::io::Error),
    #[error("Cannot drop capability {0} from the bounding set")]
    Bounding(u32, #[source] std::io::Error),
    #[error("Cannot clear the supplementary groups")]
    Groups(#[source] nix::Error),
    #[error("Cannot switch to gid {0}")]
    Gid(u32, #[source] nix::Error),
    #[error("Cannot switch to uid {0}")]
    Uid(u32, #[source] nix::Error),
    #[error("Cannot clear the capability sets")]
    Capset(#[source] std::io::Error),
    #[error("Cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("Capabilities remain after the drop: {0}")]
    Remaining(String),
}

// linux/securebits.h
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
/// Capability numbers are below 64 (two 32-bit words in the v3 ABI).
const MAX_CAPS: u32 = 64;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops to `uid`/`gid` with no capability left in any set.
pub fn drop_all(uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    // Needs CAP_SETPCAP, so before the uid changes.
    prctl(
        libc::PR_SET_SECUREBITS,
        SECBIT_NOROOT
            | SECBIT_NOROOT_LOCKED
            | SECBIT_NO_SETUID_FIXUP_LOCKED
            | SECBIT_KEEP_CAPS_LOCKED
            | SECBIT_NO_CAP_AMBIENT_RAISE
            | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
        0,
    )
    .map_err(PrivilegeError::Securebits)?;
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )
    .map_err(PrivilegeError::Ambient)?;
    for cap in 0..MAX_CAPS {
        match prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0) {
            Ok(()) => {}
            // Past the kernel's last capability.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(PrivilegeError::Bounding(cap, e)),
        }
    }
    setgroups(&[]).map_err(PrivilegeError::Groups)?;
    let g = Gid::from_raw(gid);
    setresgid(g, g, g).map_err(|e| PrivilegeError::Gid(gid, e))?;
    let u = Uid::from_raw(uid);
    setresuid(u, u, u).map_err(|e| PrivilegeError::Uid(uid, e))?;
    capset_empty()?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(PrivilegeError::NoNewPrivs)?;
    verify_empty()
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: the prctl options used here take integer arguments only.
    let rc = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Empties the effective, permitted and inheritable sets (a non-zero uid already lost the
/// first two at setresuid; this also covers `--uid 0` and the inheritable set).
fn capset_empty() -> Result<(), PrivilegeError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and data are valid v3 capset arguments (one header, two data words) that
    // the kernel only reads.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc < 0 {
        return Err(PrivilegeError::Capset(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Reads every set back: nothing may be left.
fn verify_empty() -> Result<(), PrivilegeError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two v3 data words into `data`, which has room for them.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc < 0 {
        return Err(PrivilegeError::Capset(std::io::Error::last_os_error()));
    }
    if data
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
    {
        return Err(PrivilegeError::Remaining(
            "effective/permitted/inheritable".into(),
        ));
    }
    // SAFETY: PR_CAPBSET_READ takes an integer and only reads the bounding set.
    let bounding_left = (0..MAX_CAPS).any(|cap| unsafe {
        libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) == 1
    });
    // SAFETY: PR_CAP_AMBIENT_IS_SET takes integers and only reads the ambient set.
    let ambient_left = (0..MAX_CAPS).any(|cap| unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
            libc::c_ulong::from(cap),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) == 1
    });
    match (bounding_left, ambient_left) {
        (false, false) => Ok(()),
        (true, _) => Err(PrivilegeError::Remaining("bounding".into())),
        (_, true) => Err(PrivilegeError::Remaining("ambient".into())),
    }
}

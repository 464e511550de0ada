//! Landlock ABI versions, once for both layers: what each ABI adds, the ABI whose rights both
//! layers ask for, what the running kernel has, and the line a layer logs about what it
//! enforces ("<layer> ABI 7 enforced (kernel ABI 7): ...").

use landlock::{LandlockStatus, RestrictionStatus, RulesetStatus, ABI};

/// One Landlock ABI and what it adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiVersion {
    /// The landlock crate's name for it.
    pub abi: ABI,
    /// The kernel's number for it.
    pub number: i32,
    /// The first Linux release with it.
    pub linux: &'static str,
    /// What it adds.
    pub adds: &'static str,
    /// What a layer that handles every right up to this ABI denies by it, as the log line
    /// says it (None: nothing worth a phrase of its own).
    pub enforces: Option<&'static str>,
}

/// Every ABI the landlock crate knows, oldest first.
pub const ABI_VERSIONS: [AbiVersion; 10] = [
    version(ABI::V1, 1, "5.13", "filesystem access rights", None),
    version(
        ABI::V2,
        2,
        "5.19",
        "renaming and linking across directories (Refer)",
        None,
    ),
    version(ABI::V3, 3, "6.2", "file truncation (Truncate)", None),
    version(
        ABI::V4,
        4,
        "6.7",
        "TCP bind and connect (AccessNet)",
        Some("TCP bind and connect denied"),
    ),
    version(
        ABI::V5,
        5,
        "6.10",
        "ioctl on device files (IoctlDev)",
        Some("device ioctls only on /dev/kvm and /dev/net/tun"),
    ),
    version(
        ABI::V6,
        6,
        "6.12",
        "abstract Unix socket and signal scoping (Scope)",
        Some("abstract Unix sockets and signals scoped"),
    ),
    version(ABI::V7, 7, "6.15", "audit logging controls", None),
    version(
        ABI::V8,
        8,
        "7.0",
        "restricting every thread at once (AllThreads)",
        None,
    ),
    version(
        ABI::V9,
        9,
        "7.1",
        "connecting to pathname Unix sockets (ResolveUnix)",
        None,
    ),
    version(ABI::V10, 10, "7.2", "quiet rules (no audit record)", None),
];

const fn version(
    abi: ABI,
    number: i32,
    linux: &'static str,
    adds: &'static str,
    enforces: Option<&'static str>,
) -> AbiVersion {
    AbiVersion {
        abi,
        number,
        linux,
        adds,
        enforces,
    }
}

/// The newest ABI whose rights both layers ask for. Newer ABIs add nothing either layer
/// uses yet: ABI 8 restricts every thread at once (both restrict the calling thread before
/// it starts others), ABI 9 pathname Unix sockets, ABI 10 quiet rules.
pub const TARGET_ABI: ABI = ABI::V7;

/// The kernel's number for `abi` (0 for `Unsupported`).
pub fn abi_number(abi: ABI) -> i32 {
    ABI_VERSIONS
        .iter()
        .find(|v| v.abi == abi)
        .map_or(0, |v| v.number)
}

/// The Landlock ABI of the running kernel (0: none, or disabled at boot).
pub fn kernel_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, size 0 and the VERSION flag, landlock_create_ruleset only
    // returns the ABI version (or -1 and errno): it reads no memory and creates no fd.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    version.clamp(0, i32::MAX.into()) as i32
}

/// The best ABI both the running kernel and the landlock crate support, for reports only
/// (a ruleset asks for `TARGET_ABI`'s rights and the crate drops what the kernel lacks).
pub fn best_abi() -> ABI {
    ABI::from(kernel_abi())
}

/// What a `restrict_self` achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Landlock is built in but disabled at boot.
    NotEnabled,
    /// The kernel has no Landlock.
    NotImplemented,
    /// The kernel enforces none of the rights asked for.
    NotEnforced,
    /// Enforced at ABI `abi` (`TARGET_ABI`, or less on an older kernel) on a kernel of ABI
    /// `kernel`.
    Enforced {
        /// The ABI whose rights are enforced.
        abi: i32,
        /// The running kernel's ABI.
        kernel: i32,
    },
}

impl Enforcement {
    /// What `restrict_self` reported.
    pub fn of(status: &RestrictionStatus) -> Self {
        Self::new(&status.ruleset, status.landlock)
    }

    /// From the two parts of the status.
    pub fn new(ruleset: &RulesetStatus, landlock: LandlockStatus) -> Self {
        match landlock {
            LandlockStatus::NotEnabled => Self::NotEnabled,
            LandlockStatus::NotImplemented => Self::NotImplemented,
            LandlockStatus::Available { .. } if *ruleset == RulesetStatus::NotEnforced => {
                Self::NotEnforced
            }
            // `effective_abi` is the kernel's, capped by what the crate knows; `kernel_abi`
            // is set only when the kernel is newer than the crate.
            LandlockStatus::Available {
                effective_abi,
                kernel_abi,
            } => Self::Enforced {
                abi: abi_number(effective_abi.min(TARGET_ABI)),
                kernel: kernel_abi.unwrap_or(abi_number(effective_abi)),
            },
        }
    }

    /// The line `layer` logs: "<layer> ABI 7 enforced (kernel ABI 7): <files>, <what each
    /// enforced ABI denies>", or a warning that nothing is enforced and why.
    pub fn line(&self, layer: &str, files: &str) -> String {
        match *self {
            Self::NotEnabled => {
                format!("warning: Landlock is not enabled on this kernel: {layer} not enforced")
            }
            Self::NotImplemented => {
                format!("warning: this kernel has no Landlock: {layer} not enforced")
            }
            Self::NotEnforced => format!("warning: {layer} ruleset not enforced"),
            Self::Enforced { abi, kernel } => {
                let what: Vec<&str> = std::iter::once(files)
                    .chain(
                        ABI_VERSIONS
                            .iter()
                            .filter(|v| v.number <= abi)
                            .filter_map(|v| v.enforces),
                    )
                    .collect();
                format!(
                    "{layer} ABI {abi} enforced (kernel ABI {kernel}): {}",
                    what.join(", ")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn available(effective_abi: ABI, kernel_abi: Option<i32>) -> LandlockStatus {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        }
    }

    #[test]
    fn every_known_abi_has_its_number_in_order() {
        for (i, v) in ABI_VERSIONS.iter().enumerate() {
            assert_eq!(v.number, i as i32 + 1, "{v:?}");
            assert_eq!(abi_number(v.abi), v.number, "{v:?}");
            assert_eq!(ABI::from(v.number), v.abi, "{v:?}");
            assert!(!v.adds.is_empty() && !v.linux.is_empty(), "{v:?}");
        }
        assert_eq!(abi_number(ABI::Unsupported), 0);
    }

    /// A landlock crate that knows a newer ABI fails here until the table names it.
    #[test]
    fn the_table_ends_at_the_newest_abi_the_crate_knows() {
        let newest = ABI::from(i32::MAX);
        assert_eq!(ABI_VERSIONS[ABI_VERSIONS.len() - 1].abi, newest);
    }

    #[test]
    fn the_kernel_abi_is_the_kernels_not_the_targets() {
        // An ABI 7 kernel: the drift printed "kernel ABI 6" here.
        let seven = Enforcement::new(&RulesetStatus::FullyEnforced, available(ABI::V7, None));
        assert_eq!(seven, Enforcement::Enforced { abi: 7, kernel: 7 });
        assert_eq!(
            seven.line("VMM Landlock", "files: 2 configured"),
            "VMM Landlock ABI 7 enforced (kernel ABI 7): files: 2 configured, TCP bind and \
             connect denied, device ioctls only on /dev/kvm and /dev/net/tun, abstract Unix \
             sockets and signals scoped"
        );
        // A newer kernel: the target is enforced, the kernel's own number is reported.
        let nine = Enforcement::new(&RulesetStatus::FullyEnforced, available(ABI::V9, None));
        assert!(nine
            .line("Landlock", "f")
            .starts_with("Landlock ABI 7 enforced (kernel ABI 9): f, TCP"));
        // A kernel newer than the crate.
        let twelve = Enforcement::new(&RulesetStatus::FullyEnforced, available(ABI::V10, Some(12)));
        assert_eq!(twelve, Enforcement::Enforced { abi: 7, kernel: 12 });
    }

    #[test]
    fn an_older_kernel_enforces_and_reports_less() {
        let three = Enforcement::new(&RulesetStatus::PartiallyEnforced, available(ABI::V3, None));
        assert_eq!(
            three.line("Landlock", "files only inside the jail"),
            "Landlock ABI 3 enforced (kernel ABI 3): files only inside the jail"
        );
        let five = Enforcement::new(&RulesetStatus::PartiallyEnforced, available(ABI::V5, None));
        let line = five.line("Landlock", "f");
        assert!(line.contains("TCP") && line.contains("ioctls"), "{line}");
        assert!(!line.contains("scoped"), "{line}");
    }

    #[test]
    fn nothing_enforced_is_a_warning_that_says_why() {
        let cases = [
            (LandlockStatus::NotEnabled, "not enabled"),
            (LandlockStatus::NotImplemented, "no Landlock"),
            (available(ABI::V1, None), "ruleset not enforced"),
        ];
        for (status, why) in cases {
            let line =
                Enforcement::new(&RulesetStatus::NotEnforced, status).line("VMM Landlock", "f");
            assert!(line.starts_with("warning: "), "{line}");
            assert!(
                line.contains(why) && line.contains("VMM Landlock"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_best_abi_is_the_running_kernels_within_the_crates() {
        let kernel = kernel_abi();
        let best = abi_number(best_abi());
        assert!(best <= kernel && best <= ABI_VERSIONS.len() as i32);
        assert!(best == kernel || best == ABI_VERSIONS.len() as i32);
    }

    /// On this machine's kernel: a real restrict_self reports the kernel's own ABI.
    #[test]
    fn a_real_ruleset_reports_the_running_kernels_abi() {
        use landlock::{Access, AccessFs, Ruleset, RulesetAttr};
        let kernel = kernel_abi();
        let status = std::thread::spawn(|| {
            Ruleset::default()
                .handle_access(AccessFs::from_all(TARGET_ABI))
                .and_then(|r| r.create())
                .and_then(|r| r.restrict_self())
                .unwrap()
        })
        .join()
        .unwrap();
        match Enforcement::of(&status) {
            Enforcement::Enforced {
                abi,
                kernel: reported,
            } => {
                assert_eq!(reported, kernel);
                assert_eq!(abi, kernel.min(abi_number(TARGET_ABI)));
            }
            other => assert_eq!(kernel, 0, "{other:?}"),
        }
    }
}

//! `palisade-jailer`: confines one palisade VMM with namespaces, a pivot_root jail, cgroups,
//! rlimits, dropped privileges, Landlock and a seccomp layer, then execs it. Firecracker's
//! jailer command line. See README.md for the steps and what each one stops.

mod cgroups;
mod cli;
mod daemonize;
mod exec;
mod fds;
mod jail;
mod jail_dir;
mod landlock_layer;
mod mknod;
mod namespaces;
mod netns;
mod pivot;
mod privileges;
mod rlimits;
mod seccomp_layer;
mod spec;
mod staged;
mod supervisor;
mod validate;

use cgroups::JailCgroups;
use jail::{JailerError, Prepared};
use jail_dir::JailDir;
use palisade_sandbox::error_chain;
use supervisor::Split;

fn main() {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err((0, help)) => {
            print!("{help}");
            std::process::exit(0);
        }
        Err((code, message)) => {
            eprintln!("palisade-jailer: validate: {message}");
            std::process::exit(code);
        }
    };
    let code = start(cli).unwrap_or_else(|e| {
        eprintln!("palisade-jailer: {}", error_chain(&e));
        1
    });
    std::process::exit(code);
}

/// Runs every step; returns the exit status (the VMM's, when supervising it).
fn start(cli: cli::Cli) -> Result<i32, JailerError> {
    let spec = validate::validate(cli)?;
    fds::close_inherited_and_clear_env()?;
    let jail_dir = JailDir::prepare(&spec)?;
    let undo = |cgroups: Option<&JailCgroups>| {
        if let Some(c) = cgroups {
            c.remove();
        }
        jail_dir.remove();
    };
    let cgroups = JailCgroups::create(&spec.cgroups, &spec.id).inspect_err(|_| undo(None))?;
    let dev_null = match spec.daemonize {
        true => Some(daemonize::open_dev_null().inspect_err(|_| undo(Some(&cgroups)))?),
        false => None,
    };
    let mut supervisor = match supervisor::split(spec.new_pid_ns) {
        Ok(Split::Supervisor(s)) => s,
        Ok(Split::Jailee(status)) => {
            let prepared = Prepared {
                spec: &spec,
                jail_dir: &jail_dir,
                cgroups: &cgroups,
                dev_null: dev_null.as_ref(),
            };
            let e = jail::confine_and_exec(&prepared, &status);
            status.fail(&format!("palisade-jailer: {}", error_chain(&e)));
        }
        Err(e) => {
            undo(Some(&cgroups));
            return Err(e.into());
        }
    };
    if let Err(e) = jail_dir.write_pid(supervisor.child().as_raw()) {
        supervisor.kill();
        undo(Some(&cgroups));
        return Err(e.into());
    }
    if let Some(line) = supervisor.wait_for_exec() {
        undo(Some(&cgroups));
        eprintln!("{line}");
        return Ok(1);
    }
    if spec.daemonize {
        return Ok(0);
    }
    let status = supervisor.supervise();
    cgroups.remove();
    Ok(status)
}

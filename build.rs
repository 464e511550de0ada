//! Compiles seccomp-profiles/<arch>.json to BPF with seccompiler and embeds the programs.

use std::fmt::Write as _;
use std::path::PathBuf;

const PROFILE: &str = "seccomp-profiles/x86_64.json";

fn main() {
    println!("cargo:rerun-if-changed={PROFILE}");
    println!("cargo:rerun-if-changed=build.rs");
    let json =
        std::fs::File::open(PROFILE).unwrap_or_else(|e| panic!("cannot open {PROFILE}: {e}"));
    let filters = seccompiler::compile_from_json(json, seccompiler::TargetArch::x86_64)
        .unwrap_or_else(|e| panic!("{PROFILE} does not compile: {e}"));
    let mut names: Vec<_> = filters.keys().cloned().collect();
    names.sort();
    let mut out = String::from(
        "/// One BPF instruction: (code, jt, jf, k).\ntype Insn = (u16, u8, u8, u32);\n\
         /// BPF programs compiled from seccomp-profiles/x86_64.json, by thread kind.\n\
         pub const EMBEDDED_FILTERS: &[(&str, &[Insn])] = &[\n",
    );
    for name in names {
        let _ = write!(out, "    ({name:?}, &[");
        for insn in &filters[&name] {
            let _ = write!(
                out,
                "({}, {}, {}, {}),",
                insn.code, insn.jt, insn.jf, insn.k
            );
        }
        out.push_str("]),\n");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("seccomp_filters.rs");
    std::fs::write(dest, out).expect("write the compiled filters");
}

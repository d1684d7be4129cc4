// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Every generated header compiles on its own with gcc (C11, pedantic),
//! g++ (C++17) and gcc -m32; the uAPI header also under C90. A C program
//! built against each kernel's headers prints `sizeof`/`offsetof` of every
//! struct and the bytes of every bitfield struct written through C; the
//! numbers must equal what rustc computed for the generated Rust types and
//! what the spec's layout engine computed.
//!
//! The i386 compiles need no 32-bit system headers (no gcc-multilib): see
//! [`I386Sysroot`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use luo_spec::generate::load_checked;
use luo_spec::layout::Target;
use luo_spec::model::{Origin, Scope};
use luo_spec::render::rust::probe_value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every include directory: the default kernel's and each other kernel's.
fn include_dirs() -> Vec<(String, PathBuf)> {
    let (spec, _, diags) = load_checked(&root().join("spec"));
    assert!(
        !diags.has_errors(),
        "{}",
        diags.render(&spec.sources, luo_spec::diag::Severity::Error)
    );
    spec.kernels
        .iter()
        .map(|k| {
            let dir = if k.default {
                root().join("generated/include")
            } else {
                root()
                    .join("generated/kernels")
                    .join(&k.name)
                    .join("include")
            };
            (k.name.clone(), dir)
        })
        .collect()
}

fn headers(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("include dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if p.extension().is_some_and(|x| x == "h") {
                out.push(
                    p.strip_prefix(base)
                        .expect("under base")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// What `gcc -m32` needs to compile the generated headers, without the
/// system's 32-bit headers.
///
/// The x86 uAPI headers are one set for i386, x86_64 and x32: `asm/types.h`
/// is `asm-generic/int-ll64.h` on all three, and `asm/bitsperlong.h` and
/// `asm/posix_types.h` choose by `__x86_64__`, `__ILP32__` and `__i386__`. So
/// the directories a stock amd64 machine's gcc finds `linux/`, `asm/` and
/// `asm-generic/` in serve `-m32` as well; what is missing there without
/// gcc-multilib is only a directory that puts `asm/` on the 32-bit search
/// path. The test assembles that sysroot at run time from links to the
/// machine's own headers and compiles with `-nostdinc`, so gcc searches only
/// the sysroot and its own freestanding headers (`stddef.h`, `stdbool.h`).
/// Libc headers are not reachable this way, which the generated headers do not
/// need: they must compile freestanding.
struct I386Sysroot {
    /// gcc's own headers (`gcc -m32 -print-file-name=include`).
    gcc_include: PathBuf,
    /// The assembled `include/` directory: links `linux`, `asm`, `asm-generic`.
    include: PathBuf,
}

impl I386Sysroot {
    /// The sysroot, assembled once per test process.
    fn get() -> &'static I386Sysroot {
        static SYSROOT: OnceLock<I386Sysroot> = OnceLock::new();
        SYSROOT.get_or_init(|| {
            let out = Command::new("gcc")
                .args(["-m32", "-print-file-name=include"])
                .output()
                .expect("run gcc");
            let gcc_include = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            assert!(
                gcc_include.join("stddef.h").is_file(),
                "gcc's own include directory {} has no stddef.h",
                gcc_include.display()
            );
            let native = search_dirs(&native_verbose_compile());
            let include = assemble(
                "i386-sysroot",
                &native,
                &[
                    ("linux", "types.h"),
                    ("asm", "types.h"),
                    ("asm-generic", "int-ll64.h"),
                ],
            );
            I386Sysroot {
                gcc_include,
                include,
            }
        })
    }

    /// The flags of an i386 compile against `include` (the sysroot, or another
    /// directory to show what the compile depends on).
    fn flags(&self, include: &Path) -> Vec<String> {
        vec![
            "-m32".into(),
            "-nostdinc".into(),
            "-isystem".into(),
            self.gcc_include.display().to_string(),
            "-isystem".into(),
            include.display().to_string(),
        ]
    }
}

/// `CARGO_TARGET_TMPDIR/<name>/include` holding a link per `(dir, probe)` to
/// the first directory `dir` of `search` that has the file `probe`.
fn assemble(name: &str, search: &[PathBuf], dirs: &[(&str, &str)]) -> PathBuf {
    let include = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(name)
        .join("include");
    std::fs::create_dir_all(&include).expect("create the sysroot");
    for (dir, probe) in dirs {
        let from = search
            .iter()
            .map(|d| d.join(dir))
            .find(|d| d.join(probe).is_file())
            .unwrap_or_else(|| {
                panic!(
                    "the native gcc finds no {dir}/{probe} in {search:?}: install the \
                     kernel's uAPI headers (Debian: linux-libc-dev, a dependency of libc6-dev)"
                )
            });
        // Another test process may assemble the same sysroot: replace each link
        // atomically by renaming a new one over it.
        let tmp = include.join(format!(".{dir}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&from, &tmp).expect("link into the sysroot");
        std::fs::rename(&tmp, include.join(dir)).expect("link into the sysroot");
    }
    include
}

/// The stderr of `gcc -v -E` on an empty C file: the native search list.
fn native_verbose_compile() -> String {
    let out = Command::new("gcc")
        .args(["-v", "-E", "-x", "c", "/dev/null", "-o", "/dev/null"])
        .output()
        .expect("run gcc");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `#include <...>` search list of a `gcc -v` run.
fn search_dirs(verbose: &str) -> Vec<PathBuf> {
    verbose
        .lines()
        .skip_while(|l| !l.starts_with("#include <...> search starts here:"))
        .skip(1)
        .take_while(|l| !l.starts_with("End of search list."))
        .map(|l| PathBuf::from(l.trim()))
        .collect()
}

fn compile<S: AsRef<std::ffi::OsStr>>(
    compiler: &str,
    args: &[S],
    lang: &str,
    include: &Path,
    source: &str,
) -> Result<(), String> {
    compile_output(compiler, args, lang, include, source).and_then(|out| {
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
}

fn compile_output<S: AsRef<std::ffi::OsStr>>(
    compiler: &str,
    args: &[S],
    lang: &str,
    include: &Path,
    source: &str,
) -> Result<std::process::Output, String> {
    // Tests run in parallel threads of one process: every compile gets its own file.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("luo-hdr-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let src = dir.join(if lang == "c++" { "t.cc" } else { "t.c" });
    std::fs::write(&src, source).map_err(|e| e.to_string())?;
    let out = Command::new(compiler)
        .args(args)
        .arg("-fsyntax-only")
        .arg("-x")
        .arg(lang)
        .arg("-I")
        .arg(include)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run {compiler}: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The i386 compile searches the sysroot and gcc's own headers and nothing
/// else, and every header it opens comes from there: it does not depend on
/// gcc-multilib even on a machine that has it.
#[test]
fn i386_compile_searches_only_the_test_sysroot() {
    let sysroot = I386Sysroot::get();
    let (_, dir) = include_dirs().into_iter().next().expect("a kernel");
    let mut args = sysroot.flags(&sysroot.include);
    args.extend(["-v".into(), "-H".into()]);
    let src = "#include <uapi/linux/liveupdate.h>\n#include <linux/kho/abi/memfd.h>\n";
    let out = compile_output("gcc", &args, "c", &dir, src).expect("gcc");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        search_dirs(&err),
        [
            dir.clone(),
            sysroot.gcc_include.clone(),
            sysroot.include.clone()
        ],
        "{err}"
    );
    // `-H` prints each header opened, one dot per nesting level, with the
    // sysroot's links resolved.
    let opened: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix('.'))
        .map(|l| l.trim_start_matches('.').trim())
        .collect();
    let real = |p: PathBuf| p.canonicalize().expect("sysroot link resolves");
    let allowed = [
        real(dir.clone()),
        real(sysroot.gcc_include.clone()),
        real(sysroot.include.join("linux")),
        real(sysroot.include.join("asm")),
        real(sysroot.include.join("asm-generic")),
    ];
    for h in &opened {
        let h = real(PathBuf::from(h));
        assert!(
            allowed.iter().any(|a| h.starts_with(a)),
            "{} is outside the i386 sysroot:\n{err}",
            h.display()
        );
    }
    let asm_types = real(sysroot.include.join("asm/types.h"));
    assert!(
        opened.iter().any(|h| real(PathBuf::from(h)) == asm_types),
        "asm/types.h not read through the sysroot:\n{err}"
    );
}

/// The other half of the proof: against a sysroot without `asm/` the same
/// compile fails on a missing `asm/` header, so nothing on the system's search
/// path (such as gcc-multilib's `/usr/include/asm`) is used in its place.
#[test]
fn i386_compile_fails_against_a_sysroot_without_asm() {
    let sysroot = I386Sysroot::get();
    let (_, dir) = include_dirs().into_iter().next().expect("a kernel");
    let without_asm = assemble(
        "i386-sysroot-without-asm",
        &search_dirs(&native_verbose_compile()),
        &[("linux", "types.h"), ("asm-generic", "int-ll64.h")],
    );
    let err = compile(
        "gcc",
        &sysroot.flags(&without_asm),
        "c",
        &dir,
        "#include <uapi/linux/liveupdate.h>\n",
    )
    .expect_err("compiles without any asm headers");
    assert!(
        err.contains("asm/") && err.contains("No such file or directory"),
        "{err}"
    );
}

#[test]
fn every_header_compiles_alone() {
    let i386 = I386Sysroot::get();
    let strs = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let modes: [(&str, Vec<String>, &str); 3] = [
        (
            "gcc",
            strs(&["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"]),
            "c",
        ),
        ("g++", strs(&["-std=c++17", "-Wall", "-Werror"]), "c++"),
        (
            "gcc",
            [
                i386.flags(&i386.include),
                strs(&["-std=c11", "-Wall", "-Werror"]),
            ]
            .concat(),
            "c",
        ),
    ];
    let mut failures = Vec::new();
    let mut count = 0;
    // g++ is not part of a machine with only Rust and gcc: without it the C++
    // compiles are skipped with a note rather than failed.
    let have_cxx = Command::new("g++").arg("--version").output().is_ok();
    if !have_cxx {
        eprintln!("note: g++ is not installed; the C++17 compiles are skipped");
    }
    for (kernel, dir) in include_dirs() {
        let hs = headers(&dir);
        assert!(
            hs.len() >= 5,
            "kernel {kernel}: only {} headers in {}",
            hs.len(),
            dir.display()
        );
        for h in hs {
            for (cc, args, lang) in &modes {
                if *cc == "g++" && !have_cxx {
                    continue;
                }
                count += 1;
                if let Err(e) = compile(cc, args, lang, &dir, &format!("#include <{h}>\n")) {
                    failures.push(format!("{kernel}: {h} with {cc} {}:\n{e}", args.join(" ")));
                }
            }
        }
        // The uAPI header must not break a C90 include.
        if let Err(e) = compile(
            "gcc",
            &["-std=c90", "-Wall", "-Werror"],
            "c",
            &dir,
            "#include <uapi/linux/liveupdate.h>\n",
        ) {
            failures.push(format!("{kernel}: uapi header under -std=c90:\n{e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} compiles failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_false_assertion_fails_the_compile() {
    // The header assertions are live: a wrong size must stop the build.
    let (_, dir) = include_dirs().into_iter().next().expect("a kernel");
    let bad = "#include <uapi/linux/liveupdate.h>\n_Static_assert(sizeof(struct liveupdate_session_finish) == 9, \"size\");\n";
    assert!(compile("gcc", &["-std=c11"], "c", &dir, bad).is_err());
}

/// The C program for one kernel: prints sizes, offsets and bitfield bytes.
fn probe_program(kernel: &str) -> (String, BTreeMap<String, u64>) {
    let (spec, layouts, _) = load_checked(&root().join("spec"));
    let k = spec
        .kernels
        .iter()
        .find(|k| k.name == kernel)
        .expect("kernel");
    let mut src = String::from("#include <stdio.h>\n#include <stddef.h>\n#include <string.h>\n");
    let mut body = String::new();
    let mut model_sizes = BTreeMap::new();
    for (ci, comp) in spec.components.iter().enumerate() {
        let Some(ver) = spec.rendered_version(k, comp) else {
            continue;
        };
        let _ = writeln!(src, "#include <{}>", comp.header);
        if let Some((ext, _, _)) = &comp.ext_header {
            let _ = writeln!(src, "#include <{ext}>");
        }
        for items in [Some(&comp.common), ver.map(|v| &comp.versions[v].items)]
            .into_iter()
            .flatten()
        {
            let owner = if std::ptr::eq(items, &comp.common) {
                comp.name.clone()
            } else {
                format!("{}::{}", comp.name, comp.versions[ver.unwrap_or(0)].id)
            };
            let scope = Scope {
                spec: &spec,
                origin: Origin { comp: ci, ver },
            };
            // A struct the kernel's upstream API lacks is not in its headers.
            for s in items
                .structs
                .iter()
                .filter(|s| !s.place.not_in.contains(&k.name))
            {
                let path = format!("{owner}::{}", s.name);
                let l = layouts
                    .layout(scope, &s.name, Target::PRIMARY)
                    .expect("layout");
                model_sizes.insert(path.clone(), l.size);
                let _ = writeln!(
                    body,
                    "\tprintf(\"S {path} %zu\\n\", sizeof(struct {}));",
                    s.name
                );
                for f in l.fields.iter().filter(|f| f.bits.is_none()) {
                    let _ = writeln!(
                        body,
                        "\tprintf(\"F {path} {} %zu\\n\", offsetof(struct {}, {}));",
                        f.name, s.name, f.name
                    );
                }
                if l.fields.iter().any(|f| f.bits.is_some()) {
                    let _ = writeln!(
                        body,
                        "\t{{\n\t\tstruct {} v;\n\t\tunsigned char *p = (unsigned char *)&v;\n\t\tsize_t i;\n\t\tmemset(&v, 0, sizeof(v));",
                        s.name
                    );
                    for f in l.fields.iter().filter_map(|f| f.bits.map(|(_, w)| (f, w))) {
                        let _ = writeln!(body, "\t\tv.{} = {:#x}ULL;", f.0.name, probe_value(f.1));
                    }
                    let _ = writeln!(
                        body,
                        "\t\tprintf(\"B {path} \");\n\t\tfor (i = 0; i < sizeof(v); i++)\n\t\t\tprintf(\"%02x\", p[i]);\n\t\tprintf(\"\\n\");\n\t}}"
                    );
                }
            }
        }
    }
    let _ = write!(src, "\nint main(void)\n{{\n{body}\treturn 0;\n}}\n");
    (src, model_sizes)
}

fn run_probe(kernel: &str, include: &Path, src: &str) -> String {
    let dir = std::env::temp_dir().join(format!("luo-probe-{}-{kernel}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let c = dir.join("probe.c");
    let exe = dir.join("probe");
    std::fs::write(&c, src).expect("write");
    let out = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Werror", "-O0", "-I"])
        .arg(include)
        .arg(&c)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("gcc");
    assert!(
        out.status.success(),
        "probe for {kernel} does not compile:\n{}\n{src}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().expect("run probe");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn c_layouts_equal_rust_layouts_for_every_kernel() {
    let rust: BTreeMap<&str, &luo_generated::layouts::StructInfo> = luo_generated::layouts::STRUCTS
        .iter()
        .map(|s| (s.path, s))
        .collect();
    let mut checked_structs = 0;
    let mut checked_bitfields = 0;
    for (kernel, include) in include_dirs() {
        let (src, model) = probe_program(&kernel);
        let output = run_probe(&kernel, &include, &src);
        for line in output.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["S", path, size] => {
                    let size: usize = size.parse().expect("size");
                    let r = rust
                        .get(path)
                        .unwrap_or_else(|| panic!("{path}: no generated Rust type"));
                    assert_eq!(
                        size, r.size,
                        "{kernel}: sizeof(struct {path}) C {size} != Rust {}",
                        r.size
                    );
                    assert_eq!(
                        size as u64, model[*path],
                        "{kernel}: {path}: C size differs from the layout engine"
                    );
                    checked_structs += 1;
                }
                ["F", path, field, off] => {
                    let off: usize = off.parse().expect("offset");
                    let r = rust[path]
                        .fields
                        .iter()
                        .find(|(n, _)| n == field)
                        .unwrap_or_else(|| panic!("{path}.{field} missing in Rust"));
                    assert_eq!(
                        off, r.1,
                        "{kernel}: offsetof({path}, {field}) C {off} != Rust {}",
                        r.1
                    );
                }
                ["B", path, hex] => {
                    let probe = luo_generated::layouts::BITFIELD_PROBES
                        .iter()
                        .find(|(p, _)| p == path)
                        .unwrap_or_else(|| panic!("no Rust probe for {path}"));
                    let mut buf = [0u8; 256];
                    let n = (probe.1)(&mut buf);
                    let rust_hex: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
                    assert_eq!(
                        *hex, rust_hex,
                        "{kernel}: bitfield bytes of {path} differ between C and Rust"
                    );
                    checked_bitfields += 1;
                }
                _ => panic!("unexpected probe output `{line}`"),
            }
        }
    }
    assert!(
        checked_structs >= 40,
        "only {checked_structs} structs checked"
    );
    assert!(
        checked_bitfields >= 4,
        "only {checked_bitfields} bitfield structs checked"
    );
}

#[test]
fn khoser_pointers_read_as_upstream() {
    // Upstream C writes `vmalloc->first.phys` and `chunk->hdr.next.ptr`:
    // DECLARE_KHOSER_PTR renders a union over the same 8 bytes.
    let (_, dir) = include_dirs().into_iter().next().expect("a kernel");
    let src = "#include <linux/kho/abi/kexec_handover.h>\n\
               unsigned long long f(struct kho_vmalloc *v, struct kho_vmalloc_chunk *c)\n\
               { c->hdr.next.ptr = c; return v->first.phys + sizeof(v->first); }\n\
               _Static_assert(sizeof(((struct kho_vmalloc *)0)->first) == 8, \"8 bytes\");\n";
    compile(
        "gcc",
        &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"],
        "c",
        &dir,
        src,
    )
    .expect("upstream-style access compiles");
    let i386 = I386Sysroot::get();
    let mut args = i386.flags(&i386.include);
    args.extend(["-std=c11".into(), "-Wall".into(), "-Werror".into()]);
    compile("gcc", &args, "c", &dir, src).expect("and on i386");
}

/// Upstream's kernel/liveupdate/kexec_handover.c hands `leaf->bitmap` of `struct
/// kho_radix_leaf` to `__set_bit()`, whose argument is `unsigned long *`: the member must be
/// upstream's `DECLARE_BITMAP` (a `u64` array makes the kernel build fail with
/// -Werror=incompatible-pointer-types), and still one page on every target.
#[test]
fn radix_leaf_bitmap_is_unsigned_long_words() {
    let dir = root().join("generated/include");
    let src = "#include <linux/kho/abi/kexec_handover.h>\n\
               static void set(unsigned long nr, volatile unsigned long *addr)\n\
               { addr[nr / (8 * sizeof(long))] |= 1UL << (nr % (8 * sizeof(long))); }\n\
               void f(struct kho_radix_leaf *leaf) { set(3, leaf->bitmap); }\n\
               _Static_assert(sizeof(struct kho_radix_leaf) == PAGE_SIZE, \"a page\");\n";
    let i386 = I386Sysroot::get();
    for mut flags in [Vec::new(), i386.flags(&i386.include)] {
        flags.extend(["-std=c11", "-Wall", "-Werror=incompatible-pointer-types"].map(String::from));
        compile("gcc", &flags, "c", &dir, src).unwrap_or_else(|e| panic!("{flags:?}: {e}"));
    }
}

/// The generated `linux/kho/abi/luo.h` drops into the 7.2 tree: it defines upstream's test
/// FLB macro (lib/tests/liveupdate.c needs `LIVEUPDATE_TEST_FLB_COMPATIBLE(i)` under
/// `CONFIG_LIVEUPDATE_TEST`) and none of the macros upstream keeps in a .c file
/// (kernel/liveupdate/luo_flb.c defines `LUO_FLB_PGCNT` and `LUO_FLB_MAX`; a header
/// defining them makes the kernel build warn about a redefinition). Facts from the 7.2.13
/// source: the macro names and the string.
#[test]
fn luo_h_is_a_drop_in_for_the_7_2_tree() {
    let dir = root().join("generated/include");
    let src = r#"
#include <linux/kho/abi/luo.h>
#ifdef CONFIG_LIVEUPDATE_TEST
_Static_assert(sizeof(LIVEUPDATE_TEST_FLB_COMPATIBLE(2)) == sizeof("liveupdate-test-flb-v2"),
               "test FLB compatible");
#elif defined(LIVEUPDATE_TEST_FLB_COMPATIBLE)
#error "defined without CONFIG_LIVEUPDATE_TEST"
#endif
#if defined(LUO_FLB_MAX) || defined(LUO_FLB_PGCNT)
#error "upstream defines these in kernel/liveupdate/luo_flb.c"
#endif
#if defined(LUO_SESSIONS_PER_BLOCK) || defined(LUO_FILES_PER_BLOCK)
#error "not upstream macros"
#endif
/* What luo_flb.c defines must not clash. */
#define LUO_FLB_PGCNT 1ul
"#;
    let args = ["-std=c11", "-Wall", "-Werror", "-pedantic"];
    compile("gcc", &args, "c", &dir, src).expect("without CONFIG_LIVEUPDATE_TEST");
    let with: Vec<&str> = args
        .iter()
        .copied()
        .chain(["-DCONFIG_LIVEUPDATE_TEST"])
        .collect();
    compile("gcc", &with, "c", &dir, src).expect("with CONFIG_LIVEUPDATE_TEST");
}

/// Each kernel's `linux/liveupdate.h` declares that kernel's upstream API only: this
/// project's calls (file dependencies, handler global state, subsystems) are in
/// `linux/luo_ext.h`, and 6.19's header has no FLB API (6.19 has no luo_flb.c). Checked by
/// the compiler: a name the header does not declare can be declared again as a variable.
#[test]
fn per_kernel_api_headers_hold_that_kernels_api() {
    let ours = [
        "liveupdate_get_token_outgoing",
        "liveupdate_get_file_incoming",
        "liveupdate_fh_global_state_register",
        "liveupdate_fh_global_state_get",
        "liveupdate_fh_global_state_put",
        "liveupdate_register_subsystem",
        "liveupdate_unregister_subsystem",
    ];
    let flb = [
        "liveupdate_register_flb",
        "liveupdate_unregister_flb",
        "liveupdate_flb_get_incoming",
        "liveupdate_flb_put_incoming",
        "liveupdate_flb_get_outgoing",
    ];
    let args = ["-std=c11", "-Wall", "-Werror"];
    for (kernel, dir) in include_dirs() {
        let absent: Vec<&str> = ours
            .iter()
            .chain(if kernel == "6.19" { &flb[..] } else { &[][..] })
            .copied()
            .collect();
        let mut src = String::from("#include <linux/liveupdate.h>\n");
        for n in &absent {
            src.push_str(&format!("int {n};\n"));
        }
        src.push_str("#ifdef LIVEUPDATE_DEPENDS_MAX\n#error ours\n#endif\n");
        if kernel == "6.19" {
            src.push_str("struct liveupdate_flb { int not_upstream_in_6_19; };\n");
        } else {
            src.push_str("void *f = (void *)&liveupdate_register_flb;\n");
        }
        compile("gcc", &args, "c", &dir, &src).unwrap_or_else(|e| {
            panic!("{kernel}: linux/liveupdate.h declares more than its API:\n{e}")
        });
        // The extension header declares every one of ours, on top of the kernel's API.
        let mut ext = String::from(
            "#include <linux/luo_ext.h>\n_Static_assert(LIVEUPDATE_DEPENDS_MAX > 0, \"\");\n",
        );
        for (i, n) in ours.iter().enumerate() {
            ext.push_str(&format!("void *p{i} = (void *)&{n};\n"));
        }
        compile("gcc", &args, "c", &dir, &ext)
            .unwrap_or_else(|e| panic!("{kernel}: linux/luo_ext.h:\n{e}"));
        // And it says it is ours.
        let text = std::fs::read_to_string(dir.join("linux/luo_ext.h")).expect("luo_ext.h");
        assert!(
            text.contains("not upstream's") || text.contains("Not upstream's"),
            "{kernel}"
        );
    }
}

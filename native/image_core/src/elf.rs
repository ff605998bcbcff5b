//! ELF inspection: header facts (class, machine, endianness, platform) and the dynamic-linking
//! facts the closure resolver needs (`PT_INTERP`, `DT_NEEDED`, `DT_SONAME`, `DT_RPATH`,
//! `DT_RUNPATH`).
//!
//! Header facts are read by hand from the first 64 bytes (so candidates can be checked without
//! reading whole files); dynamic facts are parsed with `goblin`.

use std::io;
use std::path::{Path, PathBuf};

use crate::fs::{Fs, Kind};

/// The four magic bytes every ELF file starts with.
pub const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// `e_machine` value for Intel 80386.
pub const EM_386: u16 = 3;
/// `e_machine` value for MIPS.
pub const EM_MIPS: u16 = 8;
/// `e_machine` value for 64-bit PowerPC.
pub const EM_PPC64: u16 = 21;
/// `e_machine` value for IBM S/390.
pub const EM_S390: u16 = 22;
/// `e_machine` value for 32-bit ARM.
pub const EM_ARM: u16 = 40;
/// `e_machine` value for x86-64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` value for AArch64.
pub const EM_AARCH64: u16 = 183;
/// `e_machine` value for RISC-V.
pub const EM_RISCV: u16 = 243;
/// `e_machine` value for LoongArch.
pub const EM_LOONGARCH: u16 = 258;

/// ARM `e_flags` bit: the object uses the hard-float ABI.
const EF_ARM_ABI_FLOAT_HARD: u32 = 0x400;

/// `true` when `head` starts with the ELF magic bytes.
pub fn is_elf(head: &[u8]) -> bool {
    head.len() >= 4 && head[..4] == ELF_MAGIC
}

/// The identifying fields of an ELF header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// `true` for ELFCLASS64, `false` for ELFCLASS32.
    pub is_64: bool,
    /// `true` for ELFDATA2LSB.
    pub little_endian: bool,
    /// `e_machine`.
    pub machine: u16,
    /// `e_flags` (architecture specific; used to tell ARM hard-float from soft-float).
    pub flags: u32,
}

impl Header {
    /// Parse the header from the first bytes of a file (at least 52 bytes for ELF32, 64 for
    /// ELF64). `None` when the bytes are not a well-formed ELF header.
    pub fn parse(head: &[u8]) -> Option<Header> {
        if !is_elf(head) || head.len() < 20 {
            return None;
        }
        let is_64 = match head[4] {
            1 => false,
            2 => true,
            _ => return None,
        };
        let little_endian = match head[5] {
            1 => true,
            2 => false,
            _ => return None,
        };
        let u16_at = |off: usize| -> Option<u16> {
            let b: [u8; 2] = head.get(off..off + 2)?.try_into().ok()?;
            Some(if little_endian {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            })
        };
        let u32_at = |off: usize| -> Option<u32> {
            let b: [u8; 4] = head.get(off..off + 4)?.try_into().ok()?;
            Some(if little_endian {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            })
        };
        let machine = u16_at(18)?;
        let flags = u32_at(if is_64 { 48 } else { 36 })?;
        Some(Header {
            is_64,
            little_endian,
            machine,
            flags,
        })
    }

    /// `true` when an object with header `other` can be loaded into a process of this header
    /// (same class, byte order and machine), the check glibc's loader makes on candidates.
    pub fn compatible(&self, other: &Header) -> bool {
        self.is_64 == other.is_64
            && self.little_endian == other.little_endian
            && self.machine == other.machine
    }

    /// The OCI platform this header describes, when it is one docker_release knows.
    pub fn platform(&self) -> Option<Platform> {
        let (arch, variant) = match (self.machine, self.is_64, self.little_endian) {
            (EM_X86_64, true, true) => ("amd64", None),
            (EM_AARCH64, true, true) => ("arm64", Some("v8")),
            (EM_ARM, false, true) => ("arm", Some("v7")),
            (EM_386, false, true) => ("386", None),
            (EM_PPC64, true, true) => ("ppc64le", None),
            (EM_PPC64, true, false) => ("ppc64", None),
            (EM_S390, true, false) => ("s390x", None),
            (EM_RISCV, true, true) => ("riscv64", None),
            (EM_LOONGARCH, true, true) => ("loong64", None),
            (EM_MIPS, true, true) => ("mips64le", None),
            (EM_MIPS, true, false) => ("mips64", None),
            (EM_MIPS, false, true) => ("mipsle", None),
            (EM_MIPS, false, false) => ("mips", None),
            _ => return None,
        };
        Some(Platform {
            os: "linux".to_string(),
            architecture: arch.to_string(),
            variant: variant.map(str::to_string),
        })
    }

    /// The Debian multiarch triple of this header (`x86_64-linux-gnu`, `aarch64-linux-gnu`,
    /// `arm-linux-gnueabihf`, ...), used for glibc's default library directories.
    pub fn multiarch_triple(&self) -> Option<&'static str> {
        Some(match (self.machine, self.is_64, self.little_endian) {
            (EM_X86_64, true, true) => "x86_64-linux-gnu",
            (EM_X86_64, false, true) => "x86_64-linux-gnux32",
            (EM_AARCH64, true, true) => "aarch64-linux-gnu",
            (EM_ARM, false, true) if self.flags & EF_ARM_ABI_FLOAT_HARD != 0 => {
                "arm-linux-gnueabihf"
            }
            (EM_ARM, false, true) => "arm-linux-gnueabi",
            (EM_386, false, true) => "i386-linux-gnu",
            (EM_PPC64, true, true) => "powerpc64le-linux-gnu",
            (EM_PPC64, true, false) => "powerpc64-linux-gnu",
            (EM_S390, true, false) => "s390x-linux-gnu",
            (EM_RISCV, true, true) => "riscv64-linux-gnu",
            (EM_LOONGARCH, true, true) => "loongarch64-linux-gnu",
            (EM_MIPS, true, true) => "mips64el-linux-gnuabi64",
            (EM_MIPS, false, true) => "mipsel-linux-gnu",
            _ => return None,
        })
    }

    /// musl's `LDSO_ARCH` name for this header (`x86_64`, `aarch64`, `armhf`, `i386`, ...), as in
    /// `/lib/ld-musl-<arch>.so.1` and `/etc/ld-musl-<arch>.path`.
    pub fn musl_arch(&self) -> Option<&'static str> {
        Some(match (self.machine, self.is_64, self.little_endian) {
            (EM_X86_64, true, true) => "x86_64",
            (EM_AARCH64, true, true) => "aarch64",
            (EM_ARM, false, true) if self.flags & EF_ARM_ABI_FLOAT_HARD != 0 => "armhf",
            (EM_ARM, false, true) => "arm",
            (EM_386, false, true) => "i386",
            (EM_PPC64, true, true) => "powerpc64le",
            (EM_PPC64, true, false) => "powerpc64",
            (EM_S390, true, false) => "s390x",
            (EM_RISCV, true, true) => "riscv64",
            (EM_LOONGARCH, true, true) => "loongarch64",
            _ => return None,
        })
    }
}

/// An OCI image platform (`os`/`architecture`/`variant` of an image config or index entry).
///
/// Ordered by `os`, then `architecture`, then `variant`: the order of an image index's entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    /// Always `"linux"` for ELF files docker_release packs.
    pub os: String,
    /// GOARCH-style name: `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`, ...
    pub architecture: String,
    /// `"v8"` for arm64, `"v7"` for arm, otherwise `None`.
    pub variant: Option<String>,
}

/// The platform an ELF file (its first 64 bytes suffice) was built for; `None` when the bytes
/// are not ELF or the machine is unknown.
pub fn platform_of(bytes: &[u8]) -> Option<Platform> {
    Header::parse(bytes)?.platform()
}

/// The dynamic-linking facts of one ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// Class, byte order and machine.
    pub header: Header,
    /// `PT_INTERP`: the program interpreter (dynamic loader) path, if any.
    pub interpreter: Option<String>,
    /// `DT_SONAME`, if any.
    pub soname: Option<String>,
    /// `DT_NEEDED` entries, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` directories (split on `:`, tokens such as `$ORIGIN` unexpanded).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` directories (split on `:`, tokens unexpanded), or `None` when the object
    /// has no `DT_RUNPATH` (an empty `DT_RUNPATH` is `Some(vec![])`: it still disables
    /// `DT_RPATH`).
    pub runpath: Option<Vec<String>>,
}

impl ElfInfo {
    /// Parse a whole ELF file.
    pub fn parse(bytes: &[u8]) -> Result<ElfInfo, String> {
        let header = Header::parse(bytes).ok_or_else(|| "not an ELF file".to_string())?;
        let elf = goblin::elf::Elf::parse(bytes).map_err(|e| e.to_string())?;
        let split = |v: &[&str]| -> Vec<String> {
            v.iter()
                .flat_map(|s| s.split(':'))
                .map(str::to_string)
                .collect()
        };
        Ok(ElfInfo {
            header,
            interpreter: elf.interpreter.map(str::to_string),
            soname: elf.soname.map(str::to_string),
            needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
            rpath: split(&elf.rpaths),
            runpath: if elf.runpaths.is_empty() {
                None
            } else {
                Some(split(&elf.runpaths))
            },
        })
    }
}

/// Every regular file under `dir` (recursively, never following symlinks) whose first four
/// bytes are the ELF magic, sorted.
pub fn find_elf_files(fs: &dyn Fs, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for name in fs.read_dir(&d)? {
            let p = d.join(name);
            match fs.lstat(&p)?.kind {
                Kind::Dir => stack.push(p),
                Kind::File => {
                    if is_elf(&fs.read_head(&p, 4)?) {
                        out.push(p);
                    }
                }
                Kind::Symlink | Kind::Other => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::HostFs;

    fn fake_header(is_64: bool, le: bool, machine: u16, flags: u32) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&ELF_MAGIC);
        h[4] = if is_64 { 2 } else { 1 };
        h[5] = if le { 1 } else { 2 };
        h[6] = 1;
        let m = if le {
            machine.to_le_bytes()
        } else {
            machine.to_be_bytes()
        };
        h[18..20].copy_from_slice(&m);
        let off = if is_64 { 48 } else { 36 };
        let f = if le {
            flags.to_le_bytes()
        } else {
            flags.to_be_bytes()
        };
        h[off..off + 4].copy_from_slice(&f);
        h
    }

    #[test]
    fn platforms() {
        let p = platform_of(&fake_header(true, true, EM_X86_64, 0)).unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "amd64"));
        assert_eq!(p.variant, None);
        let p = platform_of(&fake_header(true, true, EM_AARCH64, 0)).unwrap();
        assert_eq!(
            (p.architecture.as_str(), p.variant.as_deref()),
            ("arm64", Some("v8"))
        );
        let h = fake_header(false, true, EM_ARM, 0x400);
        let p = platform_of(&h).unwrap();
        assert_eq!(
            (p.architecture.as_str(), p.variant.as_deref()),
            ("arm", Some("v7"))
        );
        assert_eq!(
            Header::parse(&h).unwrap().multiarch_triple(),
            Some("arm-linux-gnueabihf")
        );
        let p = platform_of(&fake_header(true, false, EM_S390, 0)).unwrap();
        assert_eq!(p.architecture, "s390x");
        assert_eq!(
            platform_of(&fake_header(false, true, EM_386, 0))
                .unwrap()
                .architecture,
            "386"
        );
        assert!(platform_of(b"#!/bin/sh\n").is_none());
        assert!(!is_elf(b"\x7fEL"));
    }

    #[test]
    fn parses_this_test_binary_and_finds_elf_files() {
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let info = ElfInfo::parse(&bytes).unwrap();
        assert!(info.needed.iter().any(|n| n.starts_with("libc.so")));
        if cfg!(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu"
        )) {
            assert_eq!(
                info.interpreter.as_deref(),
                Some("/lib64/ld-linux-x86-64.so.2")
            );
            assert_eq!(platform_of(&bytes).unwrap().architecture, "amd64");
        }

        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::fs::write(tmp.path().join("a/b/x"), &bytes[..100]).unwrap();
        std::fs::write(tmp.path().join("a/y"), b"#!/bin/sh\n").unwrap();
        std::fs::write(tmp.path().join("z"), &bytes[..4]).unwrap();
        std::os::unix::fs::symlink("a/b/x", tmp.path().join("link")).unwrap();
        let fs = HostFs::new(tmp.path());
        let found = find_elf_files(&fs, Path::new("/")).unwrap();
        assert_eq!(
            found,
            vec![PathBuf::from("/a/b/x"), PathBuf::from("/z")],
            "symlinks and non-ELF files are skipped"
        );
    }
}

//! Opening, as root, a name in a directory the tenant can write (the jail's root and the
//! directories below it): never following a symbolic link, never blocking on a FIFO and never
//! writing through a hard link into a file elsewhere on the host.
//!
//! Every open is `openat` relative to a directory descriptor that was itself opened without
//! following links, with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`; the opened descriptor is then
//! checked with fstat. Only a regular file with exactly one link is accepted.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StagedError {
    #[error("Refused {0}: it is {1}; only a regular file with one link is accepted")]
    NotRegular(PathBuf, &'static str),
    #[error(
        "Refused {0}: it has {1} hard links (it may be a host file); only a regular file with \
         one link is accepted"
    )]
    HardLinked(PathBuf, u64),
    #[error("Refused {0}: it is a symbolic link or not a directory (symbolic links are refused)")]
    NotADirectory(PathBuf),
    #[error("Cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("Cannot create directory {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("{0} was replaced while it was being opened")]
    Replaced(PathBuf),
    #[error("{0}: a name with a NUL byte or a slash")]
    BadName(PathBuf),
}

/// A directory opened without following links, with the path it was reached by (for messages).
#[derive(Debug)]
pub struct Dir {
    pub file: File,
    pub path: PathBuf,
}

/// What an open of a staged file may do.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    Read,
    Write,
}

fn c_name(dir: &Dir, name: &str) -> Result<CString, StagedError> {
    if name.contains('/') || name.is_empty() {
        return Err(StagedError::BadName(dir.path.join(name)));
    }
    CString::new(name).map_err(|_| StagedError::BadName(dir.path.join(name)))
}

fn openat(dir: &Dir, name: &str, flags: libc::c_int, mode: u32) -> std::io::Result<File> {
    let c = c_name(dir, name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: c is a NUL-terminated name that outlives the call; the descriptor returned is
    // owned by the File made from it below and by nothing else.
    let fd = unsafe { libc::openat(dir.file.as_raw_fd(), c.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl Dir {
    /// Opens a directory given by an absolute path the operator chose (the chroot base).
    pub fn open_trusted(path: &Path) -> Result<Dir, StagedError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)
            .map_err(|e| StagedError::Open(path.to_path_buf(), e))?;
        Ok(Dir {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens the directory `name` in this one; a symbolic link or anything else is refused.
    pub fn open_dir(&self, name: &str) -> Result<Dir, StagedError> {
        let path = self.path.join(name);
        match openat(self, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Ok(file) => Ok(Dir { file, path }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                Err(StagedError::NotADirectory(path))
            }
            Err(e) => Err(StagedError::Open(path, e)),
        }
    }

    /// Creates `name` with `mode` if missing and opens it; `true` when this call created it.
    pub fn make_dir(&self, name: &str, mode: u32) -> Result<(Dir, bool), StagedError> {
        let c = c_name(self, name)?;
        // SAFETY: c is a NUL-terminated name that outlives the call.
        let rc = unsafe { libc::mkdirat(self.file.as_raw_fd(), c.as_ptr(), mode) };
        let created = match rc {
            0 => true,
            _ => match std::io::Error::last_os_error() {
                e if e.kind() == ErrorKind::AlreadyExists => false,
                e => return Err(StagedError::CreateDir(self.path.join(name), e)),
            },
        };
        Ok((self.open_dir(name)?, created))
    }

    /// What is at `name`, without opening it for I/O: `None` when nothing is there; an error
    /// when it is not a regular file with one link.
    pub fn inspect(&self, name: &str) -> Result<Option<Metadata>, StagedError> {
        let path = self.path.join(name);
        match openat(self, name, libc::O_PATH, 0) {
            Ok(f) => {
                let meta = f
                    .metadata()
                    .map_err(|e| StagedError::Open(path.clone(), e))?;
                check(&path, &meta)?;
                Ok(Some(meta))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StagedError::Open(path, e)),
        }
    }

    /// Opens the regular file `name` for `access`, creating it with `create` (a mode) when it
    /// is missing. Checked on the opened descriptor: a regular file with one link.
    pub fn open_file(
        &self,
        name: &str,
        access: Access,
        create: Option<u32>,
    ) -> Result<File, StagedError> {
        let path = self.path.join(name);
        let acc = match access {
            Access::Read => libc::O_RDONLY,
            Access::Write => libc::O_WRONLY,
        };
        // O_CREAT only with O_EXCL: never through whatever the name already holds.
        let opened = match create {
            Some(mode) => match openat(self, name, acc | libc::O_CREAT | libc::O_EXCL, mode) {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => openat(self, name, acc, 0),
                other => other,
            },
            None => openat(self, name, acc, 0),
        };
        let file = opened.map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => StagedError::NotRegular(path.clone(), "a symbolic link"),
            // O_NONBLOCK write-open of a FIFO without a reader, or of a socket.
            Some(libc::ENXIO) => StagedError::NotRegular(path.clone(), "a FIFO or a socket"),
            _ => StagedError::Open(path.clone(), e),
        })?;
        let meta = file
            .metadata()
            .map_err(|e| StagedError::Open(path.clone(), e))?;
        check(&path, &meta)?;
        Ok(file)
    }

    /// Opens `name` for writing and checks it is the same file as `expected` (no swap since).
    pub fn reopen_for_writing(&self, name: &str, expected: &File) -> Result<File, StagedError> {
        let path = self.path.join(name);
        let file = self.open_file(name, Access::Write, None)?;
        let (a, b) = (
            file.metadata()
                .map_err(|e| StagedError::Open(path.clone(), e))?,
            expected
                .metadata()
                .map_err(|e| StagedError::Open(path.clone(), e))?,
        );
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(StagedError::Replaced(path));
        }
        Ok(file)
    }

    /// Removes `name` (a directory with `dir`), relative to this directory: never through a
    /// link. Errors are ignored: cleanup after a failure is best effort.
    pub fn remove(&self, name: &str, dir: bool) {
        let Ok(c) = c_name(self, name) else {
            return;
        };
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: c is a NUL-terminated name that outlives the call.
        unsafe { libc::unlinkat(self.file.as_raw_fd(), c.as_ptr(), flags) };
    }

    /// Walks `relative` (plain names separated by `/`) down from this directory, each step
    /// without following links; returns the last directory and the final name.
    pub fn walk<'a>(&self, relative: &'a str) -> Result<(Dir, &'a str), StagedError> {
        let (parents, last) = relative.rsplit_once('/').unwrap_or(("", relative));
        let mut dir = self.open_dir(".")?;
        for part in parents.split('/').filter(|p| !p.is_empty()) {
            dir = dir.open_dir(part)?;
        }
        Ok((dir, last))
    }
}

/// A regular file with exactly one link, or the reason it is refused.
fn check(path: &Path, meta: &Metadata) -> Result<(), StagedError> {
    let t = meta.file_type();
    let kind = if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() || t.is_block_device() {
        "a device node"
    } else if !t.is_file() {
        "not a regular file"
    } else if meta.nlink() != 1 {
        return Err(StagedError::HardLinked(path.to_path_buf(), meta.nlink()));
    } else {
        return Ok(());
    };
    Err(StagedError::NotRegular(path.to_path_buf(), kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("staged-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        Dir::open_trusted(&path).unwrap()
    }

    #[test]
    fn a_fifo_is_refused_without_blocking_for_read_and_write() {
        let dir = temp_dir("fifo");
        let c = CString::new(dir.path.join("f").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for access in [Access::Read, Access::Write] {
            let e = dir.open_file("f", access, Some(0o600)).unwrap_err();
            assert!(e.to_string().contains("FIFO"), "{e}");
        }
        assert!(dir.inspect("f").unwrap_err().to_string().contains("a FIFO"));
        std::fs::remove_dir_all(&dir.path).unwrap();
    }

    #[test]
    fn hard_links_and_symlinks_are_refused_and_missing_files_created() {
        let dir = temp_dir("links");
        std::fs::write(dir.path.join("a"), "a").unwrap();
        std::fs::hard_link(dir.path.join("a"), dir.path.join("b")).unwrap();
        std::os::unix::fs::symlink(dir.path.join("a"), dir.path.join("s")).unwrap();
        let e = dir.open_file("b", Access::Write, None).unwrap_err();
        assert!(matches!(e, StagedError::HardLinked(_, 2)), "{e}");
        let e = dir.open_file("s", Access::Write, Some(0o600)).unwrap_err();
        assert!(e.to_string().contains("a symbolic link"), "{e}");
        assert!(dir
            .inspect("s")
            .unwrap_err()
            .to_string()
            .contains("symbolic"));
        assert!(matches!(
            dir.open_dir("s"),
            Err(StagedError::NotADirectory(_))
        ));
        assert!(dir.inspect("new").unwrap().is_none());
        dir.open_file("new", Access::Write, Some(0o600)).unwrap();
        assert!(dir.inspect("new").unwrap().is_some());
        std::fs::remove_dir_all(&dir.path).unwrap();
    }
}

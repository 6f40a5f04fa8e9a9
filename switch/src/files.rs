//! The files the switch creates: socket files with the mode and group the
//! user chose, and the vde_switch-style directory (`--vde-dir`).
//!
//! Modes are set at creation, through the umask, never by a later chmod
//! that could follow a symlink planted in between; groups are set with
//! `lchown`, which does not follow symlinks either.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::error::Error;

/// Mode and group for the sockets and directories the switch creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions {
    /// Permission bits of socket files (`--mode`, default 0600).
    pub mode: u32,
    /// Group of every file created (`--group`), if any.
    pub gid: Option<u32>,
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions {
            mode: 0o600,
            gid: None,
        }
    }
}

impl Permissions {
    /// The directory mode that goes with the socket mode, as vde_switch
    /// derives it: search permission for every class that may read or
    /// write, and set-group-ID when a group is given (so files inside
    /// inherit it).
    pub fn dir_mode(&self) -> u32 {
        let mut mode = self.mode & 0o777;
        for (rw, x) in [(0o600, 0o100), (0o060, 0o010), (0o006, 0o001)] {
            if mode & rw != 0 {
                mode |= x;
            }
        }
        if self.gid.is_some() {
            mode |= 0o2000;
        }
        mode
    }

    /// Runs `create` (which makes the file at `path`) so that the file gets
    /// this mode, then gives it this group.
    pub fn create_file<T>(
        &self,
        path: &Path,
        create: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let made = crate::sys::with_umask(!self.mode & 0o777, create)?;
        self.chgrp(path)?;
        Ok(made)
    }

    fn chgrp(&self, path: &Path) -> io::Result<()> {
        match self.gid {
            Some(gid) => std::os::unix::fs::lchown(path, None, Some(gid)),
            None => Ok(()),
        }
    }
}

/// Parses `--mode`: octal permission bits such as `0660` or `660`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "`{text}` is not a permission mode: give octal bits such as 0600 or 0660"
        )),
    }
}

/// Resolves `--group`: a numeric id, or a name from /etc/group.
pub fn resolve_group(group: &str) -> Result<u32, Error> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let table = std::fs::read_to_string("/etc/group")
        .map_err(|e| Error::os("cannot read /etc/group to resolve --group", e))?;
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| {
            Error::Config(format!(
                "--group {group}: no such group in /etc/group (give a name or a numeric id)"
            ))
        })
}

/// The vde_switch-style directory: `DIR/ctl` and one data socket per port.
/// Removes itself when dropped if it created the directory (and it is
/// empty by then).
#[derive(Debug)]
pub struct VdeDir {
    path: PathBuf,
    created: bool,
}

impl VdeDir {
    /// Uses `path` as the directory, creating it with `perms.dir_mode()` if
    /// missing. A symlink there is refused: the switch never follows one to
    /// create sockets elsewhere.
    pub fn prepare(path: &Path, perms: &Permissions) -> Result<VdeDir, Error> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(Error::Config(format!(
                "{}: is a symlink; refusing to follow it (remove it, or give the real directory)",
                path.display()
            ))),
            Ok(meta) if meta.is_dir() => {
                let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
                if uid != crate::sys::effective_uid() {
                    warn!(
                        "{}: belongs to uid {uid}, not to this switch; check who may plant files there",
                        path.display()
                    );
                }
                if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                    warn!(
                        "{}: is writable by everybody (mode {mode:o})",
                        path.display()
                    );
                }
                Ok(VdeDir {
                    path: path.into(),
                    created: false,
                })
            }
            Ok(meta) if meta.file_type().is_socket() => Err(Error::Config(format!(
                "{}: is a socket, not a directory (for a single control socket use --sock)",
                path.display()
            ))),
            Ok(_) => Err(Error::Config(format!(
                "{}: exists and is not a directory",
                path.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mode = perms.dir_mode();
                crate::sys::with_umask(0, || std::fs::DirBuilder::new().mode(mode).create(path))
                    .map_err(|e| Error::Bind {
                        path: path.into(),
                        hint: crate::error::create_hint(&e),
                        source: e,
                    })?;
                perms.chgrp(path).map_err(|e| {
                    Error::os(format!("{}: cannot give it the group", path.display()), e)
                })?;
                Ok(VdeDir {
                    path: path.into(),
                    created: true,
                })
            }
            Err(e) => Err(Error::os(
                format!("{}: cannot inspect it", path.display()),
                e,
            )),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the control socket goes.
    pub fn ctl(&self) -> PathBuf {
        self.path.join("ctl")
    }
}

impl Drop for VdeDir {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// A file the switch made, removed when this guard is dropped.
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_modes_follow_socket_modes() {
        let p = |mode, gid| Permissions { mode, gid }.dir_mode();
        assert_eq!(p(0o600, None), 0o700);
        assert_eq!(p(0o660, None), 0o770);
        assert_eq!(p(0o666, None), 0o777);
        assert_eq!(p(0o640, Some(5)), 0o2750);
    }

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("01777").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(resolve_group("no-such-group-here").is_err());
    }

    #[test]
    fn sockets_get_the_mode_at_creation() {
        let dir = std::env::temp_dir().join(format!("uml-switch-files-{}", std::process::id()));
        let perms = Permissions {
            mode: 0o640,
            gid: None,
        };
        let vde = VdeDir::prepare(&dir, &perms).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o750);
        let sock = vde.ctl();
        let listener = perms
            .create_file(&sock, || std::os::unix::net::UnixListener::bind(&sock))
            .unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o640);
        drop(listener);
        drop(RemoveOnDrop(sock.clone()));
        assert!(!sock.exists());
        drop(vde);
        assert!(!dir.exists());
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let link = std::env::temp_dir().join(format!("uml-switch-link-{}", std::process::id()));
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        let err = VdeDir::prepare(&link, &Permissions::default()).unwrap_err();
        std::fs::remove_file(&link).unwrap();
        assert!(err.to_string().contains("symlink"), "{err}");
    }
}

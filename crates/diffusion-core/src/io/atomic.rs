//! Crash-safe writes: a file or a whole folder is replaced in one rename, and what a writer
//! killed mid-write leaves behind is cleaned (or, for a folder caught between its two renames,
//! restored) by the next writer in the same folder.
//!
//! Every temporary name is `.NAME.tmp-PID` (a file or folder being written) or `.NAME.old-PID`
//! (a folder being replaced), `PID` being the writer's process id; a temporary whose writer no
//! longer runs is stale.

use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

thread_local! {
    static FAIL_AFTER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Fault injection for crash tests: after `n` more [`write_atomic`] calls on this thread, the
/// next one writes half its bytes to a temporary file of a process that no longer runs and
/// fails, which is what a process killed mid-write leaves behind (the target keeps its old
/// content). `None` turns it off.
pub fn fail_atomic_write_after(n: Option<usize>) {
    FAIL_AFTER.with(|c| c.set(n));
}

/// Whether this write is the injected failure.
fn injected_failure() -> bool {
    FAIL_AFTER.with(|c| match c.get() {
        Some(0) => {
            c.set(None);
            true
        }
        Some(k) => {
            c.set(Some(k - 1));
            false
        }
        None => false,
    })
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CoreError {
    let path = path.to_path_buf();
    move |source| CoreError::Io { path, source }
}

/// The folder `path` lies in (`.` for a bare file name).
pub fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// This process's temporary name for `path`: `.NAME.tmp-PID` beside it.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    folder_of(path).join(format!(".{name}.tmp-{}", std::process::id()))
}

/// Makes the entries of `dir` (renames, new files) durable.
pub fn sync_folder(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The process id under which an injected failure leaves its torn file: above Linux's largest
/// (2^22), so no process runs under it and the next writer treats the file as stale.
const CRASHED_PID: u32 = 4_194_305;

/// Writes `bytes` to a new file at `path` and syncs it (no rename: for files whose name is
/// already temporary).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    std::fs::File::create(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(io_error(path))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename,
/// fsync of the folder. A crash leaves either the old file or the new one, never a torn one;
/// stale temporaries in the folder are removed first ([`remove_stale_temporaries`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = folder_of(path);
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    remove_stale_temporaries(dir)?;
    if injected_failure() {
        // what a process killed mid-write leaves: half the bytes under its temporary name
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let torn = dir.join(format!(".{name}.tmp-{CRASHED_PID}"));
        std::fs::write(&torn, &bytes[..bytes.len() / 2]).map_err(io_error(&torn))?;
        return Err(io_error(path)(std::io::Error::other(
            "injected failure: a crash mid-write",
        )));
    }
    let tmp = temporary_path(path);
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(io_error(path))?;
    sync_folder(dir)
}

/// Runs `write` on a staging folder beside `dir`, then swaps it in place of `dir`: a crash
/// leaves the old folder or the new one, never a mix of both. Between the two renames the old
/// folder is `.NAME.old-PID`; a crash at that instant is repaired by the next writer (or
/// [`remove_stale_temporaries`]), which renames it back.
pub fn replace_folder(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = folder_of(dir);
    std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    remove_stale_temporaries(parent)?;
    let staging = temporary_path(dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io_error(&staging))?;
    if let Err(e) = write(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    sync_folder(&staging)?;
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(io_error(dir))?;
    }
    std::fs::rename(&staging, dir).map_err(io_error(dir))?;
    sync_folder(parent)?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
    }
    Ok(())
}

/// Before a folder written by [`replace_folder`] is read: when `dir` is missing because its
/// writer died between the two renames, its previous version is renamed back (see
/// [`remove_stale_temporaries`]).
///
/// # Errors
/// `Io` naming the entry that could not be restored.
pub fn recover_folder(dir: &Path) -> Result<()> {
    if !dir.exists() {
        remove_stale_temporaries(folder_of(dir))?;
    }
    Ok(())
}

/// What a temporary name says: the name it stands for, its kind and its writer.
struct Temporary {
    target: String,
    old: bool,
    pid: u32,
}

impl Temporary {
    /// `.NAME.tmp-PID` or `.NAME.old-PID` (anything may follow the PID).
    fn parse(file_name: &str) -> Option<Self> {
        let rest = file_name.strip_prefix('.')?;
        let (at, old) = [(rest.rfind(".tmp-"), false), (rest.rfind(".old-"), true)]
            .into_iter()
            .find_map(|(at, old)| at.map(|at| (at, old)))?;
        let digits: String = rest[at + 5..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some(Self {
            target: rest[..at].to_string(),
            old,
            pid: digits.parse().ok()?,
        })
    }

    /// Whether the writer may still be running: this process, or (where `/proc` tells) a
    /// running one. Without `/proc`, every other process's temporary counts as stale.
    fn writer_runs(&self) -> bool {
        self.pid == std::process::id()
            || (Path::new("/proc/self").exists()
                && Path::new(&format!("/proc/{}", self.pid)).exists())
    }
}

/// Cleans what writers that no longer run left in `dir`: their `.NAME.tmp-PID` files and
/// folders are removed; a `.NAME.old-PID` folder is renamed back to `NAME` when `NAME` is
/// missing (the writer died between the two renames of [`replace_folder`]), else removed.
/// Returns the paths removed or restored. A missing `dir` has nothing to clean.
///
/// # Errors
/// `Io` naming the entry that could not be removed or restored.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut cleaned = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(tmp) = Temporary::parse(&name).filter(|t| !t.writer_runs()) else {
            continue;
        };
        let path = entry.path();
        let target = dir.join(&tmp.target);
        if tmp.old && !target.exists() {
            std::fs::rename(&path, &target).map_err(io_error(&target))?;
            sync_folder(dir)?;
        } else if path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io_error(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
        cleaned.push(path);
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: u32 = CRASHED_PID;

    #[test]
    fn temporary_names_parse() {
        let t = Temporary::parse(".policy.mpk.tmp-123").unwrap();
        assert_eq!(
            (t.target.as_str(), t.old, t.pid),
            ("policy.mpk", false, 123)
        );
        let t = Temporary::parse(".transformer.old-7").unwrap();
        assert_eq!((t.target.as_str(), t.old, t.pid), ("transformer", true, 7));
        let t = Temporary::parse(".w.safetensors.tmp-9.safetensors").unwrap();
        assert_eq!((t.target.as_str(), t.pid), ("w.safetensors", 9));
        assert!(Temporary::parse("policy.mpk.tmp-1").is_none());
        assert!(Temporary::parse(".policy.mpk.tmp-").is_none());
        assert!(Temporary::parse(".hidden").is_none());
    }

    #[test]
    fn stale_temporaries_are_removed_and_a_torn_swap_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ours = format!(".a.json.tmp-{}", std::process::id());
        let files = [
            format!(".a.json.tmp-{DEAD}"),
            ours.clone(),
            ".notes".into(),
            "a.json".into(),
        ];
        for f in &files {
            std::fs::write(d.join(f), f).unwrap();
        }
        // a folder replaced by a dead writer: its staging copy and, `model` being missing, the
        // old folder that is the only copy left
        std::fs::create_dir(d.join(format!(".model.tmp-{DEAD}"))).unwrap();
        std::fs::create_dir(d.join(format!(".model.old-{DEAD}"))).unwrap();
        std::fs::write(d.join(format!(".model.old-{DEAD}/w")), "old").unwrap();
        // an old folder whose replacement landed
        std::fs::create_dir(d.join("vae")).unwrap();
        std::fs::create_dir(d.join(format!(".vae.old-{DEAD}"))).unwrap();

        let mut cleaned = remove_stale_temporaries(d).unwrap();
        cleaned.sort();
        let mut want: Vec<PathBuf> = [
            format!(".a.json.tmp-{DEAD}"),
            format!(".model.old-{DEAD}"),
            format!(".model.tmp-{DEAD}"),
            format!(".vae.old-{DEAD}"),
        ]
        .iter()
        .map(|f| d.join(f))
        .collect();
        want.sort();
        assert_eq!(cleaned, want);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [&ours, ".notes", "a.json", "model", "vae"]);
        assert_eq!(std::fs::read_to_string(d.join("model/w")).unwrap(), "old");
    }

    #[test]
    fn an_injected_failure_leaves_the_old_file_and_the_next_write_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").unwrap();
        fail_atomic_write_after(Some(0));
        assert!(write_atomic(&path, b"new!").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let torn = dir.path().join(format!(".state.json.tmp-{CRASHED_PID}"));
        assert_eq!(std::fs::read(torn).unwrap(), b"ne");
        write_atomic(&path, b"new!").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new!");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

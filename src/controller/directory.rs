//! The directory provider: standalone mode's source of objects.
//!
//! Every `*.yaml` / `*.yml` file under the configuration directory (recursively, multi-document)
//! is read into the [`Store`]. A change is noticed two ways. inotify wakes the provider as soon
//! as a file is closed after writing, created, moved or deleted in the directory or a
//! subdirectory, so an edit is applied within milliseconds. And every [`POLL_INTERVAL`] the
//! directory is scanned anyway: inotify misses some cases (a file changed through a symlink that
//! points out of the watched tree, watch limits reached, file systems without inotify), and a
//! scan that compares modification time and size first costs next to nothing. Config maps
//! mounted into pods swap their `..data` symlink by rename, which the watch on the directory
//! sees. Scanning and parsing run on a thread of their own, never on the threads that serve
//! traffic.
//!
//! The provider also fills in what the API server would: `metadata.generation` starts at 1 and
//! is bumped whenever an object's `spec` changes, and `metadata.creationTimestamp` is set to the
//! time the object was first seen when the file does not carry one.
//!
//! A file is applied whole or not at all. One that fails to parse, holds a document that is not
//! a usable object, or holds an object the API server would refuse (a field of the wrong type,
//! an EndpointSlice address that is not an IP address) is reported with its path and the line,
//! and the objects it held before stay in the store, so the gateway keeps serving its last good
//! configuration. So does a file over [`MAX_FILE_BYTES`].
//!
//! A file still being written is not read: inotify says when its writer closes it (bounded by
//! [`WRITE_WAIT`]), and a change that no event accounted for is read once it has stayed the same
//! for [`QUIET`]. Each directory is read once per scan, known by device and inode, so symlink
//! loops are skipped.
//!
//! Objects belong to their content, not to a file name: an object stays in the store while any
//! file holds it, so renaming a file or a directory, or moving an object from one file to
//! another, never takes it away (a file that turns up with the time and size of one just gone
//! is taken as moved, and read at once). When two files hold the same object, the copy of the last in path order is served
//! (at start and while running alike), and the other file carries an error naming both; when
//! that file lets go of it, the other file's copy is read again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use serde_json::Value;

use super::object::{Kind, Object, ObjectKey};
use super::store::{SourceError, Store};
use crate::routing::api;

/// How often the directory is scanned for changes that inotify did not report.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How long the provider waits after an inotify event for the rest of a burst (a tool writing
/// several files, or a write followed by a rename) before it scans.
pub const SETTLE: Duration = Duration::from_millis(5);

/// The largest manifest file read. A whole file is held in memory as text and then as parsed
/// values, several times its size, and the allocator keeps that memory afterwards; a real
/// configuration is far smaller (ten thousand routes take a few MiB), so a bigger file is a
/// mistake (a log or a dump written under the wrong name) that must not cost the gateway
/// gigabytes.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What the provider knows of a file it has listed: the [`Stamp`] of the content last read
/// (or refused), so that an unchanged file is not read again, and the objects it holds.
struct FileState {
    stamp: Stamp,
    keys: Vec<ObjectKey>,
    /// Read again at the next scan even if unchanged: reading failed for a reason that can pass
    /// without the file changing, such as its permissions.
    retry: bool,
    /// Why its last content was not loaded, if it was not: a file read again only to retry is
    /// logged again only when the reason changes.
    refused: Option<String>,
}

/// What a file's metadata says of its content, to tell whether it changed since it was read.
/// The modification time and size alone miss changes: copies that keep times (`cp -p`, `tar`,
/// `rsync -a`, build artifacts that all carry one fixed time) can bring new content of the same
/// size under the same time. The inode and its change time (`ctime`) catch those: no write or
/// replacement leaves both as they were, and no tool can set them back. A change of mode or
/// owner also moves `ctime`; the file is then read again, to the same objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    /// Device and inode.
    inode: (u64, u64),
    /// Change time, seconds and nanoseconds.
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: (meta.dev(), meta.ino()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// What a rename keeps, to know a file moved to another path ([`DirectoryProvider::sync`]).
    fn moved_key(&self) -> (Option<SystemTime>, u64) {
        (self.modified, self.len)
    }
}

struct Tracked {
    spec: Value,
    generation: i64,
    created: String,
}

/// Reads a directory of manifests into a store, once or continuously.
pub struct DirectoryProvider {
    dir: PathBuf,
    store: Store,
    files: BTreeMap<PathBuf, FileState>,
    tracked: HashMap<ObjectKey, Tracked>,
    /// The files holding each object, in the order read: the store has the last one's copy.
    owners: HashMap<ObjectKey, Vec<PathBuf>>,
    /// The directories of the tree as last walked, root first: the ones to watch.
    dirs: Vec<PathBuf>,
    /// Directories skipped at the last walk because they were read under another path.
    repeats: HashSet<PathBuf>,
    /// The duplicate-object errors last reported, by the file whose copy is not served.
    duplicates: BTreeMap<PathBuf, Vec<SourceError>>,
    /// Entries at the last walk that could not be read as files, and why: symlinks whose
    /// target cannot be reached, manifest names that are not regular files.
    skipped: HashMap<PathBuf, &'static str>,
    /// While watching: which files are still being written. A one-off [`Self::sync`] (at start,
    /// `check`, `explain`) reads every file as it is.
    writes: Option<Writes>,
    /// The last failure to read the directory itself, said once rather than at every scan.
    dir_error: Option<String>,
    /// Subdirectories that could not be listed at the last scan, and why.
    unreadable: HashMap<PathBuf, String>,
}

impl DirectoryProvider {
    /// A provider for `dir`; nothing is read until [`Self::sync`] or [`Self::run`].
    pub fn new(dir: impl Into<PathBuf>, store: Store) -> Self {
        DirectoryProvider {
            dir: dir.into(),
            store,
            files: BTreeMap::new(),
            tracked: HashMap::new(),
            owners: HashMap::new(),
            dirs: Vec::new(),
            repeats: HashSet::new(),
            skipped: HashMap::new(),
            duplicates: BTreeMap::new(),
            writes: None,
            dir_error: None,
            unreadable: HashMap::new(),
        }
    }

    /// Scans the directory once and applies what changed. Returns an error only when the
    /// directory itself cannot be read; problems in files are recorded in the store.
    pub fn sync(&mut self) -> std::io::Result<()> {
        let tree = walk(&self.dir)?;
        self.note_repeats(&tree.repeats);
        self.note_unreadable(&tree.unreadable);
        self.dirs = tree.dirs;
        let mut seen = HashSet::with_capacity(tree.files.len());
        // Files under a subdirectory that cannot be listed keep what they held, as files that
        // cannot be read do.
        seen.extend(
            self.files
                .keys()
                .filter(|p| tree.unreadable.iter().any(|(dir, _)| p.starts_with(dir)))
                .cloned(),
        );
        // A file gone from its path whose modification time and size turn up on a new path
        // was moved there (a rename keeps both), most often with a whole directory, whose files
        // get no event of their own. It is read at once rather than after waiting for writes
        // to settle: its objects would otherwise be gone from their old path in between.
        let listed: HashSet<&Path> = tree.files.iter().map(|(p, _)| p.as_path()).collect();
        let vanished: HashSet<(Option<SystemTime>, u64)> = (self.files.iter())
            .filter(|(p, _)| !listed.contains(p.as_path()))
            .map(|(_, state)| state.stamp.moved_key())
            .collect();
        drop(listed);
        for (path, meta) in tree.files {
            let stamp = Stamp::of(&meta);
            let known = self.files.get(&path);
            if let Some(state) = known {
                if state.stamp == stamp && !state.retry {
                    seen.insert(path);
                    continue;
                }
            }
            let moved = known.is_none()
                && stamp.modified.is_some()
                && vanished.contains(&stamp.moved_key());
            let ready = moved || self.writes.as_mut().is_none_or(|w| w.ready(&path, stamp));
            if ready {
                self.load_file(&path, stamp);
            }
            seen.insert(path);
        }
        if let Some(writes) = &mut self.writes {
            writes.scanned(&seen);
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        let mut reread = Vec::new();
        for path in gone {
            if let Some(state) = self.files.remove(&path) {
                let removed = self.release(&path, state.keys, &mut reread);
                self.store.apply(&removed, Vec::new());
            }
            self.store
                .set_source_errors(&path.display().to_string(), Vec::new());
        }
        self.reread(reread);
        self.note_skipped(&tree.broken_links, &tree.not_regular);
        self.note_duplicates();
        Ok(())
    }

    /// Reports each object defined in more than one file, on every file whose copy is not
    /// served: a warning when it starts, an error (on `/status`, in `check`) while it lasts.
    /// Which copy is served is decided by path, not by chance, but two sources of truth for
    /// one object are a mistake waiting to happen: an edit to the other copy does nothing.
    fn note_duplicates(&mut self) {
        let mut now: BTreeMap<PathBuf, Vec<SourceError>> = BTreeMap::new();
        for (key, owners) in self.owners.iter().filter(|(_, o)| o.len() > 1) {
            let Some((served, others)) = owners.split_last() else {
                continue;
            };
            for path in others {
                now.entry(path.clone()).or_default().push(SourceError {
                    source: path.display().to_string(),
                    message: format!(
                        "{key} is also defined in {}, whose copy is served (of several files \
                         the last in path order wins); keep it in one file",
                        served.display()
                    ),
                });
            }
        }
        for (path, errors) in &mut now {
            errors.sort_by(|a, b| a.message.cmp(&b.message));
            if self.duplicates.get(path) != Some(errors) {
                for e in errors.iter() {
                    tracing::warn!(file = %path.display(), "{}", e.message);
                }
            }
            self.store
                .set_source_errors(&duplicates_source(path), errors.clone());
        }
        for path in self.duplicates.keys().filter(|p| !now.contains_key(*p)) {
            self.store
                .set_source_errors(&duplicates_source(path), Vec::new());
        }
        self.duplicates = now;
    }

    /// Reports each subdirectory that cannot be listed: a warning when it starts or its reason
    /// changes, an error in the store (on `/status`, in `check`) while it lasts.
    fn note_unreadable(&mut self, unreadable: &[(PathBuf, String)]) {
        for (dir, error) in unreadable {
            if self.unreadable.get(dir) != Some(error) {
                tracing::warn!(dir = %dir.display(), %error, "cannot read a subdirectory of the configuration directory; keeping the objects read from it before, reading the rest");
            }
            let errors = vec![SourceError {
                source: dir.display().to_string(),
                message: format!(
                    "cannot read directory: {error}; the objects read from it before are kept"
                ),
            }];
            self.store
                .set_source_errors(&dir.display().to_string(), errors);
        }
        let now: HashMap<PathBuf, String> = unreadable.iter().cloned().collect();
        for dir in self.unreadable.keys() {
            if !now.contains_key(dir) {
                tracing::info!(dir = %dir.display(), "subdirectory of the configuration directory readable again (or gone)");
                self.store
                    .set_source_errors(&dir.display().to_string(), Vec::new());
            }
        }
        self.unreadable = now;
    }

    /// Warns once about each directory skipped because it was already read under another path
    /// (a symlink loop such as `ln -s . again`), not at every scan.
    fn note_repeats(&mut self, repeats: &[PathBuf]) {
        for path in repeats {
            if !self.repeats.contains(path) {
                tracing::warn!(dir = %path.display(), "directory already read under another path (a symlink loop, or a second link to it); skipping it");
            }
        }
        self.repeats = repeats.iter().cloned().collect();
    }

    /// Reports what the walk could not read as a file: a symlink to nothing (its target was
    /// removed or renamed, or the link points at itself), read as absent, and a manifest name
    /// that is not a regular file (a FIFO, a socket, a device: reading one could block the
    /// watcher), skipped. Each is warned once. What such a manifest held is not served, so
    /// while it lasts it is an error in the store too (on `/status`; `check` fails); a dangling
    /// link of another name, perhaps once a directory, is only warned about.
    fn note_skipped(&mut self, broken_links: &[PathBuf], not_regular: &[PathBuf]) {
        let now: HashMap<PathBuf, &'static str> = (broken_links.iter())
            .map(|p| (p.clone(), "symlink to nothing (its target is missing, or it loops); read as absent"))
            .chain(not_regular.iter().map(|p| {
                (p.clone(), "not a regular file (a FIFO, a socket or a device); skipped: write the manifest to a regular file")
            }))
            .collect();
        for (path, why) in &now {
            if self.skipped.get(path) != Some(why) {
                tracing::warn!(path = %path.display(), "{why}");
            }
            if is_manifest_name(path) {
                let source = path.display().to_string();
                let errors = vec![SourceError {
                    source: source.clone(),
                    message: why.to_string(),
                }];
                self.store.set_source_errors(&source, errors);
            }
        }
        for path in self.skipped.keys().filter(|p| !now.contains_key(*p)) {
            if is_manifest_name(path) {
                self.store
                    .set_source_errors(&path.display().to_string(), Vec::new());
            }
        }
        self.skipped = now;
    }

    /// Lets `path` go of `keys`. Returns the keys no other file holds, to remove from the
    /// store; adds to `reread` the files whose copy must be served again because the store held
    /// the copy from `path`.
    fn release(
        &mut self,
        path: &Path,
        keys: Vec<ObjectKey>,
        reread: &mut Vec<PathBuf>,
    ) -> Vec<ObjectKey> {
        let mut removed = Vec::new();
        for key in keys {
            let Some(owners) = self.owners.get_mut(&key) else {
                continue;
            };
            let served = owners.last().is_some_and(|p| p == path);
            owners.retain(|p| p != path);
            match owners.last() {
                None => {
                    self.owners.remove(&key);
                    self.tracked.remove(&key);
                    removed.push(key);
                }
                Some(other) if served && !reread.contains(other) => reread.push(other.clone()),
                Some(_) => {}
            }
        }
        removed
    }

    /// Reads files again whose copy of an object must be served once more.
    fn reread(&mut self, paths: Vec<PathBuf>) {
        for path in paths {
            // A file still being written is read when it is done: its new mtime says so.
            // Meanwhile the store keeps the copy it had.
            if self
                .writes
                .as_ref()
                .is_some_and(|w| w.open.contains_key(&path))
            {
                continue;
            }
            if let Some(state) = self.files.get(&path) {
                let stamp = state.stamp;
                self.load_file(&path, stamp);
            }
        }
    }

    fn load_file(&mut self, path: &Path, stamp: Stamp) {
        let source = path.display().to_string();
        let text = match read_text(path, stamp.len) {
            Ok(text) => text,
            Err((message, retry)) => {
                self.refuse(path, stamp, vec![message]);
                if let Some(state) = self.files.get_mut(path) {
                    state.retry = retry;
                }
                return;
            }
        };
        let objects = match read_manifests(&text) {
            Ok(objects) => objects,
            Err(messages) => {
                self.refuse(path, stamp, messages);
                return;
            }
        };
        let keys: Vec<ObjectKey> = objects.iter().map(|o| o.key.clone()).collect();
        let old_keys = self
            .files
            .get(path)
            .map(|s| s.keys.clone())
            .unwrap_or_default();
        let new_keys: HashSet<&ObjectKey> = keys.iter().collect();
        let let_go: Vec<ObjectKey> = old_keys
            .into_iter()
            .filter(|k| !new_keys.contains(k))
            .collect();
        let mut reread = Vec::new();
        let removed = self.release(path, let_go, &mut reread);
        // Of an object defined in several files, the copy of the last file in path order is
        // served, as at start, whatever order the files are written in; the others are kept
        // for when that file lets it go, and reported (see `note_duplicates`).
        for key in &keys {
            let owners = self.owners.entry(key.clone()).or_default();
            owners.retain(|p| p != path);
            let at = owners.partition_point(|p| p.as_path() < path);
            owners.insert(at, path.to_path_buf());
        }
        let mut served: Vec<Object> = objects
            .into_iter()
            .filter(|o| self.owners[&o.key].last().is_some_and(|p| p == path))
            .collect();
        // Of copies in this file, the last: the earlier ones never reach the store, nor bump
        // its generation.
        let last: HashMap<ObjectKey, usize> = (served.iter().enumerate())
            .map(|(i, o)| (o.key.clone(), i))
            .collect();
        let mut position = 0;
        served.retain(|o| {
            position += 1;
            last[&o.key] == position - 1
        });
        let objects: Vec<Object> = served.into_iter().map(|o| self.fill_in(o)).collect();
        self.store.apply(&removed, objects);
        // The same object twice in one file: the last copy is served, as `kubectl apply`
        // would leave it, and the file carries an error while it lasts, as for two files.
        let mut seen = HashSet::new();
        let mut twice: Vec<&ObjectKey> = keys.iter().filter(|k| !seen.insert(*k)).collect();
        twice.dedup();
        let errors = twice
            .iter()
            .map(|key| SourceError {
                source: source.clone(),
                message: format!(
                    "{key} is defined more than once in this file; the last copy is served: \
                     keep one"
                ),
            })
            .collect();
        self.store.set_source_errors(&source, errors);
        self.files.insert(
            path.to_path_buf(),
            FileState {
                stamp,
                keys,
                retry: false,
                refused: None,
            },
        );
        self.reread(reread);
    }

    /// Records why the new content of `path` is not applied, and keeps the objects the file
    /// held before: a half-saved edit or one bad document must not take routes down. The new
    /// stamp is remembered so that the error is reported once, not re-read every scan; the
    /// next save changes it again. A file that never loaded (always so for `check`
    /// and `explain`, which read the directory once) held nothing, and the log must not claim
    /// otherwise.
    fn refuse(&mut self, path: &Path, stamp: Stamp, messages: Vec<String>) {
        let source = path.display().to_string();
        let error = messages.join("; ");
        let previous = self.files.get(path);
        let held = previous.map_or(0, |state| state.keys.len());
        // An unreadable file is tried again at every scan; saying so four times a second would
        // bury the rest of the log.
        let retried = previous
            .is_some_and(|state| state.retry && state.refused.as_deref() == Some(error.as_str()));
        if !retried && held > 0 {
            tracing::warn!(file = %source, %error, objects = held, "manifest file not loaded; keeping the objects it held before");
        } else if !retried {
            tracing::warn!(file = %source, %error, "manifest file not loaded; none of its objects are served");
        }
        let state = self.files.entry(path.to_path_buf()).or_insert(FileState {
            stamp,
            keys: Vec::new(),
            retry: false,
            refused: None,
        });
        state.stamp = stamp;
        state.retry = false;
        state.refused = Some(error);
        // `/status` says what is served meanwhile, as the log does: an operator watching it
        // must not take a refused edit for an outage, nor the old content for the new.
        let mut messages = messages;
        if let (Some(last), true) = (messages.last_mut(), held > 0) {
            last.push_str(&format!(
                " (the file's last good content is still served: {held} object{})",
                if held == 1 { "" } else { "s" }
            ));
        }
        let errors = messages
            .into_iter()
            .map(|message| SourceError {
                source: source.clone(),
                message,
            })
            .collect();
        self.store.set_source_errors(&source, errors);
    }

    /// Fills in generation and creation time the way the API server would.
    fn fill_in(&mut self, mut object: Object) -> Object {
        let spec = object.spec().clone();
        let explicit_created = !object.creation_timestamp.is_empty();
        let tracked = match self.tracked.get_mut(&object.key) {
            Some(t) => {
                if t.spec != spec {
                    t.generation += 1;
                    t.spec = spec;
                }
                t.generation = t.generation.max(object.generation);
                t
            }
            None => self.tracked.entry(object.key.clone()).or_insert(Tracked {
                spec,
                generation: object.generation.max(1),
                created: now_rfc3339(),
            }),
        };
        if object.key.kind.has_generation() {
            object.generation = tracked.generation;
            object.body["metadata"]["generation"] = Value::from(tracked.generation);
        }
        if !explicit_created {
            object.creation_timestamp = tracked.created.clone();
            object.body["metadata"]["creationTimestamp"] = Value::from(tracked.created.clone());
        }
        object
    }

    /// Applies changes forever, on a thread of its own: at once when inotify reports one, and
    /// at the latest every [`POLL_INTERVAL`].
    pub async fn run(self) {
        let spawned = std::thread::Builder::new()
            .name("config-dir".into())
            .spawn(move || self.watch());
        if let Err(err) = spawned {
            tracing::error!(error = %err, "cannot start the configuration directory watcher");
        }
    }

    /// [`Self::sync`], with a failure to read the directory reported in the store until a scan
    /// reads it again (it was moved away and back, or its permissions were fixed).
    fn sync_reporting(&mut self) {
        let source = self.dir.display().to_string();
        let errors = match self.sync() {
            Ok(()) => {
                if self.dir_error.take().is_some() {
                    tracing::info!(dir = %source, "configuration directory readable again");
                }
                Vec::new()
            }
            Err(err) => {
                // Scans run every POLL_INTERVAL: the same failure is logged once, not four
                // times a second; a different one is logged again.
                let text = err.to_string();
                if self.dir_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(dir = %source, error = %err, "cannot read configuration directory; keeping the objects read from it before, and trying again every scan");
                    self.dir_error = Some(text);
                }
                vec![SourceError {
                    source: source.clone(),
                    message: format!(
                        "cannot read configuration directory: {err}; the objects read from it \
                         before are kept"
                    ),
                }]
            }
        };
        self.store.set_source_errors(&source, errors);
    }

    fn watch(mut self) {
        let mut writes = Writes::default();
        let mut notify = Notify::start();
        if let Some(n) = &mut notify {
            n.watch_dirs(&self.dirs);
        }
        loop {
            match &mut notify {
                Some(n) => n.wait(POLL_INTERVAL, &mut writes),
                None => std::thread::sleep(POLL_INTERVAL),
            }
            self.writes = Some(writes);
            self.sync_reporting();
            writes = self.writes.take().unwrap_or_default();
            if let Some(n) = &mut notify {
                n.watch_dirs(&self.dirs);
            }
        }
    }
}

/// How long a file that inotify saw written, and not yet closed, is left unread. Writers close
/// a file when they are done (editors, `cp`, `kubectl`, configuration management); one that
/// keeps it open must not stall the file forever, so past this it is read as it is.
pub const WRITE_WAIT: Duration = Duration::from_secs(3);

/// How long a change that inotify did not report (it is unavailable, its queue overflowed, the
/// file was written through a symlink from outside the tree) must stay the same before it is
/// read: without an event there is no telling whether the writer is done, and a writer
/// pausing between two writes must not get its half file served.
pub const QUIET: Duration = Duration::from_millis(500);

/// What the watcher knows of files being written, so that a half-written file is not read.
#[derive(Default)]
struct Writes {
    /// Files inotify saw written and not yet closed, with when the first write was seen.
    open: HashMap<PathBuf, Instant>,
    /// Files inotify saw closed after writing, or renamed into place, since the last scan:
    /// complete, to be read at once.
    closed: HashSet<PathBuf>,
    /// Changes a scan found that inotify did not account for: the file's stamp first seen,
    /// and when.
    unsettled: HashMap<PathBuf, (Stamp, Instant)>,
}

impl Writes {
    /// Records one inotify event about `path`.
    fn event(&mut self, path: PathBuf, mask: AddWatchFlags) {
        if mask.intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO) {
            self.open.remove(&path);
            self.closed.insert(path);
        } else if mask.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM) {
            self.open.remove(&path);
            self.closed.remove(&path);
        } else if mask.contains(AddWatchFlags::IN_MODIFY)
            // A new file is written next; a new symlink or directory is complete as it is.
            || (mask.contains(AddWatchFlags::IN_CREATE)
                && !mask.contains(AddWatchFlags::IN_ISDIR)
                && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()))
        {
            self.open.entry(path).or_insert_with(Instant::now);
        }
    }

    /// inotify dropped events: what it said about open and closed files may be out of date, so
    /// every change waits for [`QUIET`] until it reports again.
    fn overflowed(&mut self) {
        self.open.clear();
        self.closed.clear();
    }

    /// Whether a file a scan found changed can be read now.
    fn ready(&mut self, path: &Path, stamp: Stamp) -> bool {
        if let Some(since) = self.open.get(path) {
            if since.elapsed() < WRITE_WAIT {
                return false;
            }
            tracing::warn!(file = %path.display(), "file still open for writing after {WRITE_WAIT:?}; reading it as it is");
            self.open.remove(path);
            return true;
        }
        if self.closed.contains(path) {
            self.unsettled.remove(path);
            return true;
        }
        let now = Instant::now();
        match self.unsettled.get(path) {
            Some(&(seen, since)) if seen == stamp => {
                if now.duration_since(since) < QUIET {
                    return false;
                }
                self.unsettled.remove(path);
                true
            }
            _ => {
                self.unsettled.insert(path.to_path_buf(), (stamp, now));
                false
            }
        }
    }

    /// Forgets what the scan just done made stale: closings it has acted on, and files it no
    /// longer lists.
    fn scanned(&mut self, seen: &HashSet<PathBuf>) {
        self.closed.clear();
        self.open.retain(|p, _| seen.contains(p));
        self.unsettled.retain(|p, _| seen.contains(p));
    }
}

/// inotify watches on the configuration directory and its subdirectories.
struct Notify {
    inotify: Inotify,
    /// The directories watched, by path.
    watched: HashMap<PathBuf, WatchDescriptor>,
    /// The paths of each watch. One directory reached by two paths has one watch, but the walk
    /// reads a directory under one path only, so this is nearly always one path.
    paths: HashMap<WatchDescriptor, Vec<PathBuf>>,
}

impl Notify {
    /// The watches, or `None` (and a log line) where inotify is not available: the provider
    /// then relies on its scans alone.
    fn start() -> Option<Notify> {
        match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
            Ok(inotify) => Some(Notify {
                inotify,
                watched: HashMap::new(),
                paths: HashMap::new(),
            }),
            Err(err) => {
                tracing::warn!(error = %err, "inotify unavailable; scanning the configuration directory every 250 ms");
                None
            }
        }
    }

    /// Watches every directory of `dirs` (the tree as last walked) not watched yet, and
    /// forgets the ones no longer in it.
    fn watch_dirs(&mut self, dirs: &[PathBuf]) {
        let wanted: HashSet<&PathBuf> = dirs.iter().collect();
        let gone: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|d| !wanted.contains(d))
            .cloned()
            .collect();
        for dir in gone {
            if let Some(wd) = self.watched.remove(&dir) {
                if let Some(paths) = self.paths.get_mut(&wd) {
                    paths.retain(|p| p != &dir);
                }
            }
        }
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF;
        for dir in dirs {
            if self.watched.contains_key(dir) {
                continue;
            }
            match self.inotify.add_watch(dir, mask) {
                Ok(wd) => {
                    self.watched.insert(dir.clone(), wd);
                    self.paths.entry(wd).or_default().push(dir.clone());
                }
                Err(err) => {
                    // Most likely fs.inotify.max_user_watches; the scans still see the change.
                    tracing::debug!(dir = %dir.display(), error = %err, "cannot watch directory");
                }
            }
        }
    }

    /// Forgets a watch whose directory went away or moved, so that the directory now at its
    /// path is watched afresh.
    fn forget(&mut self, wd: WatchDescriptor) {
        for path in self.paths.remove(&wd).unwrap_or_default() {
            self.watched.remove(&path);
        }
    }

    /// Blocks until inotify reports something (and a burst has settled) or `timeout` passes,
    /// and records in `writes` which files are being written.
    fn wait(&mut self, timeout: Duration, writes: &mut Writes) {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0) {
            return;
        }
        std::thread::sleep(SETTLE);
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    writes.overflowed();
                } else if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.forget(event.wd);
                } else if event.mask.contains(AddWatchFlags::IN_MOVE_SELF) {
                    // The watch follows the directory to its new place, where it is not wanted.
                    let _ = self.inotify.rm_watch(event.wd);
                    self.forget(event.wd);
                } else if let Some(name) = &event.name {
                    for dir in self.paths.get(&event.wd).into_iter().flatten() {
                        writes.event(dir.join(name), event.mask);
                    }
                }
            }
        }
    }
}

/// What one walk of the configuration tree found.
#[derive(Default)]
struct Tree {
    /// Manifest files, in path order, with their metadata (symlinks followed).
    files: Vec<(PathBuf, std::fs::Metadata)>,
    /// Directories, root first.
    dirs: Vec<PathBuf>,
    /// Directories skipped because the walk had already read them under another path.
    repeats: Vec<PathBuf>,
    /// Symlinks whose target cannot be reached.
    broken_links: Vec<PathBuf>,
    /// Manifest names that are neither a directory nor a regular file.
    not_regular: Vec<PathBuf>,
    /// Subdirectories that could not be listed, and why: what was read from them before stays.
    unreadable: Vec<(PathBuf, String)>,
}

/// Lists the manifest files and directories under `root`. Each directory is read once, known
/// by device and inode: a symlink back up the tree (`ln -s . again`) would otherwise be
/// followed until the path is too long to open, reading every file dozens of times, and two
/// such links make the walk exponential. Hidden entries are skipped: editor swap files and the
/// `..data` links of mounted config maps.
fn walk(root: &Path) -> std::io::Result<Tree> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root)?;
    let mut visited = HashSet::from([(meta.dev(), meta.ino())]);
    let mut tree = Tree::default();
    walk_dir(root, &mut visited, &mut tree)?;
    Ok(tree)
}

fn walk_dir(dir: &Path, visited: &mut HashSet<(u64, u64)>, tree: &mut Tree) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    tree.dirs.push(dir.to_path_buf());
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    // In name order, so that files come out in path order and, of two paths to one
    // directory, the same one is read at every scan.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let manifest = is_manifest_name(Path::new(&*name));
        let Ok(file_type) = entry.file_type() else {
            continue; // removed since listed
        };
        if file_type.is_file() && !manifest {
            continue; // saves a stat per file that is not a manifest
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            // Removed since listed, or a symlink to nothing: a file or a directory, what it
            // held is gone.
            if file_type.is_symlink() {
                tree.broken_links.push(path);
            }
            continue;
        };
        if meta.is_dir() {
            if visited.insert((meta.dev(), meta.ino())) {
                // One subdirectory that cannot be listed (its permissions, say) must not stop
                // the rest of the tree from being read.
                if let Err(err) = walk_dir(&path, visited, tree) {
                    tree.unreadable.push((path, err.to_string()));
                }
            } else {
                tree.repeats.push(path);
            }
        } else if manifest && meta.is_file() {
            tree.files.push((path, meta));
        } else if manifest {
            // Regular files only: reading a FIFO named `x.yaml` would block the watcher.
            tree.not_regular.push(path);
        }
    }
    Ok(())
}

/// The store's key for the duplicate-object errors of `path`, kept apart from the file's own
/// errors (which a reload of it replaces).
fn duplicates_source(path: &Path) -> String {
    format!("{} (duplicates)", path.display())
}

/// Whether the provider reads a file of this name: `*.yaml`, `*.yml` and `*.json` (JSON is
/// YAML), in any case, as `kubectl apply -f DIR` reads them.
fn is_manifest_name(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["yaml", "yml", "json"]
            .iter()
            .any(|m| e.eq_ignore_ascii_case(m))
    })
}

/// Reads a manifest file of `len` bytes (as listed) as text. The error says why not and whether
/// reading it again unchanged may succeed.
fn read_text(path: &Path, len: u64) -> Result<String, (String, bool)> {
    use std::io::Read;
    let too_big = |size: String| {
        format!(
            "file is {size}, more than the {} MiB a manifest file may have; split it into \
             several files",
            MAX_FILE_BYTES / (1024 * 1024)
        )
    };
    if len > MAX_FILE_BYTES {
        return Err((too_big(format!("{len} bytes")), false));
    }
    let file = std::fs::File::open(path).map_err(|e| (format!("cannot read file: {e}"), true))?;
    // The file may have grown since it was listed: read one byte past the limit to know.
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (format!("cannot read file: {e}"), true))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err((too_big("still growing".to_string()), false));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        (
            format!("file is not UTF-8 text (byte {at} is not); save it as UTF-8"),
            false,
        )
    })?;
    // A byte order mark (some Windows editors write one) is not part of the YAML.
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Parses a multi-document YAML text into objects. A syntax error anywhere fails the whole text
/// (with its line), since the documents after it cannot be trusted; a document that is valid YAML
/// but not a usable object (unknown kind, no name) is reported, with its number and the line it
/// starts on, and skipped. The provider itself refuses a file with any such document
/// (`read_manifests`); this lenient form is for tests that want the rest.
pub fn parse_manifests(text: &str) -> Result<(Vec<Object>, Vec<String>), String> {
    let (objects, errors) = parse_documents(text)?;
    let objects = objects.into_iter().map(|(_, _, object)| object).collect();
    Ok((objects, name_documents(text, errors)))
}

/// What the provider loads from a file: every object in it, or, when any document fails, only
/// the errors. A file is applied whole or not at all, like a file with a syntax error: serving
/// half of an edit (a route without the Service it was written beside, or a file whose
/// misspelt document silently deleted the object it held) is worse than serving the last good
/// version and saying why.
fn read_manifests(text: &str) -> Result<Vec<Object>, Vec<String>> {
    let (objects, mut errors) = parse_documents(text).map_err(|message| vec![message])?;
    for (index, item, object) in &objects {
        if let Err(message) = decode_spec(object) {
            let place = item.map_or(String::new(), |n| format!("items[{n}]: "));
            errors.push((*index, format!("{place}{message}")));
        }
    }
    errors.sort_by_key(|(index, _)| *index);
    if errors.is_empty() {
        Ok(objects.into_iter().map(|(_, _, object)| object).collect())
    } else {
        Err(name_documents(text, errors))
    }
}

/// Refuses an object whose fields have the wrong type, as the API server's schema validation
/// would before a cluster gateway ever sees it (`port: "eighty"`, an EndpointSlice address that
/// is not an IP address). The typed views are the ones the compiler reads ([`api`]), decoded the
/// same way, so that what loads here is what the compiler can use; a value it can read but does
/// not support (an unknown listener protocol) still loads and is reported through a condition.
/// Fields Kubernetes does not define are refused too, beside `spec` and in `metadata` as in it,
/// and so is a Gateway API object without a `spec`.
fn decode_spec(object: &Object) -> Result<(), String> {
    let spec = object.spec();
    let kind = object.key.kind;
    let who = object.key.to_string();
    let gateway_api = kind.group() == "gateway.networking.k8s.io";
    let api = if gateway_api {
        "the Gateway API"
    } else {
        "Kubernetes"
    };
    // The fields beside `metadata`: a misspelt `spec` would leave the object without one.
    let top: &[&str] = match kind {
        Kind::Secret => &["data", "stringData", "type", "immutable"],
        Kind::ConfigMap => &["data", "binaryData", "immutable"],
        Kind::EndpointSlice => &["addressType", "endpoints", "ports"],
        _ => &["spec", "status"],
    };
    // Misspelt fields, by their path from the object's top, gathered from every part of it
    // (beside `metadata`, in it, in `spec`) so that one pass over the file fixes them all.
    let beside_metadata = || ["apiVersion", "kind", "metadata"].iter().chain(top);
    let mut unknown: Vec<String> = (object.body.as_object().into_iter())
        .flat_map(|m| m.keys())
        .filter(|field| !beside_metadata().any(|known| known == field))
        .map(|field| with_meant(field, closest(field, beside_metadata().copied())))
        .collect();
    type Meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    unknown.extend(
        unknown_in::<Meta>(&object.body["metadata"])
            .into_iter()
            .map(|f| {
                let meant = closest(&f, OBJECT_META_FIELDS.iter().copied());
                with_meant(&format!("metadata.{f}"), meant)
            }),
    );
    let misspelt = |unknown: &[String]| {
        format!(
            "{who} has {} {api} does not define: {}; check the spelling (the API server \
             refuses unknown fields too)",
            a_field_or_fields(unknown),
            name_fields(unknown)
        )
    };
    // Every Gateway API kind requires its spec; without one the object would be served as
    // if emptied (a Gateway without listeners, a route without rules).
    if gateway_api && spec.is_null() {
        if !unknown.is_empty() {
            return Err(misspelt(&unknown));
        }
        return Err(format!(
            "{who} has no spec; every {kind} needs one (is `spec:` misspelt, or left empty?)"
        ));
    }
    // A value of the wrong type is said first; misspelt fields found so far go with it.
    let and_misspelt = |unknown: &[String]| {
        if unknown.is_empty() {
            String::new()
        } else {
            format!(
                "; it also has {} {api} does not define: {}",
                a_field_or_fields(unknown),
                name_fields(unknown)
            )
        }
    };
    let decoded = match kind {
        _ if spec.is_null() && kind != Kind::EndpointSlice => Ok(()),
        Kind::GatewayClass => api::read_at::<api::GatewayClassSpec>("spec", spec).map(drop),
        Kind::Gateway => api::read_at::<api::GatewaySpec>("spec", spec).map(drop),
        Kind::HttpRoute => api::read_at::<api::RouteSpec>("spec", spec).map(drop),
        Kind::GrpcRoute => api::read_at::<api::GrpcRouteSpec>("spec", spec).map(drop),
        Kind::TlsRoute => api::read_at::<api::TlsRouteSpec>("spec", spec).map(drop),
        Kind::ReferenceGrant => api::read_at::<api::ReferenceGrantSpec>("spec", spec).map(drop),
        Kind::BackendTlsPolicy => api::read_at::<api::BackendTlsPolicySpec>("spec", spec).map(drop),
        Kind::Service => api::read_at::<api::ServiceSpec>("spec", spec).map(drop),
        Kind::EndpointSlice => {
            let slice = api::read::<api::EndpointSlice>(&object.body).map_err(|e| {
                format!(
                    "{who} has a value of the wrong type: {e}{}",
                    and_misspelt(&unknown)
                )
            })?;
            type Slice = k8s_openapi::api::discovery::v1::EndpointSlice;
            for field in unknown_in::<Slice>(&object.body) {
                // Fields beside `metadata` are named already, maybe with the one meant.
                let named = |u: &String| {
                    u.strip_prefix(field.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(" (did you mean"))
                };
                if !unknown.iter().any(named) {
                    unknown.push(field);
                }
            }
            if !unknown.is_empty() {
                return Err(misspelt(&unknown));
            }
            return endpoint_slice_values(&who, &slice);
        }
        // Their data is read where it is used (a certificate, a CA bundle, labels), and a
        // problem there is reported on the object that refers to it.
        Kind::Namespace | Kind::Secret | Kind::ConfigMap => Ok(()),
    };
    decoded.map_err(|e| {
        format!(
            "{who} has a value of the wrong type: {e}{}",
            and_misspelt(&unknown)
        )
    })?;
    let pre_v1 = !object.body["apiVersion"]
        .as_str()
        .is_some_and(|v| v.ends_with("/v1"));
    let in_spec = unknown_fields(kind, spec);
    match in_spec.first() {
        // TLSRoute's `hostnames` became required in v1; earlier versions may leave it out.
        Some(missing)
            if missing.starts_with("missing field") && kind == Kind::TlsRoute && pre_v1 => {}
        Some(missing) if missing.starts_with("missing field") => {
            return Err(format!(
                "{who} spec lacks a field {api} requires: {missing}; check the spelling of the \
                 fields beside where it belongs{}",
                and_misspelt(&unknown)
            ))
        }
        _ => unknown.extend(in_spec.iter().map(|f| format!("spec.{f}"))),
    }
    if !unknown.is_empty() {
        return Err(misspelt(&unknown));
    }
    schema_rules(kind, &who, spec)
}

/// "a field" or "N fields", for an error naming `fields`.
fn a_field_or_fields(fields: &[String]) -> String {
    match fields.len() {
        1 => "a field".to_string(),
        n => format!("{n} fields"),
    }
}

/// The first eight of `fields`, comma-separated, saying how many more there are: enough to
/// fix a manifest in one pass without an error the size of the manifest.
fn name_fields(fields: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut named = fields[..fields.len().min(SHOWN)].join(", ");
    if fields.len() > SHOWN {
        named.push_str(&format!(" and {} more", fields.len() - SHOWN));
    }
    named
}

/// The API server's own checks on values of the right type that the compiler would otherwise
/// take as written: listener names unique within a Gateway (its list is keyed by name) and in
/// the API's `SectionName` form, listener and route hostnames in the API's `Hostname` form (so
/// `*` and `""` are refused, not read as catch-alls), ports, `allowedRoutes.namespaces.from`,
/// HTTPRoute match methods from the API's list (`get` would match nothing), GRPCRoute Exact
/// service and method names in the API's form. Every value that
/// fails is named, so that one pass over the manifest fixes them all.
fn schema_rules(kind: Kind, who: &str, spec: &Value) -> Result<(), String> {
    let list = |value: &Value| value.as_array().cloned().unwrap_or_default();
    // `path value problem`, one per value that fails.
    let mut problems: Vec<String> = Vec::new();
    let mut check = |path: String, result: Result<(), String>| {
        if let Err(e) = result {
            problems.push(format!("{path} {e}"));
        }
    };
    match kind {
        Kind::Gateway => {
            let mut seen = HashSet::new();
            let mut combinations = HashSet::new();
            for (i, listener) in list(&spec["listeners"]).iter().enumerate() {
                let at = format!("spec.listeners[{i}]");
                check(format!("{at}.port"), port(&listener["port"]));
                // The API's rules on `tls`: where it is read, it must be there; where it is
                // not, it must not be, or an HTTP listener written for HTTPS would serve in
                // cleartext without a word.
                let protocol = listener["protocol"].as_str().unwrap_or_default();
                let a = if protocol.starts_with('H') { "an" } else { "a" };
                let has_tls = !listener["tls"].is_null();
                if has_tls && ["HTTP", "TCP", "UDP"].contains(&protocol) {
                    check(
                        format!("{at}.tls"),
                        Err(format!(
                            "is set on {a} {protocol} listener, which does not use it: write \
                             protocol HTTPS (or TLS), or leave tls out (the API server refuses \
                             this too)"
                        )),
                    );
                }
                if !has_tls && ["HTTPS", "TLS"].contains(&protocol) {
                    check(
                        format!("{at}.tls"),
                        Err(format!(
                            "is missing: {a} {protocol} listener needs it (the API server refuses \
                             this too)"
                        )),
                    );
                }
                let combination = (
                    listener["port"].to_string(),
                    protocol.to_string(),
                    listener["hostname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                if !combinations.insert(combination) {
                    check(
                        at.clone(),
                        Err(
                            "has the port, protocol and hostname of an earlier listener; \
                             listeners of a Gateway differ in one of them at least (the API \
                             server refuses this too)"
                                .to_string(),
                        ),
                    );
                }
                if let Some(h) = listener["hostname"].as_str() {
                    check(format!("{at}.hostname"), hostname(h));
                }
                if let Some(from) = listener["allowedRoutes"]["namespaces"]["from"].as_str() {
                    let known = ["All", "Same", "Selector"].contains(&from);
                    check(
                        format!("{at}.allowedRoutes.namespaces.from"),
                        known
                            .then_some(())
                            .ok_or_else(|| format!("{from:?} is not All, Same or Selector")),
                    );
                }
                if let Some(name) = listener["name"].as_str() {
                    check(format!("{at}.name"), section_name(name));
                    let unique = seen.insert(name.to_string());
                    check(
                        format!("{at}.name"),
                        unique.then_some(()).ok_or_else(|| {
                            format!(
                                "{name:?} is the name of an earlier listener; give each \
                                 listener of a Gateway its own name (the API server refuses \
                                 this too)"
                            )
                        }),
                    );
                }
            }
        }
        Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute => {
            let rules = list(&spec["rules"]).len();
            if kind != Kind::TlsRoute && rules > 16 {
                check(
                    "spec.rules".to_string(),
                    Err(format!(
                        "has {rules} rules; a route has 16 at most (the API server refuses \
                         more): split it into several routes"
                    )),
                );
            }
            // The API's CEL rule on rule timeouts: one try may not outlast the whole request
            // (unless that is unbounded, 0s).
            for (i, rule) in list(&spec["rules"]).iter().enumerate() {
                let timeout = |field: &str| {
                    rule["timeouts"][field]
                        .as_str()
                        .and_then(|t| crate::routing::parse_duration(t).ok())
                        .flatten()
                };
                if let (Some(request), Some(backend)) =
                    (timeout("request"), timeout("backendRequest"))
                {
                    check(
                        format!("spec.rules[{i}].timeouts.backendRequest"),
                        (backend <= request).then_some(()).ok_or_else(|| {
                            format!(
                                "{backend:?} is longer than timeouts.request {request:?}: a \
                                 try cannot outlast the request (the API server refuses this \
                                 too)"
                            )
                        }),
                    );
                }
            }
            for (i, h) in list(&spec["hostnames"]).iter().enumerate() {
                check(
                    format!("spec.hostnames[{i}]"),
                    hostname(h.as_str().unwrap_or_default()).map_err(|e| {
                        format!("{e}; to serve every hostname, leave `hostnames` out")
                    }),
                );
            }
            for (i, parent) in list(&spec["parentRefs"]).iter().enumerate() {
                if !parent["port"].is_null() {
                    check(format!("spec.parentRefs[{i}].port"), port(&parent["port"]));
                }
                if let Some(name) = parent["sectionName"].as_str() {
                    check(
                        format!("spec.parentRefs[{i}].sectionName"),
                        section_name(name),
                    );
                }
            }
            for (i, rule) in list(&spec["rules"]).iter().enumerate() {
                for (j, backend) in list(&rule["backendRefs"]).iter().enumerate() {
                    if !backend["port"].is_null() {
                        check(
                            format!("spec.rules[{i}].backendRefs[{j}].port"),
                            port(&backend["port"]),
                        );
                    }
                    if !backend["weight"].is_null() {
                        check(
                            format!("spec.rules[{i}].backendRefs[{j}].weight"),
                            weight(&backend["weight"]),
                        );
                    }
                    let at = format!("spec.rules[{i}].backendRefs[{j}].filters");
                    for (path, problem) in filter_rules(&at, &list(&backend["filters"])) {
                        check(path, Err(problem));
                    }
                }
                let filters = list(&rule["filters"]);
                for (path, problem) in filter_rules(&format!("spec.rules[{i}].filters"), &filters) {
                    check(path, Err(problem));
                }
                let redirects = filters.iter().any(|f| f["type"] == "RequestRedirect");
                if redirects && !list(&rule["backendRefs"]).is_empty() {
                    check(
                        format!("spec.rules[{i}]"),
                        Err(
                            "has a RequestRedirect filter and backendRefs: a redirected request \
                             goes to no backend; remove one or the other (the API server \
                             refuses this too)"
                                .to_string(),
                        ),
                    );
                }
                if kind == Kind::GrpcRoute {
                    for (j, m) in list(&rule["matches"]).iter().enumerate() {
                        let at = format!("spec.rules[{i}].matches[{j}].method");
                        let exact = m["method"]["type"].as_str().unwrap_or("Exact") == "Exact";
                        if let (true, Some(service)) = (exact, m["method"]["service"].as_str()) {
                            check(format!("{at}.service"), grpc_name(service, true));
                        }
                        if let (true, Some(method)) = (exact, m["method"]["method"].as_str()) {
                            check(format!("{at}.method"), grpc_name(method, false));
                        }
                    }
                }
                if kind != Kind::HttpRoute {
                    continue;
                }
                for (j, m) in list(&rule["matches"]).iter().enumerate() {
                    if let Some(method) = m["method"].as_str() {
                        check(
                            format!("spec.rules[{i}].matches[{j}].method"),
                            http_method(method),
                        );
                    }
                }
            }
        }
        _ => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{who} {}", problems.join("; ")))
    }
}

/// Checks a list of route filters (a rule's, or a backendRef's) as the API's validation
/// does: one filter of each type at most (a CORS or mirror filter aside), not both a redirect
/// and a rewrite, and in a header modifier each header named once in `set`, once in `add` and
/// once in `remove`. Every problem is named, with its path under `at`.
fn filter_rules(at: &str, filters: &[Value]) -> Vec<(String, String)> {
    const TOO: &str = "(the API server refuses this too)";
    let mut problems = Vec::new();
    let count = |t: &str| filters.iter().filter(|f| f["type"] == t).count();
    for t in [
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
    ] {
        if count(t) > 1 {
            problems.push((
                at.to_string(),
                format!(
                    "have {} {t} filters: give one, with everything it does {TOO}",
                    count(t)
                ),
            ));
        }
    }
    if count("RequestRedirect") > 0 && count("URLRewrite") > 0 {
        problems.push((
            at.to_string(),
            format!(
                "have both a RequestRedirect and a URLRewrite filter: a request is either \
                 redirected, or rewritten and forwarded; keep one {TOO}"
            ),
        ));
    }
    // Each type's settings, in the field of its name: set for its type, and for no other.
    const SETTINGS: [(&str, &str); 8] = [
        ("RequestHeaderModifier", "requestHeaderModifier"),
        ("ResponseHeaderModifier", "responseHeaderModifier"),
        ("RequestMirror", "requestMirror"),
        ("RequestRedirect", "requestRedirect"),
        ("URLRewrite", "urlRewrite"),
        ("ExtensionRef", "extensionRef"),
        ("CORS", "cors"),
        ("ExternalAuth", "externalAuth"),
    ];
    for (i, f) in filters.iter().enumerate() {
        let type_ = f["type"].as_str().unwrap_or_default();
        for (owner, field) in SETTINGS {
            let given = f.get(field).is_some_and(|v| !v.is_null());
            if owner == type_ && !given {
                problems.push((
                    format!("{at}[{i}]"),
                    format!("is a {type_} filter without `{field}`: give its settings {TOO}"),
                ));
            } else if owner != type_ && given {
                problems.push((
                    format!("{at}[{i}].{field}"),
                    format!(
                        "is set on a {type_} filter, which does not read it: move it to a \
                         {owner} filter of its own {TOO}"
                    ),
                ));
            }
        }
        for field in ["requestHeaderModifier", "responseHeaderModifier"] {
            let modifier = &f[field];
            for action in ["set", "add", "remove"] {
                let mut seen = HashSet::new();
                let names = modifier[action].as_array().into_iter().flatten();
                for name in names.filter_map(|h| h["name"].as_str().or(h.as_str())) {
                    if !seen.insert(name) {
                        problems.push((
                            format!("{at}[{i}].{field}.{action}"),
                            format!("names {name:?} twice: name each header once {TOO}"),
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// Checks an Exact GRPCRoute match name as the API does: a method is an identifier
/// (`SayHello`), a service a dotted name of identifiers (`helloworld.Greeter`, a leading dot
/// allowed). Anything else would become a request path no gRPC client sends.
fn grpc_name(name: &str, service: bool) -> Result<(), String> {
    let identifier = |part: &str| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let ok = if service {
        let dotted = name.strip_prefix('.').unwrap_or(name);
        dotted.split('.').all(identifier)
    } else {
        identifier(name)
    };
    if ok {
        return Ok(());
    }
    let what = if service {
        "a service name: identifiers joined by dots, such as helloworld.Greeter"
    } else {
        "a method name: letters, digits and _, not starting with a digit, such as SayHello"
    };
    Err(format!("{name:?} is not {what}"))
}

/// Checks a match method against the API's list, which is upper case.
fn http_method(method: &str) -> Result<(), String> {
    if api::HTTP_METHODS.contains(&method) {
        return Ok(());
    }
    let upper = method.to_ascii_uppercase();
    let hint = if api::HTTP_METHODS.contains(&upper.as_str()) {
        format!(" (methods are upper case: write {upper})")
    } else {
        String::new()
    };
    Err(format!(
        "{method:?} is not one of {}{hint}",
        api::HTTP_METHODS.join(", ")
    ))
}

/// Checks a port number against the API's `PortNumber` type: 1 to 65535.
/// Checks a backendRef's weight against the API's bounds, 0 to 1,000,000.
fn weight(value: &Value) -> Result<(), String> {
    match value.as_i64() {
        Some(0..=crate::routing::MAX_WEIGHT) => Ok(()),
        _ => Err(format!(
            "{value} is not a weight: give 0 to {} (the API server refuses more too)",
            crate::routing::MAX_WEIGHT
        )),
    }
}

fn port(value: &Value) -> Result<(), String> {
    match value.as_i64() {
        Some(1..=65535) => Ok(()),
        _ => Err(format!("{value} is not a port: give 1 to 65535")),
    }
}

/// Checks a listener name, or a parentRef's `sectionName`, against the API's `SectionName`
/// type: the DNS-1123 subdomain rule of object names.
fn section_name(name: &str) -> Result<(), String> {
    if crate::controller::object::is_dns_name(name, false) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a section name: {}",
            crate::controller::object::SUBDOMAIN_RULE
        ))
    }
}

/// Checks a hostname against the API's `Hostname` type: lower case, at most 253 characters.
fn hostname(h: &str) -> Result<(), String> {
    if h.len() > 253 {
        return Err(format!(
            "is {} characters long; a hostname has at most 253",
            h.len()
        ));
    }
    if !api::valid_hostname(h) || h.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{h:?} is not a hostname: write a lower-case DNS name, optionally with a leading \
             `*.` label"
        ));
    }
    Ok(())
}

/// The fields of a Gateway API `spec` that the API does not define, by path
/// (`rules[0].backendRef`), found by decoding it into the complete types of the `gateway-api`
/// crate and seeing which fields do not come back out. A misspelt field would otherwise be
/// dropped without a word: `backendRef` for `backendRefs` leaves a rule without backends.
/// When a required field is absent, serde's `missing field` message is the one entry. Kinds
/// the crate does not hold, and specs it cannot decode for another reason (a value outside an
/// enum, which the compiler reports on the object), are not checked.
fn unknown_fields(kind: Kind, spec: &Value) -> Vec<String> {
    use gateway_api::apis::{experimental as x, standard};
    let known = match kind {
        Kind::GatewayClass => round_trip::<x::gatewayclasses::GatewayClassSpec>(spec),
        Kind::Gateway => round_trip::<x::gateways::GatewaySpec>(spec),
        Kind::HttpRoute => round_trip::<x::httproutes::HttpRouteSpec>(spec),
        Kind::GrpcRoute => round_trip::<x::grpcroutes::GrpcRouteSpec>(spec),
        Kind::TlsRoute => round_trip::<x::tlsroutes::TlsRouteSpec>(spec),
        Kind::ReferenceGrant => round_trip::<x::referencegrants::ReferenceGrantSpec>(spec),
        Kind::BackendTlsPolicy => {
            round_trip::<standard::backendtlspolicies::BackendTlsPolicySpec>(spec)
        }
        Kind::Service => round_trip::<k8s_openapi::api::core::v1::ServiceSpec>(spec),
        _ => Err(String::new()),
    };
    let mut out = Vec::new();
    match known {
        Ok(known) => {
            missing_fields(spec, &known, String::new(), &mut out);
            for field in &mut out {
                *field = with_meant(field, meant_field(kind, field));
            }
        }
        Err(missing) if !missing.is_empty() => out.push(missing),
        Err(_) => {}
    }
    out
}

/// The fields of an object's `metadata` (`ObjectMeta`), to say which one a misspelt one meant.
const OBJECT_META_FIELDS: &[&str] = &[
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// An unknown field's path, with the field it most likely meant, if any:
/// `rules[0].backendRef (did you mean backendRefs?)`.
fn with_meant(path: &str, meant: Option<String>) -> String {
    match meant {
        Some(meant) => format!("{path} (did you mean {meant}?)"),
        None => path.to_string(),
    }
}

/// The field that the Gateway API schema of `kind`'s spec defines beside the unknown field at
/// `path` (`rules[0].backendRef`) whose name is closest to it, when close enough to be the one
/// meant. The schema is that of the `gateway-api` crate's types, the ones [`unknown_fields`]
/// decodes with; other kinds get no suggestion.
fn meant_field(kind: Kind, path: &str) -> Option<String> {
    use gateway_api::apis::{experimental as x, standard};
    let schema = match kind {
        Kind::GatewayClass => schemars::schema_for!(x::gatewayclasses::GatewayClassSpec),
        Kind::Gateway => schemars::schema_for!(x::gateways::GatewaySpec),
        Kind::HttpRoute => schemars::schema_for!(x::httproutes::HttpRouteSpec),
        Kind::GrpcRoute => schemars::schema_for!(x::grpcroutes::GrpcRouteSpec),
        Kind::TlsRoute => schemars::schema_for!(x::tlsroutes::TlsRouteSpec),
        Kind::ReferenceGrant => schemars::schema_for!(x::referencegrants::ReferenceGrantSpec),
        Kind::BackendTlsPolicy => {
            schemars::schema_for!(standard::backendtlspolicies::BackendTlsPolicySpec)
        }
        _ => return None,
    };
    let root = schema.as_value();
    let (parent, name) = match path.rsplit_once('.') {
        Some((parent, name)) => (Some(parent), name),
        None => (None, path),
    };
    let mut at = definition(root, root)?;
    for segment in parent.into_iter().flat_map(|p| p.split('.')) {
        // `rules[0]`: the field, then one level of `items` per index.
        let mut parts = segment.split('[');
        let field = parts.next()?;
        at = definition(root, at.get("properties")?.get(field)?)?;
        for _index in parts {
            at = definition(root, at.get("items")?)?;
        }
    }
    let known = at.get("properties")?.as_object()?;
    closest(name, known.keys().map(String::as_str))
}

/// The schema `schema` stands for: a `$ref` followed into the root's `$defs`, and an optional
/// value (`anyOf` the type and `null`) taken as its type.
fn definition<'a>(root: &'a Value, mut schema: &'a Value) -> Option<&'a Value> {
    loop {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.strip_prefix("#/$defs/")?;
            schema = root.get("$defs")?.get(name)?;
        } else if schema.get("properties").is_none() && schema.get("items").is_none() {
            let choices = schema.get("anyOf").or_else(|| schema.get("oneOf"));
            let not_null = |s: &&Value| s.get("type").and_then(Value::as_str) != Some("null");
            schema = choices?.as_array()?.iter().find(not_null)?;
        } else {
            return Some(schema);
        }
    }
}

/// Of `known`, the name closest to `name` in edits (a letter added, dropped or changed, two
/// neighbours swapped; case aside), when it is close enough to be a misspelling of it: one
/// edit for a short name, two from seven letters on.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    let name: Vec<char> = name.to_ascii_lowercase().chars().collect();
    let most = if name.len() >= 7 { 2 } else { 1 };
    known
        .map(|k| {
            let k_lower: Vec<char> = k.to_ascii_lowercase().chars().collect();
            (edits(&name, &k_lower), k)
        })
        .filter(|(d, _)| *d <= most)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_string())
}

/// The edit distance between `a` and `b` that counts a swap of two neighbours as one edit
/// (optimal string alignment).
fn edits(a: &[char], b: &[char]) -> usize {
    // d[i][j]: the distance between the first i characters of a and the first j of b.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let changed = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + changed);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The fields of `value` that type `T` does not define, by path; none when `value` does not
/// decode as `T` at all (another check reports that).
fn unknown_in<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(known) = round_trip::<T>(value) {
        missing_fields(value, &known, String::new(), &mut out);
    }
    out
}

/// `value` decoded as `T` and encoded again: what `T` knows of it.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &Value,
) -> Result<Value, String> {
    match serde_json::from_value::<T>(value.clone()) {
        Ok(typed) => serde_json::to_value(typed).map_err(|_| String::new()),
        // A required field that is absent (most often misspelt: `protcol`) is refused, as the
        // API server refuses it. A value outside an enum is left to the compiler, which
        // reports it on the object.
        Err(e) if e.to_string().starts_with("missing field") => Err(e.to_string()),
        Err(_) => Err(String::new()),
    }
}

/// Adds to `out` each field of `given` (a null one aside) that `known` lacks, by path.
fn missing_fields(given: &Value, known: &Value, path: String, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => {
            for (name, value) in given {
                let field = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                match known.get(name) {
                    _ if value.is_null() => {}
                    Some(known) => missing_fields(value, known, field, out),
                    None => out.push(field),
                }
            }
        }
        (Value::Array(given), Value::Array(known)) if given.len() == known.len() => {
            for (i, (g, k)) in given.iter().zip(known).enumerate() {
                missing_fields(g, k, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks a slice as the API server does: every port number is 1 to 65535, port names are DNS
/// labels, protocols TCP, UDP or SCTP, and every address is an IP address of its
/// `addressType`. The addresses of FQDN slices, which the gateway does
/// not use, are let through unchecked.
fn endpoint_slice_values(who: &str, slice: &api::EndpointSlice) -> Result<(), String> {
    let mut names = HashSet::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // Ports are found by name: a second port of one name would never be used.
        if !names.insert(p.name.as_deref().unwrap_or("")) {
            return Err(format!(
                "{who} ports[{i}]: a second port named {:?}; give each port of a slice its \
                 own name, that of the Service port it stands for",
                p.name.as_deref().unwrap_or("")
            ));
        }
        if let Some(number) = p.port {
            port(&Value::from(number)).map_err(|e| format!("{who} ports[{i}].port {e}"))?;
        }
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            if !crate::controller::object::is_dns_name(name, true) {
                return Err(format!(
                    "{who} ports[{i}].name {name:?} is not a port name: {}, as the Service \
                     port it stands for",
                    crate::controller::object::LABEL_RULE
                ));
            }
        }
        if let Some(protocol) = p.protocol.as_deref() {
            if !["TCP", "UDP", "SCTP"].contains(&protocol) {
                return Err(format!(
                    "{who} ports[{i}].protocol {protocol:?} is not TCP, UDP or SCTP"
                ));
            }
        }
    }
    let parses: fn(&str) -> bool = match slice.address_type.as_str() {
        "IPv4" => |a| a.parse::<std::net::Ipv4Addr>().is_ok(),
        "IPv6" => |a| a.parse::<std::net::Ipv6Addr>().is_ok(),
        "FQDN" => return Ok(()),
        other => {
            return Err(format!(
                "{who} addressType {other:?} is not IPv4, IPv6 or FQDN"
            ))
        }
    };
    for (i, endpoint) in slice.endpoints.iter().flatten().enumerate() {
        for address in &endpoint.addresses {
            if !parses(address) {
                return Err(format!(
                    "{who} endpoints[{i}] address {address:?} is not an {} address",
                    slice.address_type
                ));
            }
        }
    }
    Ok(())
}

/// A document's value, read with each key of a mapping at most once. YAML allows a key once
/// per mapping, and the API server refuses an object that repeats a field; read as plain JSON
/// values, the last of two `rules:` would silently replace the first.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor).map(Unique)
    }
}

/// A mapping key as JSON has it, whatever YAML scalar it was written as: `1` is `"1"`, `true`
/// is `"true"`, `~` and `null` are `"null"` (as the API server's YAML reader takes them), so
/// that two keys it would read as one are one here too.
struct Key(String);

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = String;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping key: a string, number, boolean or null")
            }
            fn visit_str<E>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }
            fn visit_string<E>(self, v: String) -> Result<String, E> {
                Ok(v)
            }
            fn visit_bool<E>(self, v: bool) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_i64<E>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_u64<E>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_f64<E>(self, v: f64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_unit<E>(self) -> Result<String, E> {
                Ok("null".to_owned())
            }
            fn visit_none<E>(self) -> Result<String, E> {
                Ok("null".to_owned())
            }
        }
        deserializer.deserialize_any(KeyVisitor).map(Key)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML value that JSON can hold")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Value, E> {
        <serde_json::Number as serde::Deserialize>::deserialize(
            serde::de::value::I128Deserializer::new(v),
        )
        .map(Value::Number)
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Value, E> {
        <serde_json::Number as serde::Deserialize>::deserialize(
            serde::de::value::U128Deserializer::new(v),
        )
        .map(Value::Number)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        // A whole float is a whole number, as kubectl's YAML reader sends it (`port: 80.0` is
        // 80) and as the API server's schema check takes it for an integer field: up to 2^53,
        // where a float stops holding every whole number.
        const EXACT: f64 = 9_007_199_254_740_991.0;
        if v.fract() == 0.0 && v.abs() <= EXACT {
            // The cast is exact: `v` is whole and within i64.
            return Ok(Value::Number((v as i64).into()));
        }
        // NaN and the infinities have no JSON number, and the API server refuses them; read as
        // null, a `weight: .nan` was served as no weight given.
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format_args!("{v} is no number JSON can hold")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(Key(key)) = map.next_key()? {
            if fields.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key {key:?} appears twice in one mapping; keep one (YAML allows a key \
                     once per mapping)"
                )));
            }
            let Unique(value) = map.next_value()?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// Removes every object field whose value is null, at any depth.
fn drop_null_fields(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.retain(|_, v| !v.is_null());
            fields.values_mut().for_each(drop_null_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_fields),
        _ => {}
    }
}

/// How deep a chain of merge keys (a mapping merged into one that is merged in turn) is
/// followed.
const MERGE_PASSES: usize = 16;

/// The objects of a text and the documents that failed, each with its number from 0; an
/// object that is an item of a `kind: List` also with its place in `items` (the outer list's,
/// for an item of a List inside it: see [`list_items`]).
#[allow(
    clippy::type_complexity,
    reason = "private, and read right where it is built"
)]
fn parse_documents(
    text: &str,
) -> Result<(Vec<(usize, Option<usize>, Object)>, Vec<(usize, String)>), String> {
    use serde::Deserialize;
    // A byte order mark, as some Windows editors write, is not part of the YAML.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Merge keys (`<<: *defaults`) are applied as kubectl applies them. They need the YAML
    // value first, so only a text that may hold one pays for it.
    let merges = text.contains("<<");
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let read = if merges {
            serde_yaml::Value::deserialize(document).and_then(|mut yaml| {
                // One pass leaves the `<<` of a mapping that was itself merged in (a chain
                // of merges): repeat until nothing changes.
                for _ in 0..MERGE_PASSES {
                    let before = yaml.clone();
                    yaml.apply_merge()?;
                    if yaml == before {
                        break;
                    }
                }
                Unique::deserialize(yaml).map(|unique| unique.0)
            })
        } else {
            Unique::deserialize(document).map(|unique| unique.0)
        };
        let value = match read {
            Ok(value) => value,
            Err(err) => {
                let at = err.location();
                // serde_yaml's message already ends its problem with " at line L column C";
                // the location is given once, up front, as in every other error here.
                let message = match &at {
                    Some(at) => err.to_string().replacen(
                        &format!(" at line {} column {}", at.line(), at.column()),
                        "",
                        1,
                    ),
                    None => err.to_string(),
                };
                let place = at.as_ref().map_or(String::new(), |at| {
                    format!(" at line {}, column {}", at.line(), at.column())
                });
                // A key written twice reads as one the other way, or not at all: it refuses
                // the file, as a syntax error does, with a message that says which.
                let duplicate = message.contains("appears twice in one mapping")
                    || message.contains("duplicate entry");
                if !duplicate && is_yaml(text, index) {
                    // Well-formed YAML that JSON cannot hold, such as a list as a mapping key
                    // or a custom `!tag`: this document is wrong, the rest can be read.
                    errors.push((index, format!("value of the wrong type{place}: {message}")));
                    continue;
                }
                let what = if duplicate {
                    "duplicate key"
                } else {
                    "YAML syntax error"
                };
                return Err(match at {
                    Some(_) => format!("{what}{place}: {message}"),
                    None => format!("{what} in document {}: {message}", index + 1),
                });
            }
        };
        if value.is_null() {
            continue; // an empty document between two `---`
        }
        // A field written without a value (`hostnames:` from a template that rendered
        // nothing) is absent, as the API server takes it.
        let mut value = value;
        drop_null_fields(&mut value);
        // `kubectl get -o yaml` writes several objects as one `kind: List` document; each of
        // its items loads as a document of its own would.
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let api_version = value.get("apiVersion").and_then(Value::as_str);
            if api_version != Some("v1") {
                errors.push((
                    index,
                    format!(
                        "a `kind: List` has apiVersion v1, not {}",
                        api_version.map_or("none".to_string(), |v| format!("{v:?}"))
                    ),
                ));
                continue;
            }
            if !value.get("items").is_some_and(Value::is_array) {
                errors.push((index, "a `kind: List` needs an `items` list".to_string()));
                continue;
            }
        } else {
            // A typed list (`kind: HTTPRouteList`, as the API server answers a list request)
            // of a kind read here: its items may leave out the apiVersion and kind it gives.
            let typed_list = (value.get("kind").and_then(Value::as_str))
                .and_then(|k| k.strip_suffix("List"))
                .zip(value.get("apiVersion").and_then(Value::as_str))
                .filter(|(kind, api_version)| {
                    matches!(super::Kind::from_type(api_version, kind), Ok(Some(_)))
                })
                .map(|(kind, _)| kind.to_string());
            let Some(kind) = typed_list else {
                match Object::from_document(value) {
                    Ok(Some(object)) => objects.push((index, None, object)),
                    Ok(None) => {}
                    Err(err) => errors.push((index, err.to_string())),
                }
                continue;
            };
            if !value.get("items").is_some_and(Value::is_array) {
                errors.push((index, format!("a `kind: {kind}List` needs an `items` list")));
                continue;
            }
        }
        // Each item loads as a document of its own would; a list inside is read through, as
        // `kubectl` reads it.
        let mut flat = Vec::new();
        list_items(&value, None, &mut flat);
        for (n, item) in flat {
            match Object::from_document(item) {
                Ok(Some(object)) => objects.push((index, Some(n), object)),
                Ok(None) => {}
                Err(err) => errors.push((index, format!("items[{n}]: {err}"))),
            }
        }
    }
    Ok((objects, errors))
}

/// Whether document `index` of `text` is well-formed YAML, whatever its values. Asked only
/// after reading it as JSON values failed, to tell a syntax error from a type error.
fn is_yaml(text: &str, index: usize) -> bool {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .nth(index)
        .is_some_and(|document| serde_yaml::Value::deserialize(document).is_ok())
}

/// Error messages for failed documents, each naming the document and the line it starts on.
fn name_documents(text: &str, errors: Vec<(usize, String)>) -> Vec<String> {
    if errors.is_empty() {
        return Vec::new();
    }
    let lines = document_lines(text);
    errors
        .into_iter()
        .map(|(index, err)| match lines.get(index).copied().flatten() {
            Some(line) => format!("document {} (line {line}): {err}", index + 1),
            None => format!("document {}: {err}", index + 1),
        })
        .collect()
}

/// The line each document of `text` starts on (its first node), by document number from 0;
/// `None` for an empty document. serde_yaml keeps the positions of a document's nodes to
/// itself, but an error it raises while reading one carries the position of the node it
/// stopped at: reading a document as `()` fails on its first node. Run only for a text with
/// a bad document, so a good file is parsed once.
fn document_lines(text: &str) -> Vec<Option<usize>> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|document| {
            <()>::deserialize(document)
                .err()
                .and_then(|err| err.location())
                .map(|at| at.line())
        })
        .collect()
}

/// The current time as Kubernetes writes timestamps (RFC 3339, second precision, UTC).
pub fn now_rfc3339() -> String {
    // Whole seconds, cut rather than rounded: a rounded-up time would lie in the future.
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Adds the items of `list` (a v1 `kind: List`, or a typed list of a kind read here, such as
/// `kind: HTTPRouteList`) to `out`, each with its place in `list`, or with `place` when `list`
/// is itself an item of another. An item of a typed list may leave out the apiVersion and kind
/// the list gives. An item that is itself a list adds its items in its stead, at its place,
/// and so on down.
fn list_items(list: &Value, place: Option<usize>, out: &mut Vec<(usize, Value)>) {
    let kind = list.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = list
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let typed = kind.strip_suffix("List").filter(|k| !k.is_empty());
    for (n, item) in list["items"].as_array().into_iter().flatten().enumerate() {
        let mut item = item.clone();
        if let (Some(of), Some(fields)) = (typed, item.as_object_mut()) {
            fields
                .entry("apiVersion")
                .or_insert_with(|| Value::from(api_version));
            fields.entry("kind").or_insert_with(|| Value::from(of));
        }
        let at = place.unwrap_or(n);
        if is_list(&item) {
            list_items(&item, Some(at), out);
        } else {
            out.push((at, item));
        }
    }
}

/// Whether `value` is a list whose items [`list_items`] reads: a v1 `kind: List`, or a typed
/// list of a kind read here, with `items`.
fn is_list(value: &Value) -> bool {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let of_kind = match kind.strip_suffix("List") {
        Some("") => api_version == "v1",
        Some(k) => matches!(super::Kind::from_type(api_version, k), Ok(Some(_))),
        None => false,
    };
    of_kind && value.get("items").is_some_and(Value::is_array)
}

#[cfg(test)]
mod tests {
    /// GRPCRoute Exact match names are checked as the API server checks them; a pattern
    /// (RegularExpression) is not.
    #[test]
    fn grpc_match_names_are_checked_as_the_api_checks_them() {
        let spec = |service: &str, method: &str, type_: &str| {
            serde_json::json!({"rules": [{"matches": [{"method": {
                "type": type_, "service": service, "method": method}}]}]})
        };
        let check = |spec: serde_json::Value| schema_rules(Kind::GrpcRoute, "GRPCRoute n/g", &spec);
        assert!(check(spec("helloworld.Greeter", "SayHello", "Exact")).is_ok());
        assert!(check(spec(".pkg.v1.Svc", "_do_it2", "Exact")).is_ok());
        let err = check(spec("a b", "a/b", "Exact")).unwrap_err();
        assert!(
            err.contains("matches[0].method.service \"a b\" is not a service name")
                && err.contains("matches[0].method.method \"a/b\" is not a method name"),
            "{err}"
        );
        assert!(check(spec("pkg..Svc", "M", "Exact")).is_err());
        assert!(check(spec("1pkg.Svc", "M", "Exact")).is_err());
        assert!(check(spec("pkg.*", "Say.*", "RegularExpression")).is_ok());
    }

    use super::*;

    #[test]
    fn a_misspelt_field_names_the_field_of_the_schema_it_most_likely_meant() {
        let meant = |kind, path| meant_field(kind, path);
        let cases = [
            (Kind::HttpRoute, "rules[0].matches[0].pth", Some("path")),
            (
                Kind::HttpRoute,
                "rules[0].backendRefs[0].wieght",
                Some("weight"),
            ),
            (
                Kind::HttpRoute,
                "rules[0].filters[0].requestHeaderModifer",
                Some("requestHeaderModifier"),
            ),
            (Kind::HttpRoute, "parentRef", Some("parentRefs")),
            (
                Kind::Gateway,
                "listeners[0].allowedRoute",
                Some("allowedRoutes"),
            ),
            (
                Kind::Gateway,
                "listeners[0].tls.certificateRef",
                Some("certificateRefs"),
            ),
            (
                Kind::GrpcRoute,
                "rules[0].matches[0].method.servce",
                Some("service"),
            ),
            // Case aside.
            (Kind::HttpRoute, "Hostnames", Some("hostnames")),
            // Too far from any field to guess.
            (Kind::HttpRoute, "rules[0].frobnicate", None),
            (Kind::HttpRoute, "rules[0].matches[0].x", None),
            // A path the schema does not have, and a kind without one.
            (Kind::HttpRoute, "nowhere[0].pth", None),
            (Kind::Service, "prots", None),
        ];
        for (kind, path, want) in cases {
            assert_eq!(meant(kind, path).as_deref(), want, "{kind:?} {path}");
        }
    }

    #[test]
    fn syntax_error_names_the_line() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  labels: [oops\n";
        let err = parse_manifests(text).unwrap_err();
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn syntax_error_names_its_location_once() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n";
        let err = parse_manifests(text).unwrap_err();
        assert!(
            err.starts_with("YAML syntax error at line 5, column 1: "),
            "{err}"
        );
        assert!(!err.contains("line 5 column 1"), "{err}");
    }

    #[test]
    fn a_bad_document_is_named_with_the_line_it_starts_on() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n# no name\n\
                    apiVersion: v1\nkind: Service\nmetadata: {namespace: n}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert_eq!(objects.len(), 1);
        assert!(
            errors[0].starts_with("document 2 (line 6): "),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn json_files_and_upper_case_extensions_are_manifests() {
        for (name, read) in [
            ("a.yaml", true),
            ("a.yml", true),
            ("a.json", true),
            ("a.YAML", true),
            ("a.Json", true),
            ("a.yaml.bak", false),
            ("a.txt", false),
            ("yaml", false),
        ] {
            assert_eq!(is_manifest_name(Path::new(name)), read, "{name}");
        }
        // JSON as `kubectl get -o json` writes it, indented with tabs too.
        let text = "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"Service\",\n\t\
                    \"metadata\": {\"name\": \"a\", \"namespace\": \"n\"}\n}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects[0].key.name, "a");
    }

    #[test]
    fn the_items_of_a_list_load_as_documents() {
        // As `kubectl get services -o yaml` writes them.
        let text = "apiVersion: v1\nkind: List\nitems:\n\
                    - {apiVersion: v1, kind: Service, metadata: {name: a, namespace: n}}\n\
                    - {apiVersion: v1, kind: Service, metadata: {name: b, namespace: n}}\n\
                    ---\napiVersion: v1\nkind: Service\nmetadata: {name: c}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<&str> = objects.iter().map(|o| o.key.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // So is a typed list inside it, its items taking their kind from it.
        let text = "apiVersion: v1\nkind: List\nitems:\n\
                    - apiVersion: gateway.networking.k8s.io/v1\n  kind: HTTPRouteList\n  items:\n\
                    \x20 - {metadata: {name: r1, namespace: n}, spec: {}}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].key.name, "r1");
        assert_eq!(objects[0].key.kind, super::super::Kind::HttpRoute);

        // An item without a name is named by its place in the list.
        let text = "apiVersion: v1\nkind: List\nitems:\n\
                    - {apiVersion: v1, kind: Service, metadata: {name: a}}\n\
                    - {apiVersion: v1, kind: Service, metadata: {}}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert_eq!(objects.len(), 1);
        assert!(errors[0].contains("items[1]: "), "{}", errors[0]);
        let err = parse_manifests("apiVersion: v1\nkind: List\n").unwrap().1;
        assert!(err[0].contains("needs an `items` list"), "{}", err[0]);

        // A List inside a List is read through, as kubectl reads it.
        let text = "apiVersion: v1\nkind: List\nitems:\n\
                    - {apiVersion: v1, kind: Service, metadata: {name: a, namespace: n}}\n\
                    - apiVersion: v1\n  kind: List\n  items:\n\
                    \x20 - {apiVersion: v1, kind: Service, metadata: {name: b, namespace: n}}\n\
                    \x20 - {apiVersion: v1, kind: List, items: [\
                    {apiVersion: v1, kind: Service, metadata: {name: c, namespace: n}}]}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<&str> = objects.iter().map(|o| o.key.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);

        // A typed list, as the API server answers a list request: its items take their
        // apiVersion and kind from it.
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRouteList\nitems:\n\
                    - {metadata: {name: r1, namespace: n}, spec: {}}\n\
                    - {metadata: {name: r2, namespace: n}, spec: {}}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<String> = objects.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(names, ["HTTPRoute n/r1", "HTTPRoute n/r2"]);
    }

    #[test]
    fn unknown_kind_is_reported_and_the_rest_loads() {
        // Kinds the gateway does not read are left alone, as objects for others to read;
        // one whose name is a near miss of a kind it reads is a misspelling, and refused.
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
                    apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: b}\n---\n\
                    apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: c}\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\n\
                    metadata: {name: d}\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1\nkind: Gatway\nmetadata: {name: e}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains(
                "unsupported kind Gatway (gateway.networking.k8s.io/v1); did you \
                                mean Gateway?"
            ),
            "{}",
            errors[0]
        );
        // Kinds of another project's group that share a name with one read here are theirs:
        // left alone, as the rest of the file loads.
        let text = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: a}\n---\n\
                    apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: {name: b}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: c}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert_eq!((objects.len(), errors.len()), (1, 0), "{errors:?}");
        // A typo in a Kubernetes group is not another project's group.
        let text =
            "apiVersion: gateway.networking.k8s.i/v1\nkind: HTTPRoute\nmetadata: {name: r}\n";
        assert_eq!(parse_manifests(text).unwrap().1.len(), 1);
        // A kind the gateway reads, under the wrong apiVersion, is told where it belongs.
        let text = "apiVersion: totally/bogus\nkind: HTTPRoute\nmetadata: {name: r}\n";
        let errors = parse_manifests(text).unwrap().1;
        assert!(
            errors[0].contains(
                "HTTPRoute belongs to API group gateway.networking.k8s.io \
                 (apiVersion gateway.networking.k8s.io/v1"
            ),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_merge_keys_are_applied() {
        let text = "\u{feff}apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: n}\n";
        assert_eq!(read_manifests(text).map(|o| o.len()), Ok(1));
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: n}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata:\n  <<: &base {name: a, namespace: n}\n  \
                    name: b\n";
        let objects = read_manifests(text).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].key.name, "b");
        // A chain: a mapping merged into one that is merged in turn.
        let text = "apiVersion: v1\nkind: List\nitems:\n\
                    - &a {apiVersion: v1, kind: Service, metadata: {name: a, namespace: n}}\n\
                    - &b {<<: *a, kind: ConfigMap}\n\
                    - {<<: *b, metadata: {name: c, namespace: n}}\n";
        let objects = read_manifests(text).unwrap();
        assert_eq!(objects.len(), 3);
        assert_eq!(objects[2].key.to_string(), "ConfigMap n/c");
        assert!(objects[2].body.get("<<").is_none());
        assert_eq!(objects[1].key.namespace, "n");
        assert!(objects[1].body["metadata"].get("<<").is_none());
    }

    #[test]
    fn a_key_written_twice_in_one_mapping_refuses_the_file() {
        // The second `rules:` used to replace the first without a word.
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                    metadata: {name: r, namespace: n}\nspec:\n  \
                    rules:\n  - backendRefs: [{name: a, port: 80}]\n  \
                    rules:\n  - backendRefs: [{name: b, port: 80}]\n";
        let errors = read_manifests(text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("spec: the key \"rules\" appears twice in one mapping"),
            "{}",
            errors[0]
        );
        // The same through a merge key, which reads the document another way.
        let text = "apiVersion: v1\nkind: Service\n\
                    metadata: {<<: {namespace: n}, name: a, name: b}\n";
        let errors = read_manifests(text).unwrap_err();
        assert!(errors[0].contains("duplicate entry"), "{}", errors[0]);
        // Keys JSON holds as one string are one key, with a merge key in the file or without.
        for labels in [
            "{~: a, null: b}",
            "{1: a, \"1\": b}",
            "{true: a, \"true\": b}",
        ] {
            for tail in ["", "# <<\n"] {
                let text = format!(
                    "apiVersion: v1\nkind: Service\n\
                     metadata: {{name: a, namespace: n, labels: {labels}}}\n{tail}"
                );
                let errors = read_manifests(&text).unwrap_err();
                assert!(
                    errors[0].starts_with("duplicate key"),
                    "{labels}: {errors:?}"
                );
            }
        }
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: n, \
                    labels: {1: a, 2: b}}\n";
        assert_eq!(read_manifests(text).map(|o| o.len()), Ok(1));
        // NaN has no JSON number: refused, not read as no value at all.
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: n}\n\
                    spec: {ports: [{port: .nan}]}\n";
        let errors = read_manifests(text).unwrap_err();
        assert!(
            errors[0].contains("NaN is no number JSON can hold"),
            "{errors:?}"
        );
        // A whole float is a whole number, as kubectl sends it; a fraction is no port.
        let service = |port: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: a, namespace: n}}\n\
                 spec: {{ports: [{{port: {port}}}]}}\n"
            )
        };
        let objects = read_manifests(&service("80.0")).unwrap();
        assert_eq!(
            objects[0].body["spec"]["ports"][0]["port"],
            serde_json::json!(80)
        );
        let objects = read_manifests(&service("-0.0")).unwrap();
        assert_eq!(
            objects[0].body["spec"]["ports"][0]["port"],
            serde_json::json!(0)
        );
        for port in ["80.5", "1e20"] {
            let errors = read_manifests(&service(port)).unwrap_err();
            assert!(errors[0].ends_with("expected a whole number"), "{errors:?}");
        }
        // Keys that differ only in case are two keys, as they are to the API server.
        let text = "apiVersion: v1\nkind: Service\n\
                    metadata: {name: a, namespace: n, labels: {tier: a, Tier: b}}\n";
        assert_eq!(read_manifests(text).map(|o| o.len()), Ok(1));
    }

    #[test]
    fn errors_in_a_list_item_name_the_item_and_a_list_is_v1() {
        let text = "apiVersion: v1\nkind: List\nitems:\n\
                    - {apiVersion: v1, kind: Service, metadata: {name: a, namespace: n}}\n\
                    - apiVersion: gateway.networking.k8s.io/v1\n  kind: HTTPRoute\n  \
                    metadata: {name: r, namespace: n}\n  spec: {hostnames: ['*']}\n";
        let errors = read_manifests(text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "document 1 (line 1): items[1]: HTTPRoute n/r spec.hostnames[0] \"*\" is not"
            ),
            "{}",
            errors[0]
        );
        let text = "apiVersion: example.com/v7\nkind: List\nitems: []\n";
        let errors = read_manifests(text).unwrap_err();
        assert!(
            errors[0].contains("a `kind: List` has apiVersion v1, not \"example.com/v7\""),
            "{}",
            errors[0]
        );
    }

    /// Names the API server refuses are refused here, quoted so that a control character
    /// cannot forge a log line; valid ones of every shape load.
    #[test]
    fn names_and_namespaces_the_api_server_refuses_are_refused() {
        let route = |name: &str, namespace: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: {name}, namespace: {namespace}}}\nspec: {{}}\n"
            )
        };
        for (name, namespace) in [
            ("r.v1-a", "team-a"),
            ("0r", "n"),
            (&"a".repeat(253)[..], "n"),
        ] {
            let (objects, errors) = parse_manifests(&route(name, namespace)).unwrap();
            assert!(errors.is_empty(), "{name}: {errors:?}");
            assert_eq!(objects.len(), 1);
        }
        for (name, namespace, says) in [
            (
                "\"r\\n2026 INFO fake\"",
                "n",
                r#"metadata.name "r\n2026 INFO fake" is not a valid name"#,
            ),
            ("Route", "n", r#"metadata.name "Route" is not"#),
            ("r/x", "n", r#"metadata.name "r/x" is not"#),
            ("rüte", "n", r#"metadata.name "rüte" is not"#),
            ("-r", "n", r#"metadata.name "-r" is not"#),
            (
                "r",
                "a.b",
                r#"metadata.namespace "a.b" is not a valid name: use at most 63"#,
            ),
            (&"a".repeat(254)[..], "n", "use at most 253"),
        ] {
            let errors = parse_manifests(&route(name, namespace)).unwrap().1;
            assert_eq!(errors.len(), 1, "{name}");
            assert!(errors[0].contains(says), "{errors:?}");
            assert!(!errors[0].contains('\n'), "{errors:?}");
        }
        // A Service name is a DNS label: no dots.
        let errors = parse_manifests(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a.b, namespace: n}\nspec: {}\n",
        )
        .unwrap()
        .1;
        assert!(
            errors[0].contains("metadata.name \"a.b\" is not a valid name"),
            "{errors:?}"
        );
    }

    #[test]
    fn values_outside_the_api_s_types_are_refused_where_they_are_written() {
        let gateway = |listener: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                 metadata: {{name: gw, namespace: n}}\n\
                 spec: {{gatewayClassName: c, listeners: [{listener}]}}\n"
            )
        };
        let route = |parent: &str, metadata: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: r, namespace: n{metadata}}}\nspec: {{parentRefs: [{parent}]}}\n"
            )
        };
        let slice = |port: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: s, namespace: n}}\naddressType: IPv4\n\
                 endpoints: [{{addresses: [127.0.0.1]}}]\nports: [{{port: {port}}}]\n"
            )
        };
        for (text, says) in [
            (
                gateway("{name: HTTP_1, port: 80, protocol: HTTP}"),
                r#"spec.listeners[0].name "HTTP_1" is not a section name: use at most 253"#,
            ),
            (
                gateway(
                    "{name: web, port: 80, protocol: HTTP, \
                     allowedRoutes: {namespaces: {from: Nope}}}",
                ),
                r#"spec.listeners[0].allowedRoutes.namespaces.from "Nope" is not All, Same or Selector"#,
            ),
            (
                gateway(
                    "{name: web, port: 443, protocol: HTTP, \
                     tls: {mode: Terminate, certificateRefs: [{name: web}]}}",
                ),
                "spec.listeners[0].tls is set on an HTTP listener, which does not use it",
            ),
            (
                route("{name: gw}", "").replace(
                    "spec: {parentRefs: [{name: gw}]}",
                    &format!(
                        "spec: {{parentRefs: [{{name: gw}}], rules: [{}]}}",
                        vec!["{}"; 17].join(", ")
                    ),
                ),
                "spec.rules has 17 rules; a route has 16 at most",
            ),
            (
                route("{name: gw}", "").replace(
                    "spec: {parentRefs: [{name: gw}]}",
                    "spec: {parentRefs: [{name: gw}], rules: [{timeouts: \
                     {request: 1s, backendRequest: 2s}}]}",
                ),
                "spec.rules[0].timeouts.backendRequest 2s is longer than timeouts.request 1s",
            ),
            (
                gateway("{name: web, port: 443, protocol: HTTPS}"),
                "spec.listeners[0].tls is missing: an HTTPS listener needs it",
            ),
            (
                gateway(
                    "{name: a, port: 80, protocol: HTTP, hostname: a.example}, \
                     {name: b, port: 80, protocol: HTTP, hostname: a.example}",
                ),
                "spec.listeners[1] has the port, protocol and hostname of an earlier listener",
            ),
            (
                route("{name: gw, port: 70000}", ""),
                "spec.parentRefs[0].port 70000 is not a port: give 1 to 65535",
            ),
            (
                route("{name: gw, sectionName: Web}", ""),
                r#"spec.parentRefs[0].sectionName "Web" is not a section name"#,
            ),
            (
                route("{name: gw}", ", creationTimestamp: yesterday"),
                r#"HTTPRoute n/r metadata.creationTimestamp "yesterday" is not a time: write it in RFC 3339"#,
            ),
            (
                route("{name: gw}", ", creationTimestamp: 5"),
                "HTTPRoute n/r metadata.creationTimestamp 5 is not a time",
            ),
            (
                slice("70000"),
                "EndpointSlice n/s ports[0].port 70000 is not a port: give 1 to 65535",
            ),
            (
                slice("80, name: HTTP_X"),
                r#"EndpointSlice n/s ports[0].name "HTTP_X" is not a port name"#,
            ),
            (
                slice("80, name: web}, {port: 81, name: web"),
                r#"EndpointSlice n/s ports[1]: a second port named "web""#,
            ),
            (
                slice("80, protocol: tcp"),
                r#"EndpointSlice n/s ports[0].protocol "tcp" is not TCP, UDP or SCTP"#,
            ),
        ] {
            let errors = read_manifests(&text).unwrap_err();
            assert_eq!(errors.len(), 1, "{text}");
            assert!(errors[0].contains(says), "{errors:?}");
        }
        // Every value that fails is named at once.
        let errors = read_manifests(&gateway(
            "{name: HTTP_1, port: 0, protocol: HTTP, allowedRoutes: {namespaces: {from: all}}}",
        ))
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        for says in [
            "Gateway n/gw spec.listeners[0].port 0 is not a port",
            r#"; spec.listeners[0].allowedRoutes.namespaces.from "all" is not"#,
            r#"; spec.listeners[0].name "HTTP_1" is not a section name"#,
        ] {
            assert!(errors[0].contains(says), "{says}: {errors:?}");
        }
        // What the API's types allow loads.
        let text = [
            gateway(
                "{name: web.v1-a, port: 80, protocol: HTTP, \
                 allowedRoutes: {namespaces: {from: All}}}",
            ),
            route(
                "{name: gw, port: 65535, sectionName: web.v1-a}",
                ", creationTimestamp: '2024-05-01T14:00:00.75+02:00'",
            ),
            slice("8080"),
        ]
        .join("---\n");
        let objects = read_manifests(&text).unwrap();
        assert_eq!(objects.len(), 3);
        // A time is kept as the API server writes it: UTC, whole seconds, so that route
        // precedence may compare times as text.
        assert_eq!(objects[1].creation_timestamp, "2024-05-01T12:00:00Z");
        let stamped = |time: &str| {
            read_manifests(&route(
                "{name: gw}",
                &format!(", creationTimestamp: '{time}'"),
            ))
            .map(|o| o[0].creation_timestamp.clone())
        };
        for (written, kept) in [
            ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z"),
            ("2024-05-01T12:00:00.123456789123Z", "2024-05-01T12:00:00Z"),
            ("2024-05-01T00:30:00-01:00", "2024-05-01T01:30:00Z"),
            ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(stamped(written).as_deref(), Ok(kept), "{written}");
        }
        // What the API server refuses as a time.
        for refused in [
            "2024-05-01T14:00Z",
            "2024-05-01 14:00:00Z",
            "2024-05-01t14:00:00z",
            "2024-05-01T23:59:60Z",
            "2024-02-30T12:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00+24:00",
            "2024-05-01T12:00:00+01:60",
            "",
        ] {
            assert!(stamped(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn an_empty_name_is_refused_like_a_missing_one() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: ''}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert!(objects.is_empty());
        assert!(errors[0].contains("metadata.name"), "{}", errors[0]);
    }

    #[test]
    fn broken_edit_keeps_previous_objects_and_spec_change_bumps_generation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        let route = |path: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: r, namespace: n}}\nspec:\n  rules:\n  - matches:\n    \
                 - path: {{type: PathPrefix, value: {path}}}\n"
            )
        };
        std::fs::write(&file, route("/a")).unwrap();
        let store = Store::new();
        let mut provider = DirectoryProvider::new(dir.path(), store.clone());
        provider.sync().unwrap();
        let snap = store.snapshot();
        let r = snap.get(super::super::Kind::HttpRoute, "n", "r").unwrap();
        assert_eq!(r.generation, 1);

        std::fs::write(&file, "kind: [broken").unwrap();
        provider.sync().unwrap();
        let snap = store.snapshot();
        assert!(snap.get(super::super::Kind::HttpRoute, "n", "r").is_some());
        assert_eq!(snap.errors.len(), 1);
        // The error says that the last good content is what is served.
        let message = &snap.errors[0].message;
        assert!(
            message.ends_with("(the file's last good content is still served: 1 object)"),
            "{message}"
        );

        std::fs::write(&file, route("/b")).unwrap();
        provider.sync().unwrap();
        let snap = store.snapshot();
        let r = snap.get(super::super::Kind::HttpRoute, "n", "r").unwrap();
        assert_eq!(r.generation, 2);
        assert!(snap.errors.is_empty());
    }

    /// New content of the same size under the same modification time, as `cp -p`, `tar` and
    /// `rsync -a` bring it (build artifacts that all carry one fixed time), is read: written
    /// in place, and put in place by a rename.
    #[test]
    fn new_content_with_the_old_size_and_modification_time_is_read() {
        use super::super::Kind;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.yaml");
        let route = |path: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: r, namespace: n}}\nspec:\n  rules:\n  - matches:\n    \
                 - path: {{type: PathPrefix, value: {path}}}\n"
            )
        };
        let fixed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let write_keeping_time = |path: &Path, text: &str| {
            std::fs::write(path, text).unwrap();
            let f = std::fs::File::options().write(true).open(path).unwrap();
            f.set_modified(fixed).unwrap();
        };
        write_keeping_time(&file, &route("/aaa"));
        let store = Store::new();
        let mut provider = DirectoryProvider::new(dir.path(), store.clone());
        provider.sync().unwrap();
        let served = |store: &Store| {
            let snap = store.snapshot();
            let r = snap.get(Kind::HttpRoute, "n", "r").unwrap();
            r.spec()["rules"][0]["matches"][0]["path"]["value"].clone()
        };
        assert_eq!(served(&store), "/aaa");
        // Put in place by a rename: another inode.
        let staged = dir.path().join(".routes.yaml.new");
        write_keeping_time(&staged, &route("/bbb"));
        std::fs::rename(&staged, &file).unwrap();
        provider.sync().unwrap();
        assert_eq!(served(&store), "/bbb");
        // Written in place: the same inode, a later change time (the kernel's clock for it
        // moves in steps of a few milliseconds).
        std::thread::sleep(Duration::from_millis(50));
        write_keeping_time(&file, &route("/ccc"));
        provider.sync().unwrap();
        assert_eq!(served(&store), "/ccc");
    }

    /// Two HTTPRoutes in one file; `second` is the text of the second document's body after
    /// its `kind:` line.
    fn two_routes(kind: &str, second_metadata: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: web, namespace: n}}\nspec: {{}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\n\
             metadata: {second_metadata}\nspec: {{}}\n"
        )
    }

    #[test]
    fn a_bad_document_keeps_the_whole_file_at_its_last_good_content() {
        use super::super::Kind;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, two_routes("HTTPRoute", "{name: api, namespace: n}")).unwrap();
        let store = Store::new();
        let mut provider = DirectoryProvider::new(dir.path(), store.clone());
        provider.sync().unwrap();
        assert!(store.snapshot().get(Kind::HttpRoute, "n", "api").is_some());

        for (kind, metadata, expected) in [
            (
                "HTTPRoutes",
                "{name: api, namespace: n}",
                "unsupported kind HTTPRoutes",
            ),
            ("5", "{name: api, namespace: n}", "kind is not a string"),
            (
                "HTTPRoute",
                "{name: [api], namespace: n}",
                "metadata.name is not a string",
            ),
            (
                "HTTPRoute",
                "{name: api, labels: {canary: true}}",
                "labels.canary is not a string",
            ),
            (
                "HTTPRoute",
                "{name: api, labels: [canary]}",
                "metadata.labels is not a mapping",
            ),
            (
                "HTTPRoute",
                "{name: api, annotations: {replicas: 2}}",
                "metadata.annotations.replicas is not a string",
            ),
        ] {
            // A web route renamed in the same edit must not appear either: nothing of the
            // new content is applied.
            let text = two_routes(kind, metadata).replace("name: web", "name: web2");
            std::fs::write(&file, text).unwrap();
            provider.sync().unwrap();
            let snap = store.snapshot();
            assert!(
                snap.get(Kind::HttpRoute, "n", "api").is_some(),
                "{kind} {metadata}"
            );
            assert!(
                snap.get(Kind::HttpRoute, "n", "web").is_some(),
                "{kind} {metadata}"
            );
            assert!(
                snap.get(Kind::HttpRoute, "n", "web2").is_none(),
                "{kind} {metadata}"
            );
            assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
            let error = &snap.errors[0];
            assert_eq!(error.source, file.display().to_string());
            assert!(
                error.message.starts_with("document 2 (line 6): "),
                "{}",
                error.message
            );
            assert!(error.message.contains(expected), "{}", error.message);
            assert!(!error.message.contains("has no"), "{}", error.message);
        }

        std::fs::write(&file, two_routes("HTTPRoute", "{name: api, namespace: n}")).unwrap();
        provider.sync().unwrap();
        assert!(store.snapshot().errors.is_empty());
    }

    #[test]
    fn type_errors_and_unknown_fields_in_a_spec_are_refused_at_load_and_the_last_good_content_kept()
    {
        use super::super::Kind;
        let gateway = |port: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                 metadata: {{name: gw, namespace: n}}\nspec:\n  gatewayClassName: c\n  \
                 listeners: [{{name: http, protocol: HTTP, port: {port}}}]\n"
            )
        };
        let route = |port: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: r, namespace: n}}\n\
                 spec:\n  rules: [{{backendRefs: [{{name: svc, port: {port}}}]}}]\n"
            )
        };
        let service = |port: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc, namespace: n}}\n\
                 spec: {{ports: [{{name: http, port: {port}}}]}}\n"
            )
        };
        let slice = |kind: &str, address: &str, port: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: svc-1, namespace: n, \
                 labels: {{kubernetes.io/service-name: svc}}}}\naddressType: {kind}\n\
                 endpoints: [{{addresses: ['{address}']}}]\nports: [{{name: http, port: {port}}}]\n"
            )
        };
        let cases = [
            (
                Kind::Gateway,
                gateway("80"),
                gateway("'80x'"),
                "listeners[0].port: invalid type: the string \"80x\", expected a whole number",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("eighty"),
                "rules[0].backendRefs[0].port: invalid type: the string \"eighty\"",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace("backendRefs", "backendRef"),
                "does not define: spec.rules[0].backendRef (did you mean backendRefs?);",
            ),
            (
                Kind::Gateway,
                gateway("80"),
                gateway("70000"),
                "Gateway n/gw spec.listeners[0].port 70000 is not a port: give 1 to 65535",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("0"),
                "HTTPRoute n/r spec.rules[0].backendRefs[0].port 0 is not a port",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace("spec:\n", "spec:\n  parentRefs: [[null, null, null, gw]]\n"),
                "HTTPRoute n/r has a value of the wrong type: spec.parentRefs[0]: invalid type: \
                 a list, expected a mapping of fields",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {name: r, namespace: n}\nspec: [1]\n"
                    .to_string(),
                "HTTPRoute n/r has a value of the wrong type: spec: invalid type: a list, \
                 expected a mapping of fields",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80, weight: 9223372036854775807"),
                "HTTPRoute n/r spec.rules[0].backendRefs[0].weight 9223372036854775807 is not a \
                 weight: give 0 to 1000000",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80")
                    .replace("backendRefs", "backendRef")
                    .replace("spec:\n", "spec:\n  hostname: [a.example]\n"),
                "has 2 fields the Gateway API does not define: spec.hostname (did you mean \
                 hostnames?), spec.rules[0].backendRef (did you mean backendRefs?);",
            ),
            (
                Kind::Gateway,
                gateway("80"),
                gateway("80").replace("protocol", "protcol"),
                "requires: missing field `protocol`",
            ),
            (
                Kind::Gateway,
                gateway("80"),
                gateway("80").replace(
                    "[{name: http, protocol: HTTP, port: 80}]",
                    "[{name: http, protocol: HTTP, port: 80}, {name: http, protocol: HTTP, port: 81}]",
                ),
                "spec.listeners[1].name \"http\" is the name of an earlier listener",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace("spec:\n", "spec:\n  hostnames: ['*']\n"),
                "spec.hostnames[0] \"*\" is not a hostname",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace(
                    "rules: [{",
                    "rules: [{filters: [{type: RequestRedirect, requestRedirect: {port: 8080}}], ",
                ),
                "HTTPRoute n/r spec.rules[0] has a RequestRedirect filter and backendRefs",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace(
                    "rules: [{",
                    "rules: [{filters: [{type: URLRewrite, urlRewrite: {hostname: a.example}}, \
                     {type: RequestRedirect, requestRedirect: {port: 8080}}], matches: [], ",
                ),
                "spec.rules[0].filters have both a RequestRedirect and a URLRewrite filter",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace(
                    "port: 80}",
                    "port: 80, filters: [\
                     {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}, \
                     {type: RequestHeaderModifier, requestHeaderModifier: {remove: [a]}}]}",
                ),
                "spec.rules[0].backendRefs[0].filters have 2 RequestHeaderModifier filters: give \
                 one, with everything it does (the API server refuses this too)",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace(
                    "rules: [{",
                    "rules: [{filters: [{type: RequestHeaderModifier, \
                     requestHeaderModifier: {set: [{name: a, value: b}]}, \
                     responseHeaderModifier: {remove: [c]}}, {type: URLRewrite}], ",
                ),
                "spec.rules[0].filters[0].responseHeaderModifier is set on a \
                 RequestHeaderModifier filter, which does not read it: move it to a \
                 ResponseHeaderModifier filter of its own (the API server refuses this too); \
                 spec.rules[0].filters[1] is a URLRewrite filter without `urlRewrite`",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace(
                    "rules: [{",
                    "rules: [{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: \
                     {add: [{name: x, value: '1'}, {name: x, value: '2'}], remove: [y, y]}}], ",
                ),
                "spec.rules[0].filters[0].responseHeaderModifier.add names \"x\" twice: name \
                 each header once (the API server refuses this too); \
                 spec.rules[0].filters[0].responseHeaderModifier.remove names \"y\" twice",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace("spec:\n", "spec:\n  hostnames: [a.example, '']\n"),
                "spec.hostnames[1] \"\" is not a hostname",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace("spec:\n", "spec:\n  hostnames: [Web.Example]\n"),
                "\"Web.Example\" is not a hostname: write a lower-case",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace("rules: [{", "rules: [{matches: [{method: get}], "),
                "HTTPRoute n/r spec.rules[0].matches[0].method \"get\" is not one of GET, \
                 HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH (methods are upper \
                 case: write GET)",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace(
                    "spec:\n",
                    &format!("spec:\n  hostnames: ['*.{}.example']\n", "a".repeat(244)),
                ),
                "spec.hostnames[0] is 254 characters long; a hostname has at most 253",
            ),
            (
                Kind::Gateway,
                gateway("80"),
                gateway("80").replace("protocol: HTTP,", "protocol: HTTP, hostname: Web.Example,"),
                "Gateway n/gw spec.listeners[0].hostname \"Web.Example\" is not a hostname",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v9"),
                "HTTPRoute is not served as apiVersion gateway.networking.k8s.io/v9: use \
                 gateway.networking.k8s.io/v1",
            ),
            (
                Kind::Service,
                service("80"),
                service("80").replace("apiVersion: v1", "apiVersion: v2"),
                "Service belongs to the core API (apiVersion v1), not to apiVersion v2",
            ),
            (
                Kind::Service,
                service("80"),
                service("'80'"),
                "ports[0].port: invalid type: the string \"80\", expected a whole number",
            ),
            (
                Kind::Gateway,
                gateway("80"),
                gateway("80").replace("spec:", "sepc:"),
                "Gateway n/gw has a field the Gateway API does not define: sepc (did you mean \
                 spec?);",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80").replace("spec:\n  rules: [{backendRefs: [{name: svc, port: 80}]}]\n", ""),
                "HTTPRoute n/r has no spec; every HTTPRoute needs one",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("80")
                    .replace("backendRefs", "backendRef")
                    .replace("namespace: n}", "namespace: n, lables: {a: b}}")
                    .replace("spec:\n", "extraTop: 1\nspec:\n"),
                "HTTPRoute n/r has 3 fields the Gateway API does not define: extraTop, \
                 metadata.lables (did you mean labels?), spec.rules[0].backendRef (did you \
                 mean backendRefs?);",
            ),
            (
                Kind::HttpRoute,
                route("80"),
                route("eighty").replace("namespace: n}", "namespace: n, lables: {a: b}}"),
                "expected a whole number; it also has a field the Gateway API does not \
                 define: metadata.lables (did you mean labels?)",
            ),
            (
                Kind::Service,
                service("80"),
                service("80").replace("namespace: n", "namespace: n, annotation: {a: b}"),
                "Service n/svc has a field Kubernetes does not define: metadata.annotation \
                 (did you mean annotations?);",
            ),
            (
                Kind::Service,
                service("80"),
                service("80").replace("name: http,", "name: http, targetPrt: 80,"),
                "Service n/svc has a field Kubernetes does not define: spec.ports[0].targetPrt;",
            ),
            (
                Kind::EndpointSlice,
                slice("IPv4", "127.0.0.1", "8080"),
                slice("IPv4", "127.0.0.1", "8080").replace("'127.0.0.1']", "'127.0.0.1'], condition: {ready: false}"),
                "has a field Kubernetes does not define: endpoints[0].condition;",
            ),
            (
                Kind::EndpointSlice,
                slice("IPv4", "127.0.0.1", "8080"),
                slice("IPv4", "127.0.0.1", "8080")
                    .replace("addressType", "adressType")
                    .replace("ports:", "prots:"),
                "has 2 fields Kubernetes does not define: adressType (did you mean \
                 addressType?), prots (did you mean ports?);",
            ),
            (
                Kind::EndpointSlice,
                slice("IPv4", "127.0.0.1", "8080"),
                slice("IPv4", "127.0.0.1", "x"),
                "ports[0].port: invalid type: the string \"x\"",
            ),
            (
                Kind::EndpointSlice,
                slice("IPv4", "127.0.0.1", "8080"),
                slice("IPv4", "127.0.0.300", "8080"),
                "not an IPv4 address",
            ),
            (
                Kind::EndpointSlice,
                slice("IPv6", "::1", "8080"),
                slice("IPv6", "127.0.0.1", "8080"),
                "not an IPv6 address",
            ),
            (
                Kind::EndpointSlice,
                slice("IPv4", "127.0.0.1", "8080"),
                slice("IP", "127.0.0.1", "8080"),
                "not IPv4, IPv6 or FQDN",
            ),
        ];
        for (kind, good, bad, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("a.yaml");
            std::fs::write(&file, &good).unwrap();
            let store = Store::new();
            let mut provider = DirectoryProvider::new(dir.path(), store.clone());
            provider.sync().unwrap();
            let before = store.snapshot().of_kind(kind).next().cloned().unwrap();
            std::fs::write(&file, &bad).unwrap();
            provider.sync().unwrap();
            let snap = store.snapshot();
            assert_eq!(snap.of_kind(kind).next(), Some(&before), "{bad}");
            assert_eq!(snap.errors.len(), 1, "{bad}");
            let message = &snap.errors[0].message;
            assert!(message.starts_with("document 1 (line 1): "), "{message}");
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("syntax"), "{message}");
        }
    }

    #[test]
    fn fqdn_slices_and_values_the_compiler_reports_still_load() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                    metadata: {name: s, namespace: n}\naddressType: FQDN\n\
                    endpoints: [{addresses: [backend.example]}]\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
                    metadata: {name: gw, namespace: n}\nspec:\n  gatewayClassName: c\n  \
                    listeners: [{name: x, protocol: SCTP, port: 80}]\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                    metadata: {name: r, namespace: n}\nspec: {}\n";
        assert_eq!(read_manifests(text).map(|o| o.len()), Ok(3));
        // As the API allows: a label of any length, a name of 253 characters with its `*.`.
        let long = format!("*.{}.{}", "a".repeat(64), "b".repeat(186));
        assert_eq!(long.len(), 253);
        let text = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: r, namespace: n}}\nspec: {{hostnames: ['{long}']}}\n"
        );
        assert_eq!(read_manifests(&text).map(|o| o.len()), Ok(1));
        // Fields written without a value are absent, as the API server takes them; a
        // TLSRoute before v1 may leave out `hostnames`.
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                    metadata: {name: r, namespace: n, labels: null}\n\
                    spec:\n  hostnames:\n  parentRefs:\n  rules:\n  - matches:\n    \
                    filters:\n    backendRefs:\n---\n\
                    apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                    metadata: {name: s, namespace: n}\naddressType: IPv4\n\
                    endpoints: [{addresses: [127.0.0.1], conditions: null}]\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\n\
                    metadata: {name: t, namespace: n}\nspec: {rules: []}\n";
        assert_eq!(read_manifests(text).map(|o| o.len()), Ok(3));
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\n\
                    metadata: {name: t, namespace: n}\nspec: {rules: []}\n";
        assert!(read_manifests(text).unwrap_err()[0].contains("missing field `hostnames`"));
        // Versions earlier releases served, wildcard and IP-shaped route hostnames (the API's
        // pattern admits digits), and every method of the API's list load.
        let text = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
                    metadata: {name: g, namespace: n}\nspec: {from: [], to: []}\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\n\
                    metadata: {name: t, namespace: n}\nspec: {hostnames: ['*.a.example', 10.0.0.1], rules: []}\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                    metadata: {name: r, namespace: n}\nspec:\n  rules:\n  - matches:\n\
                    \x20   - {method: GET}\n    - {method: PATCH}\n    - {method: CONNECT}\n";
        assert_eq!(read_manifests(text).map(|o| o.len()), Ok(3));
    }

    #[test]
    fn errors_leave_with_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cfg");
        std::fs::create_dir(&config).unwrap();
        let store = Store::new();
        let mut provider = DirectoryProvider::new(&config, store.clone());

        // A file that is not UTF-8, then deleted.
        let latin1 = config.join("latin1.yaml");
        std::fs::write(&latin1, b"# caf\xe9\napiVersion: v1\n").unwrap();
        provider.sync_reporting();
        let errors = store.snapshot().errors;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("not UTF-8"), "{errors:?}");
        std::fs::remove_file(&latin1).unwrap();
        provider.sync_reporting();
        assert!(store.snapshot().errors.is_empty());

        // The directory moved away and back.
        let away = dir.path().join("cfg.away");
        std::fs::rename(&config, &away).unwrap();
        provider.sync_reporting();
        let errors = store.snapshot().errors;
        assert!(
            errors[0]
                .message
                .contains("cannot read configuration directory"),
            "{errors:?}"
        );
        std::fs::rename(&away, &config).unwrap();
        provider.sync_reporting();
        assert!(store.snapshot().errors.is_empty());
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_and_its_objects_kept() {
        use super::super::Kind;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: n}\n",
        )
        .unwrap();
        let store = Store::new();
        let mut provider = DirectoryProvider::new(dir.path(), store.clone());
        provider.sync().unwrap();
        // Sparse: the test costs no disk, and a provider that read it whole would still see
        // only a YAML error, not the limit.
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        provider.sync().unwrap();
        let snap = store.snapshot();
        assert!(snap.get(Kind::Service, "n", "a").is_some());
        assert_eq!(snap.errors.len(), 1);
        assert!(
            snap.errors[0].message.contains("16 MiB"),
            "{:?}",
            snap.errors
        );
    }

    fn service(name: &str) -> String {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: n}}\n")
    }

    #[test]
    fn symlink_loops_are_read_once_and_reported_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), service("a")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.yaml"), service("b")).unwrap();
        symlink(".", dir.path().join("loop1")).unwrap();
        symlink("..", dir.path().join("sub/loop2")).unwrap();
        symlink("sub", dir.path().join("sub-again")).unwrap();
        let store = Store::new();
        let mut provider = DirectoryProvider::new(dir.path(), store.clone());
        // Two loops made the walk exponential: run it where a hang fails the test.
        let (done, finished) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            provider.sync().unwrap();
            provider.sync().unwrap();
            let _ = done.send(());
            provider
        });
        finished
            .recv_timeout(Duration::from_secs(20))
            .expect("the walk ends");
        let provider = worker.join().unwrap();
        let files: Vec<&PathBuf> = provider.files.keys().collect();
        assert_eq!(
            files,
            [&dir.path().join("a.yaml"), &dir.path().join("sub/b.yaml")]
        );
        let mut repeats: Vec<&PathBuf> = provider.repeats.iter().collect();
        repeats.sort();
        assert_eq!(
            repeats,
            [
                &dir.path().join("loop1"),
                &dir.path().join("sub/loop2"),
                &dir.path().join("sub-again"),
            ]
        );
        assert_eq!(store.snapshot().len(), 2);
        assert!(store.snapshot().errors.is_empty());
    }

    #[test]
    fn manifests_that_cannot_be_read_as_files_are_errors_while_they_last() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), service("a")).unwrap();
        // (A hidden target: it is not read on its own, so that the link's object has one file.)
        symlink(".gone.yaml", dir.path().join("b.yaml")).unwrap();
        symlink("c.yaml", dir.path().join("c.yaml")).unwrap();
        // A link of another name may have been a directory: warned about, not an error.
        symlink("gone-dir", dir.path().join("more")).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("d.yaml"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let store = Store::new();
        let mut provider = DirectoryProvider::new(dir.path(), store.clone());
        provider.sync().unwrap();
        let mut skipped: Vec<(&PathBuf, &str)> =
            provider.skipped.iter().map(|(p, why)| (p, *why)).collect();
        skipped.sort();
        let names: Vec<&PathBuf> = skipped.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            names,
            ["b.yaml", "c.yaml", "d.yaml", "more"]
                .map(|n| dir.path().join(n))
                .iter()
                .collect::<Vec<_>>()
        );
        assert!(skipped[0].1.starts_with("symlink to nothing"));
        assert!(skipped[2].1.starts_with("not a regular file"));
        let errors = store.snapshot().errors.clone();
        let sources: Vec<&String> = errors.iter().map(|e| &e.source).collect();
        assert_eq!(
            sources,
            ["b.yaml", "c.yaml", "d.yaml"]
                .map(|n| dir.path().join(n).display().to_string())
                .iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(store.snapshot().len(), 1);
        // Once its target exists, the link is read and its error goes.
        std::fs::write(dir.path().join(".gone.yaml"), service("b")).unwrap();
        std::fs::remove_file(dir.path().join("d.yaml")).unwrap();
        provider.sync().unwrap();
        assert_eq!(provider.skipped.len(), 2);
        assert_eq!(store.snapshot().len(), 2);
        let errors = store.snapshot().errors.clone();
        let sources: Vec<&String> = errors.iter().map(|e| &e.source).collect();
        assert_eq!(sources, [&dir.path().join("c.yaml").display().to_string()]);
    }

    /// A provider driven as `watch` drives it: each scan waits for inotify (or 50 ms), then
    /// syncs with the writes it saw, then watches the directories found.
    struct Watched {
        provider: DirectoryProvider,
        notify: Notify,
        writes: Writes,
    }

    impl Watched {
        fn start(dir: &Path, store: &Store) -> Watched {
            let mut provider = DirectoryProvider::new(dir, store.clone());
            provider.sync().unwrap();
            let mut notify = Notify::start().expect("inotify works here");
            notify.watch_dirs(&provider.dirs);
            Watched {
                provider,
                notify,
                writes: Writes::default(),
            }
        }

        fn scan(&mut self) {
            self.notify
                .wait(Duration::from_millis(50), &mut self.writes);
            self.provider.writes = Some(std::mem::take(&mut self.writes));
            self.provider.sync().unwrap();
            self.writes = self.provider.writes.take().unwrap();
            self.notify.watch_dirs(&self.provider.dirs);
        }
    }

    #[test]
    fn a_file_still_open_for_writing_is_read_once_closed() {
        use super::super::Kind;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, service("a") + &service("b")).unwrap();
        let store = Store::new();
        let mut watched = Watched::start(dir.path(), &store);

        // The first half holds "a" only; "b" must not go while the writer pauses.
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(service("a").as_bytes()).unwrap();
        file.flush().unwrap();
        for _ in 0..3 {
            watched.scan();
            assert!(store.snapshot().get(Kind::Service, "n", "b").is_some());
        }
        file.write_all(service("c").as_bytes()).unwrap();
        drop(file);
        watched.scan();
        let snap = store.snapshot();
        assert!(snap.get(Kind::Service, "n", "b").is_none());
        assert!(snap.get(Kind::Service, "n", "c").is_some());

        // A writer that never closes is read anyway once WRITE_WAIT has passed.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(service("d").as_bytes()).unwrap();
        watched.scan();
        assert!(store.snapshot().get(Kind::Service, "n", "d").is_none());
        let long_ago = Instant::now().checked_sub(WRITE_WAIT).unwrap();
        watched.writes.open.insert(path.clone(), long_ago);
        watched.scan();
        assert!(store.snapshot().get(Kind::Service, "n", "d").is_some());
    }

    /// A file moved with its directory, or into a directory made for it, gets no event of its
    /// own; it is the same file, read at once, and its objects are never gone in between.
    #[test]
    fn objects_stay_while_their_directory_is_renamed_or_their_file_moves_into_a_new_one() {
        use super::super::Kind;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.yaml"), service("a")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), service("b")).unwrap();
        let store = Store::new();
        let mut watched = Watched::start(dir.path(), &store);
        let both = |store: &Store| {
            let snap = store.snapshot();
            snap.get(Kind::Service, "n", "a").is_some()
                && snap.get(Kind::Service, "n", "b").is_some()
        };

        std::fs::rename(&sub, dir.path().join("renamed")).unwrap();
        watched.scan();
        assert!(both(&store), "gone after the directory was renamed");

        let new = dir.path().join("new");
        std::fs::create_dir(&new).unwrap();
        std::fs::rename(dir.path().join("b.yaml"), new.join("b.yaml")).unwrap();
        watched.scan();
        assert!(
            both(&store),
            "gone after the file moved into a new directory"
        );
    }

    #[test]
    fn a_change_no_event_announced_is_read_once_it_stays_the_same() {
        use super::super::Kind;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        let store = Store::new();
        let mut provider = DirectoryProvider::new(dir.path(), store.clone());
        provider.writes = Some(Writes::default());
        std::fs::write(&path, service("a")).unwrap();
        provider.sync().unwrap();
        assert!(
            store.snapshot().is_empty(),
            "read at the first sight of a change"
        );
        std::thread::sleep(QUIET);
        provider.sync().unwrap();
        assert!(store.snapshot().get(Kind::Service, "n", "a").is_some());
    }

    #[test]
    fn yaml_that_json_cannot_hold_is_a_type_error_not_a_syntax_error() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {[x]: 1}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: c}\n";
        let (objects, errors) = parse_manifests(text).unwrap();
        assert_eq!(objects.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("document 2 (line 5): value of the wrong type"),
            "{errors:?}"
        );
        assert!(!errors[0].contains("syntax"), "{errors:?}");
    }

    #[test]
    fn an_object_twice_in_one_file_is_served_from_the_last_copy_and_an_error() {
        use super::super::Kind;
        let dir = tempfile::tempdir().unwrap();
        let route = |n: u16| {
            format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: r, namespace: n}}\nspec: {{hostnames: [h{n}.example]}}\n"
            )
        };
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, route(1) + &route(2)).unwrap();
        let store = Store::new();
        let mut provider = DirectoryProvider::new(dir.path(), store.clone());
        provider.sync().unwrap();
        let snapshot = store.snapshot();
        let served = snapshot.get(Kind::HttpRoute, "n", "r").unwrap();
        assert_eq!(served.spec()["hostnames"][0], "h2.example");
        // The first copy never reached the store: the object is at its first generation.
        assert_eq!(served.generation, 1);
        let errors: Vec<&str> = snapshot.errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            errors,
            [
                "HTTPRoute n/r is defined more than once in this file; the last copy is served: \
              keep one"
            ]
        );
        std::fs::write(&file, route(2)).unwrap();
        provider.sync().unwrap();
        assert!(store.snapshot().errors.is_empty());
    }

    #[test]
    fn objects_follow_their_content_across_renames_and_moves() {
        use super::super::Kind;
        let dir = tempfile::tempdir().unwrap();
        let service = |name: &str, port: u16| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: n}}\n\
                 spec: {{ports: [{{port: {port}}}]}}\n"
            )
        };
        let port_of = |store: &Store, name: &str| {
            store
                .snapshot()
                .get(Kind::Service, "n", name)
                .map(|o| o.spec()["ports"][0]["port"].as_i64().unwrap())
        };
        let store = Store::new();
        let mut provider = DirectoryProvider::new(dir.path(), store.clone());
        let (b, a, z) = (
            dir.path().join("b.yaml"),
            dir.path().join("a.yaml"),
            dir.path().join("z.yaml"),
        );
        std::fs::write(&b, service("one", 1) + &service("two", 2)).unwrap();
        provider.sync().unwrap();

        // Renamed to a name sorting before, then after, the old one: nothing is lost.
        std::fs::rename(&b, &a).unwrap();
        provider.sync().unwrap();
        assert_eq!(port_of(&store, "one"), Some(1));
        std::fs::rename(&a, &z).unwrap();
        provider.sync().unwrap();
        assert_eq!(
            (port_of(&store, "one"), port_of(&store, "two")),
            (Some(1), Some(2))
        );

        // "two" moves to its own file: it stays, in one sync or two.
        std::fs::write(&a, service("two", 2)).unwrap();
        provider.sync().unwrap();
        std::fs::write(&z, service("one", 1)).unwrap();
        provider.sync().unwrap();
        assert_eq!(port_of(&store, "two"), Some(2));

        // Two files hold "one" with different ports: the copy of the last file in path order
        // is served, whichever was written last, and the other file is told so. When that
        // file lets go of it, the other copy is served.
        let errors = |store: &Store| -> Vec<(String, String)> {
            (store.snapshot().errors.iter())
                .map(|e| (e.source.clone(), e.message.clone()))
                .collect()
        };
        std::fs::write(&a, service("two", 2) + &service("one", 10)).unwrap();
        provider.sync().unwrap();
        assert_eq!(port_of(&store, "one"), Some(1));
        assert_eq!(
            errors(&store),
            [(
                a.display().to_string(),
                format!(
                    "Service n/one is also defined in {}, whose copy is served (of several \
                     files the last in path order wins); keep it in one file",
                    z.display()
                )
            )]
        );
        std::fs::write(&z, service("three", 3)).unwrap();
        provider.sync().unwrap();
        assert_eq!(port_of(&store, "one"), Some(10));
        assert_eq!(errors(&store), []);
        std::fs::write(&z, service("three", 3) + &service("one", 1)).unwrap();
        provider.sync().unwrap();
        assert_eq!(port_of(&store, "one"), Some(1));
        assert_eq!(errors(&store).len(), 1);
        std::fs::remove_file(&a).unwrap();
        provider.sync().unwrap();
        assert_eq!(port_of(&store, "one"), Some(1));
        assert_eq!(port_of(&store, "two"), None);
        assert_eq!(errors(&store), []);
    }
}

//! The resource store: every object the providers have delivered, in one place.
//!
//! Providers write; the compile loop reads consistent [`Snapshot`]s. A snapshot is a cheap,
//! immutable copy (objects are shared behind `Arc`s), so compiling never holds the store's lock.
//! Each write bumps a revision and wakes the subscribers, which is how the compile loop learns
//! that there is something new to compile.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::object::{Kind, Object, ObjectKey};

/// A provider's problem with its input that is not tied to one object, such as a file that does
/// not parse. Reported beside the objects' conditions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceError {
    /// Where the input came from: a file path, or a watch name.
    pub source: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<ObjectKey, Arc<Object>>,
    errors: BTreeMap<String, Vec<SourceError>>,
    revision: u64,
}

/// The shared, mutable store. Clone it freely: clones share the same contents.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        let (changed, _) = watch::channel(0);
        Store {
            inner: Arc::default(),
            changed: Arc::new(changed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind, still consistent per
        // object, so the poison flag carries no information worth stopping for.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self, mut inner: MutexGuard<'_, Inner>) {
        inner.revision += 1;
        let revision = inner.revision;
        drop(inner);
        self.changed.send_replace(revision);
    }

    /// Inserts or replaces one object.
    pub fn upsert(&self, object: Object) {
        let mut inner = self.lock();
        let key = object.key.clone();
        if inner.objects.get(&key).map(|o| o.as_ref()) == Some(&object) {
            return;
        }
        inner.objects.insert(key, Arc::new(object));
        self.bump(inner);
    }

    /// Removes one object, if present.
    pub fn delete(&self, key: &ObjectKey) {
        let mut inner = self.lock();
        if inner.objects.remove(key).is_some() {
            self.bump(inner);
        }
    }

    /// Applies a batch of removals and insertions as one revision, so that a reader never sees
    /// half of a file's change.
    pub fn apply(&self, remove: &[ObjectKey], insert: Vec<Object>) {
        let mut inner = self.lock();
        let mut changed = false;
        for key in remove {
            changed |= inner.objects.remove(key).is_some();
        }
        for object in insert {
            if inner.objects.get(&object.key).map(|o| o.as_ref()) != Some(&object) {
                inner.objects.insert(object.key.clone(), Arc::new(object));
                changed = true;
            }
        }
        if changed {
            self.bump(inner);
        }
    }

    /// Replaces every object of one kind with `objects`, as after a full list from the API
    /// server.
    pub fn replace_kind(&self, kind: Kind, objects: Vec<Object>) {
        let stale: Vec<ObjectKey> = {
            let inner = self.lock();
            kind_range(&inner.objects, kind)
                .map(|(k, _)| k.clone())
                .filter(|k| !objects.iter().any(|o| &o.key == k))
                .collect()
        };
        self.apply(&stale, objects);
    }

    /// Sets the errors a source currently has; an empty list clears them.
    pub fn set_source_errors(&self, source: &str, errors: Vec<SourceError>) {
        let mut inner = self.lock();
        let old = if errors.is_empty() {
            inner.errors.remove(source)
        } else {
            inner.errors.insert(source.to_string(), errors.clone())
        };
        if old.unwrap_or_default() != errors {
            self.bump(inner);
        }
    }

    /// A consistent, immutable view of everything stored now.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            objects: inner.objects.clone(),
            errors: inner.errors.values().flatten().cloned().collect(),
            revision: inner.revision,
        }
    }

    /// A receiver that changes whenever the store does; its value is the revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

fn kind_range(
    objects: &BTreeMap<ObjectKey, Arc<Object>>,
    kind: Kind,
) -> impl Iterator<Item = (&ObjectKey, &Arc<Object>)> {
    let start = ObjectKey::new(kind, "", "");
    objects
        .range((Bound::Included(start), Bound::Unbounded))
        .take_while(move |(k, _)| k.kind == kind)
}

/// An immutable view of the store at one revision.
#[derive(Clone, Default)]
pub struct Snapshot {
    objects: BTreeMap<ObjectKey, Arc<Object>>,
    /// Problems with inputs that could not become objects.
    pub errors: Vec<SourceError>,
    /// The store revision this snapshot was taken at.
    pub revision: u64,
}

impl Snapshot {
    /// Builds a snapshot directly from objects; used by offline checks and tests.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        Snapshot {
            objects: objects
                .into_iter()
                .map(|o| (o.key.clone(), Arc::new(o)))
                .collect(),
            errors: Vec::new(),
            revision: 0,
        }
    }

    /// Every object of one kind, ordered by namespace then name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        kind_range(&self.objects, kind).map(|(_, o)| o.as_ref())
    }

    /// Every object of one kind, shared: two snapshots hold the same `Arc` for an object
    /// that did not change between them.
    pub fn arcs_of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<Object>> {
        kind_range(&self.objects, kind).map(|(_, o)| o)
    }

    /// One object by identity.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Object> {
        self.objects
            .get(&ObjectKey::new(kind, namespace, name))
            .map(|o| o.as_ref())
    }

    /// How many objects the snapshot holds.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the snapshot holds no object.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

//! Providers and the resource store.
//!
//! A provider turns some source of Kubernetes objects into [`Store`] writes: the
//! [`directory`] provider reads YAML files (standalone mode). Providers know nothing about
//! routing; the compile loop in [`crate::dataplane`] subscribes to the store and rebuilds the
//! routing table when it changes.

pub mod directory;
pub mod events;
pub mod kubernetes;
pub mod leader;
mod object;
pub mod status_writer;
mod store;

pub use object::{is_dns_name, Kind, Object, ObjectError, ObjectKey, UnknownKind};
pub use store::{Snapshot, SourceError, Store};

//! Routing: the compiler and the table it produces.
//!
//! [`compile`] reads a [`crate::controller::Snapshot`] and returns a [`RoutingTable`] plus a
//! [`StatusReport`]. The table holds only our own types: nothing in it refers to a Kubernetes
//! object, so the data plane never sees one.

pub mod api;
mod compiler;
pub mod explain;
pub mod status;
pub mod table;

pub use compiler::{
    compile, compile_with, intersect_hostnames, parse_duration, unserved, CompileCache,
    CompileOptions, Compiled, ReportedAddresses, MAX_WEIGHT,
};
pub use status::{Condition, ObjectStatus, StatusReport};
pub use table::{Miss, RequestView, RoutingTable};

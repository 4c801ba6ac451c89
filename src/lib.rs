//! Portcullis: a Kubernetes Gateway API implementation on a Pingora data plane.
//!
//! The process is a pipeline with one direction of flow:
//!
//! 1. [`controller`] providers (a directory of YAML, or the Kubernetes API) put objects into one
//!    [`controller::Store`];
//! 2. [`routing::compile`], a pure function, turns a snapshot of the store into an immutable
//!    [`routing::RoutingTable`] and a [`routing::StatusReport`];
//! 3. the [`dataplane`] swaps that table in atomically and serves traffic by it.
//!
//! Nothing downstream of the compiler sees a Kubernetes object, and the compiler does no I/O.
#![forbid(unsafe_code)]

pub mod controller;
pub mod dataplane;
pub mod demo;
pub mod routing;
pub mod tls;

/// The `spec.controllerName` of the GatewayClasses this gateway answers to, unless configured.
pub const DEFAULT_CONTROLLER_NAME: &str = "portcullis.dev/gateway-controller";

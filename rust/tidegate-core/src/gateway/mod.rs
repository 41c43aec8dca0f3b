//! The gateway: what is decided per request, natively. [`admission`] is the header phase (readiness, keys,
//! priority, the adaptive limit, device buckets), decided before the body is read.

pub mod admission;
pub mod keys;
pub mod limit;
mod sha256;

pub use admission::{Admission, AdmissionConfig, Decision, HeaderView, Refusal};
pub use keys::KeyStore;
pub use limit::{LimitConfig, Permit, Priority};

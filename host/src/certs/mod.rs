//! Certificates, so that nobody has to touch one: issued here ([`issue`]), planned ([`plan`]),
//! kept in one Secret that racing writers converge on ([`secret`]), and followed by every
//! replica through the API ([`follow`]) or in a directory into the store it serves from
//! ([`store`]), swapped without dropping a connection.

mod follow;
mod issue;
pub mod plan;
pub mod secret;
mod store;

pub use follow::{Followers, follow, initial};
pub use issue::*;
pub use store::CertStore;

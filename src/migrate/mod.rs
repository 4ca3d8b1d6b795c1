//! Moving media into the object stores: on the way, as people look at it (the write-through
//! [`queue`], fed by a [`tee`] on media bodies), and in bulk (`edgecache migrate`).

pub mod arriving;
pub mod bulk;
mod failed;
pub mod keys;
pub mod progress;
pub mod queue;
#[cfg(test)]
mod queue_tests;
pub mod state;
pub mod tee;

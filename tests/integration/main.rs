//! Integration tests: the real edgecache binary on 127.0.0.1, ports chosen at run time, a real
//! HTTP origin, real TLS clients and raw sockets.

mod harness;

mod admin;
mod bad_input;
mod bounds;
mod cache;
mod config_errors;
mod dashboards;
mod deleted_media;
mod disk_cache;
mod fleet;
mod forwarding;
mod layout;
mod listeners;
mod media;
#[cfg(feature = "tailscale")]
mod mesh;
mod migrate;
mod poisoning;
mod proxy;
mod purge;
mod ranges;
mod reload;
mod slow_clients;
mod tls;
mod upgrade;
mod websockets;
mod write_through;

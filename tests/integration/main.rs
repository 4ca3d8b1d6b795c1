//! Integration tests: the real edgecache binary on 127.0.0.1, ports chosen at run time, a real
//! HTTP origin, real TLS clients and raw sockets.

// Shared test parts: a real origin, the real binary, real TLS and raw HTTP clients, typed
// configs, and the cache and media PoPs several modules start.
mod harness;

// The admin listener: health, readiness, metrics, tokens; the access log.
mod admin;
// Malformed requests over h1, h2 and TLS get a 4xx and never crash or poison.
mod bad_input;
// The cache stays within its sizes; large objects stream through it unbuffered.
mod bounds;
// The shared cache: what is stored, what is served, and from which tier.
mod cache;
// Compression at the edge: codings chosen per client, stored once each, bounded decoding.
mod compression;
// Bad config files: each error names file, line and key; exit 64.
mod config_errors;
// RFC 9111 in detail: Age, status codes, invalidation, header updates, targeted fields.
mod conformance;
// The Grafana dashboard and the alert rules in ops/ query only metrics we export.
mod dashboards;
// Deleted media stays deleted: tombstones across purges, restarts and the fleet.
mod deleted_media;
// Body-less requests forwarded over the PoP's own core connections, as pingora's path does.
mod direct_forwarding;
// The disk tier: persistence across kill -9, damaged and partial entries, its bounds.
mod disk_cache;
// Purges reach every PoP: fan-out, outbox, purge log and catch-up.
mod fleet;
// Purging a tag on 10,000 objects over three PoPs, one of them down during the purge.
mod fleet_tags;
// Plain hits answered from the HTTP/1 connection loop, as pingora's path answers them.
mod fast_hits;
// Plain hits over HTTP/2 answered from the loop that accepts the streams.
mod fast_hits_h2;
// Forwarding to the core: groups by route, no duplicate writes, request ids, body limits.
mod forwarding;
// Clients that leave with requests in flight cost the core nothing for stored objects.
mod gone_clients;
// The source tree keeps its layout rules (read from the imports).
mod layout;
// Listeners beyond the basics: IPv6, h2c, the connection gauge.
mod listeners;
// Media routes: the try_files chain over a real S3-compatible store and legacy origins.
mod media;
// The embedded mesh node (core.mesh.mode: embedded, cargo feature tailscale).
#[cfg(feature = "tailscale")]
mod mesh;
// `edgecache migrate`: bulk copies from a legacy directory or HTTP origin into S3.
mod migrate;
// Cache poisoning and privacy: what a client sends cannot plant or leak a response.
mod poisoning;
// Forwarding to the core: what it sees, what the client gets back, a core down or slow.
mod proxy;
// Purging URLs and prefixes through the admin listener and the CLI.
mod purge;
// Range requests (video seeking) against cached, arriving and missing objects.
mod ranges;
// Certificates and settings reloaded without a restart; a bad one is refused.
mod reload;
// Purging by cache tag: tags from fields and media paths, invalidation by group.
mod tags;
// What a broken origin or an odd range cannot do through slices.
mod slice_guards;
// Large objects as aligned slices: range misses fetch only what they cover.
mod slices;
// The shield tier: PoPs that ask another PoP before the core.
mod shield;
// A shield that fails, and purges that have not reached it yet.
mod shield_failures;
// What one client can take: head, handshake and preface deadlines, per-client limits.
mod slow_clients;
// HTTPS: certificates by SNI, a default without SNI, TLS 1.2 and 1.3, ALPN.
mod tls;
// Graceful upgrade: a new binary takes the sockets without dropping connections.
mod upgrade;
// Websockets through the edge to a real websocket server, closed cleanly at shutdown.
mod websockets;
// Write-through: media found outside the object store is copied into it.
mod write_through;

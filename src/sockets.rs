//! The listening sockets of this process: the addresses it claims at start, and which of
//! its sockets are listening, read from the kernel.
//!
//! A listener may ask for port 0, the kernel's choice. Pingora binds inside each service's
//! runtime from an address string, so the port is chosen here first: a socket bound to
//! port 0 (with SO_REUSEPORT, never listening) learns the port and holds it, the listener
//! binds that port beside it, and the holder is dropped once the listener listens. Nothing
//! else can take the port in between, and no connection ever reaches the holder: the
//! kernel hands connections only to listening sockets. The chosen addresses are logged and,
//! when asked, written to a file (`serve --addresses-file`), the way to find them.
//!
//! `/readyz` must know that every listener is bound. Pingora reports nothing back;
//! connecting to the port would cost a TLS error log per probe. Linux lists listening
//! sockets in `/proc/net/tcp{,6}` with their inodes, and `/proc/self/fd` says which inodes
//! are ours, so the answer is exact and free of side effects.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use socket2::{Domain, Socket, Type};

/// `st` value of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// The local addresses this process is listening on.
pub fn own_listening_addresses() -> io::Result<HashSet<SocketAddr>> {
    let inodes = own_socket_inodes()?;
    let mut out = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.extend(
            parse_table(&text)
                .into_iter()
                .filter(|(_, inode)| inodes.contains(inode))
                .map(|(addr, _)| addr),
        );
    }
    Ok(out)
}

fn own_socket_inodes() -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in fs::read_dir("/proc/self/fd")? {
        let Ok(link) = fs::read_link(entry?.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// Listening sockets of one table: (local address, inode).
fn parse_table(text: &str) -> Vec<(SocketAddr, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&TCP_LISTEN) {
                return None;
            }
            let address = parse_address(fields.get(1)?)?;
            let inode = fields.get(9)?.parse().ok()?;
            Some((address, inode))
        })
        .collect()
}

/// `0100007F:1F90` is 127.0.0.1:8080: the address in the kernel's byte order (32-bit words,
/// little-endian on the machines we run on), the port big-endian.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = text.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let ip = match ip_hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip_hex, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip_hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// How often the address report looks whether every listener listens yet.
const REPORT_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} (listener {name}): {source}")]
pub struct ClaimError {
    pub name: String,
    pub address: SocketAddr,
    pub source: io::Error,
}

/// The admin listener's name in a claim and a report; a proxy listener `http` is
/// `listener:http` there (a listener's name has no `:`, so the two never meet).
pub const ADMIN: &str = "admin";

const LISTENER_PREFIX: &str = "listener:";

/// A proxy listener's name in a claim and a report.
pub fn listener_key(name: &str) -> String {
    format!("{LISTENER_PREFIX}{name}")
}

/// One listener's address: as bound, port 0 resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedAddress {
    /// [`ADMIN`] or [`listener_key`].
    pub name: String,
    pub address: SocketAddr,
    /// The port was chosen in this process and is held beside the listener, which must
    /// bind with SO_REUSEPORT to share it.
    pub chosen_here: bool,
}

/// Every listener's address, and the holders of the ports chosen here.
#[derive(Debug)]
pub struct AddressClaim {
    pub addresses: Vec<ClaimedAddress>,
    holders: Vec<Socket>,
}

impl AddressClaim {
    /// The address the listener named `key` ([`ADMIN`] or [`listener_key`]) binds; `None`
    /// for one that was not claimed.
    pub fn get(&self, key: &str) -> Option<&ClaimedAddress> {
        self.addresses.iter().find(|a| a.name == key)
    }

    /// (listener name as configured, bound address) of the proxy's listeners.
    pub fn listener_addresses(&self) -> Vec<(String, SocketAddr)> {
        self.addresses
            .iter()
            .filter_map(|a| {
                let name = a.name.strip_prefix(LISTENER_PREFIX)?;
                Some((name.to_string(), a.address))
            })
            .collect()
    }

    /// (name, bound address) of every listener.
    pub fn pairs(&self) -> Vec<(String, SocketAddr)> {
        self.addresses
            .iter()
            .map(|a| (a.name.clone(), a.address))
            .collect()
    }
}

/// Claims the `wanted` addresses, (name, address as configured), before anything listens.
///
/// A fixed port is bound and listened on, all of them held at once so that `0.0.0.0:80` and
/// `127.0.0.1:80` collide here as they would in the listeners, and let go again: pingora
/// panics in a service thread when it cannot bind, so a port in use must fail here with one
/// clear error. Port 0 gets a port of the kernel's choice, held until [`AddressReport`] sees
/// the listener on it. With `inherited` (a handover), fixed ports come from the running
/// process and are not checked, and a port-0 listener keeps the port the running process
/// chose for it, listed there by name.
pub fn claim(
    wanted: &[(String, SocketAddr)],
    inherited: Option<&HashMap<String, SocketAddr>>,
) -> Result<AddressClaim, ClaimError> {
    let failed = |name: &String, address: &SocketAddr, source| ClaimError {
        name: name.clone(),
        address: *address,
        source,
    };
    // Fixed ports first, held while the kernel picks the others, so it cannot pick one of
    // them for a port-0 listener.
    let mut checked = Vec::new();
    if inherited.is_none() {
        for (name, address) in wanted.iter().filter(|(_, a)| a.port() != 0) {
            checked.push(listen_briefly(*address).map_err(|e| failed(name, address, e))?);
        }
    }
    let mut claim = AddressClaim {
        addresses: Vec::new(),
        holders: Vec::new(),
    };
    for (name, address) in wanted {
        let failed = |source| failed(name, address, source);
        let kept = inherited
            .and_then(|i| i.get(name))
            .filter(|kept| address.port() == 0 && kept.ip() == address.ip());
        let (bound, chosen_here) = match kept {
            Some(kept) => (*kept, false),
            None if address.port() == 0 => {
                let holder = hold_any_port(*address).map_err(failed)?;
                let bound = holder
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .ok_or_else(|| failed(io::Error::other("the kernel named no port")))?;
                claim.holders.push(holder);
                (bound, true)
            }
            None => (*address, false),
        };
        let claimed = ClaimedAddress {
            name: name.clone(),
            address: bound,
            chosen_here,
        };
        claim.addresses.push(claimed);
    }
    Ok(claim)
}

fn new_socket(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    if address.is_ipv6() {
        // As the listener will be: IPv6 only, beside an IPv4 one on the same port.
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// Binds and listens as the listener will (reusing past TIME_WAIT; listening is where
/// overlapping addresses collide on Linux), to be let go before the listener binds.
fn listen_briefly(address: SocketAddr) -> io::Result<Socket> {
    let socket = new_socket(address)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1)?;
    Ok(socket)
}

/// A port of the kernel's choice on `address`'s IP, bound and never listening. Only a
/// socket of this user with SO_REUSEPORT (the listener) can bind it beside the holder.
fn hold_any_port(address: SocketAddr) -> io::Result<Socket> {
    let socket = new_socket(address)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// Waits until every claimed address listens, then lets the held ports go, logs each
/// listener's address and writes them to `file` (one `name address` line each; written
/// whole, then renamed into place, so a reader never sees half of it).
pub struct AddressReport {
    claim: parking_lot::Mutex<Option<AddressClaim>>,
    file: Option<PathBuf>,
}

impl AddressReport {
    pub fn new(claim: AddressClaim, file: Option<PathBuf>) -> AddressReport {
        AddressReport {
            claim: parking_lot::Mutex::new(Some(claim)),
            file,
        }
    }
}

#[async_trait]
impl BackgroundService for AddressReport {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(claim) = self.claim.lock().take() else {
            return;
        };
        loop {
            match own_listening_addresses() {
                Ok(listening)
                    if claim
                        .addresses
                        .iter()
                        .all(|a| listening.contains(&a.address)) =>
                {
                    break
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot list listening sockets; the addresses are not reported");
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(REPORT_POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
        let AddressClaim { addresses, holders } = claim;
        drop(holders);
        for a in &addresses {
            tracing::info!(listener = %a.name, address = %a.address, "listening");
        }
        if let Some(file) = &self.file {
            if let Err(e) = write_report(file, &addresses) {
                tracing::error!(file = %file.display(), error = %e, "cannot write the listening addresses");
            }
        }
    }
}

fn write_report(file: &Path, addresses: &[ClaimedAddress]) -> io::Result<()> {
    let text: String = addresses
        .iter()
        .map(|a| format!("{} {}\n", a.name, a.address))
        .collect();
    let mut partial = file.as_os_str().to_owned();
    partial.push(format!(".{}.partial", std::process::id()));
    fs::write(&partial, text)?;
    fs::rename(&partial, file)
}

/// Reads a report written by [`AddressReport`]: (name, address) per line.
pub fn parse_report(text: &str) -> Option<Vec<(String, SocketAddr)>> {
    text.lines()
        .map(|line| {
            let (name, address) = line.split_once(' ')?;
            Some((name.to_string(), address.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_addresses_decode() {
        assert_eq!(
            parse_address("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(
            parse_address("00000000000000000000000001000000:01BB"),
            Some("[::1]:443".parse().expect("addr"))
        );
        assert_eq!(parse_address("zz:1"), None);
    }

    fn wanted(entries: &[(&str, &str)]) -> Vec<(String, SocketAddr)> {
        entries
            .iter()
            .map(|(name, address)| (name.to_string(), address.parse().expect("address")))
            .collect()
    }

    #[test]
    fn port_zero_gets_a_port_of_its_own_held_from_everyone_else() {
        let claim = claim(
            &wanted(&[("listener:a", "127.0.0.1:0"), ("admin", "127.0.0.1:0")]),
            None,
        )
        .expect("claim");
        let a = claim.get("listener:a").expect("a").clone();
        let admin = claim.get(ADMIN).expect("admin").clone();
        assert!(a.chosen_here && admin.chosen_here);
        assert_ne!(a.address.port(), 0);
        assert_ne!(a.address.port(), admin.address.port());
        // A socket without SO_REUSEPORT (anyone but the listener) cannot take the port.
        assert!(std::net::TcpListener::bind(a.address).is_err());
        // The listener can, beside the holder.
        let listener = hold_any_port(a.address).and_then(|s| {
            s.listen(8)?;
            Ok(s)
        });
        assert!(listener.is_ok(), "{listener:?}");
    }

    #[test]
    fn a_fixed_port_in_use_is_an_error_naming_the_listener() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = taken.local_addr().expect("addr");
        let err = claim(&[("listener:web".to_string(), address)], None).expect_err("in use");
        assert_eq!((err.name.as_str(), err.address), ("listener:web", address));
        assert!(err.to_string().contains("listener:web"), "{err}");
    }

    #[test]
    fn a_free_fixed_port_is_let_go_again() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = free.local_addr().expect("addr");
        drop(free);
        let claim = claim(&[("listener:web".to_string(), address)], None).expect("claim");
        assert_eq!(claim.get("listener:web").map(|c| c.address), Some(address));
        assert!(!claim.get("listener:web").is_some_and(|c| c.chosen_here));
        // Nothing of the check is left listening.
        assert!(std::net::TcpListener::bind(address).is_ok());
    }

    #[test]
    fn a_handover_keeps_the_predecessors_port_for_port_zero_only() {
        let inherited: HashMap<String, SocketAddr> = [
            (
                "listener:a".to_string(),
                "127.0.0.1:41001".parse().expect("a"),
            ),
            (
                "listener:b".to_string(),
                "127.0.0.1:41002".parse().expect("b"),
            ),
            ("admin".to_string(), "[::1]:41003".parse().expect("admin")),
        ]
        .into();
        let claim = claim(
            &wanted(&[
                ("listener:a", "127.0.0.1:0"),
                // A fixed port is the config's, handed over under its own address.
                ("listener:b", "127.0.0.1:41999"),
                // The predecessor's admin was elsewhere: a new port is chosen.
                ("admin", "127.0.0.1:0"),
            ]),
            Some(&inherited),
        )
        .expect("claim");
        let a = claim.get("listener:a").expect("a");
        assert_eq!((a.address.port(), a.chosen_here), (41001, false));
        assert_eq!(
            claim.get("listener:b").map(|b| b.address.port()),
            Some(41999)
        );
        let admin = claim.get(ADMIN).expect("admin");
        assert!(admin.chosen_here && admin.address.is_ipv4());
    }

    #[test]
    fn a_report_reads_back() {
        let addresses = vec![
            ClaimedAddress {
                name: "listener:http".to_string(),
                address: "127.0.0.1:8080".parse().expect("addr"),
                chosen_here: true,
            },
            ClaimedAddress {
                name: ADMIN.to_string(),
                address: "[::1]:9901".parse().expect("addr"),
                chosen_here: false,
            },
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("addresses");
        write_report(&file, &addresses).expect("write");
        let read = parse_report(&fs::read_to_string(&file).expect("read")).expect("parse");
        let expected: Vec<_> = addresses
            .iter()
            .map(|a| (a.name.clone(), a.address))
            .collect();
        assert_eq!(read, expected);
        assert_eq!(parse_report("listener:http not-an-address\n"), None);
        // Only the report is left in the directory.
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn finds_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr");
        let found = own_listening_addresses().expect("proc");
        assert!(found.contains(&address), "{address} not in {found:?}");
    }
}

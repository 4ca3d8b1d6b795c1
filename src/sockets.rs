//! Which of this process's sockets are listening, read from the kernel.
//!
//! `/readyz` must know that every listener is bound. Pingora binds inside each service's
//! runtime and reports nothing back; connecting to the port would cost a TLS error log per
//! probe. Linux lists listening sockets in `/proc/net/tcp{,6}` with their inodes, and
//! `/proc/self/fd` says which inodes are ours, so the answer is exact and free of side effects.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

    #[test]
    fn finds_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr");
        let found = own_listening_addresses().expect("proc");
        assert!(found.contains(&address), "{address} not in {found:?}");
    }
}

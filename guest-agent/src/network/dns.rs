//! The resolver of a user-defined network: containers on it find each
//! other by name and alias, and every other name goes to the host's own
//! resolvers. One server per network listens on the network's gateway
//! address (port 53, UDP), which each member's `/etc/resolv.conf` names;
//! it knows only its own network's members, so names do not resolve across
//! networks. A member started with its own servers (`--dns`) has its other
//! names relayed to those instead, as with dockerd's embedded resolver.
//!
//! Only what a resolver stub asks is understood (RFC 1035): one question
//! of class IN. `A` for a member is answered here; `AAAA` for a member
//! gets an empty answer (no IPv6 on our networks), which makes the stub
//! use the `A` one; anything else is relayed to an upstream server as it
//! came.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;

/// The DNS port.
pub const PORT: u16 = 53;

/// How long an answer for a member may be cached: containers come and go,
/// so briefly (dockerd says 600 s; a stub rarely caches at all).
const MEMBER_TTL: u32 = 10;

/// How long an upstream server may take to answer a relayed question.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest message over UDP without EDNS.
const MAX_UDP: usize = 512;
/// What is read from a socket at once (EDNS clients send up to this).
const RECV_BUFFER: usize = 4096;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;

/// Names on one network and their addresses, shared with the engine.
#[derive(Debug, Default)]
pub struct Records {
    names: RwLock<HashMap<String, Vec<Ipv4Addr>>>,
    /// The servers of members that named their own, by member address.
    upstream: RwLock<HashMap<Ipv4Addr, Arc<Vec<SocketAddr>>>>,
}

impl Records {
    /// Lets `names` resolve to `address` (in addition to what they had).
    pub fn add(&self, names: &[String], address: Ipv4Addr) {
        let mut map = self.names.write().unwrap_or_else(|p| p.into_inner());
        for name in names {
            let entry = map.entry(normalize(name)).or_default();
            if !entry.contains(&address) {
                entry.push(address);
            }
        }
    }

    /// Relays what the member at `address` asks to `servers` rather than
    /// to the network's upstream (nothing changes for an empty list).
    pub fn set_upstream(&self, address: Ipv4Addr, servers: Vec<SocketAddr>) {
        if servers.is_empty() {
            return;
        }
        let mut map = self.upstream.write().unwrap_or_else(|p| p.into_inner());
        map.insert(address, Arc::new(servers));
    }

    /// The servers the member at `from` relays to, if it named its own.
    fn upstream_of(&self, from: IpAddr) -> Option<Arc<Vec<SocketAddr>>> {
        let IpAddr::V4(address) = from else {
            return None;
        };
        let map = self.upstream.read().unwrap_or_else(|p| p.into_inner());
        map.get(&address).cloned()
    }

    /// Withdraws `address` from every name that had it, and its servers.
    pub fn remove(&self, address: Ipv4Addr) {
        self.upstream
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&address);
        let mut map = self.names.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, addresses| {
            addresses.retain(|a| *a != address);
            !addresses.is_empty()
        });
    }

    /// The addresses of `name`, if it is a member's.
    pub fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let map = self.names.read().unwrap_or_else(|p| p.into_inner());
        map.get(&normalize(name)).cloned()
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A question as read from a query.
#[derive(Debug, PartialEq, Eq)]
struct Question {
    id: u16,
    /// The opcode and recursion-desired bits of the query's flags.
    flags: u16,
    name: String,
    qtype: u16,
    qclass: u16,
    /// Where the question section ends in the query.
    end: usize,
}

/// Why a query cannot be answered here.
#[derive(Debug, PartialEq, Eq)]
enum Malformed {
    /// Too short, or not a query at all: dropped without an answer.
    Drop,
    /// A query this server cannot read: answered with FORMERR.
    Refuse { id: u16, flags: u16 },
}

fn parse(query: &[u8]) -> Result<Question, Malformed> {
    if query.len() < 12 {
        return Err(Malformed::Drop);
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let raw_flags = u16::from_be_bytes([query[2], query[3]]);
    if raw_flags & 0x8000 != 0 {
        // A response: never answer one.
        return Err(Malformed::Drop);
    }
    let flags = raw_flags & 0x7900; // opcode and RD
    let refuse = Malformed::Refuse { id, flags };
    let questions = u16::from_be_bytes([query[4], query[5]]);
    if questions != 1 || (raw_flags >> 11) & 0xf != 0 {
        return Err(refuse);
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at).ok_or(Malformed::Refuse { id, flags })? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        // Compression pointers and extended labels have no place in the
        // first question.
        if len > 63 {
            return Err(refuse);
        }
        let label = query
            .get(at..at + len)
            .ok_or(Malformed::Refuse { id, flags })?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += len;
        if at > 12 + 255 {
            return Err(refuse);
        }
    }
    let tail = query
        .get(at..at + 4)
        .ok_or(Malformed::Refuse { id, flags })?;
    Ok(Question {
        id,
        flags,
        name: labels.join("."),
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        end: at + 4,
    })
}

/// A response header: the query's id, QR, its opcode and RD, RA, `rcode`.
fn header(id: u16, flags: u16, rcode: u8, questions: u16, answers: u16) -> [u8; 12] {
    let flags = 0x8000 | flags | 0x0080 | rcode as u16;
    let mut h = [0; 12];
    h[0..2].copy_from_slice(&id.to_be_bytes());
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..6].copy_from_slice(&questions.to_be_bytes());
    h[6..8].copy_from_slice(&answers.to_be_bytes());
    h
}

/// The answer to `question` (read from `query`) with `addresses`.
fn answer(query: &[u8], question: &Question, addresses: &[Ipv4Addr]) -> Vec<u8> {
    let addresses = if question.qtype == TYPE_A {
        addresses
    } else {
        &[]
    };
    // Whole answers only: a stub gets what fits in one datagram.
    let fit = (MAX_UDP - question.end) / 16;
    let addresses = &addresses[..addresses.len().min(fit)];
    let mut out = header(question.id, question.flags, 0, 1, addresses.len() as u16).to_vec();
    // Authoritative: these names are ours.
    out[2] |= 0x04;
    out.extend_from_slice(&query[12..question.end]);
    for address in addresses {
        out.extend_from_slice(&[0xc0, 12]); // the name, pointing at the question
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&MEMBER_TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&address.octets());
    }
    out
}

/// An error answer, without the question.
fn failure(id: u16, flags: u16, rcode: u8) -> Vec<u8> {
    header(id, flags, rcode, 0, 0).to_vec()
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Answer(Vec<u8>),
    Relay { id: u16, flags: u16 },
    Nothing,
}

fn decide(query: &[u8], records: &Records) -> Reply {
    match parse(query) {
        Err(Malformed::Drop) => Reply::Nothing,
        Err(Malformed::Refuse { id, flags }) => Reply::Answer(failure(id, flags, RCODE_FORMERR)),
        Ok(q) => {
            let member = if q.qclass == CLASS_IN && matches!(q.qtype, TYPE_A | TYPE_AAAA) {
                records.lookup(&q.name)
            } else {
                None
            };
            match member {
                Some(addresses) => Reply::Answer(answer(query, &q, &addresses)),
                None => Reply::Relay {
                    id: q.id,
                    flags: q.flags,
                },
            }
        }
    }
}

/// Asks the upstream servers in turn; the first answer is returned as is.
async fn relay(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let bind: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.connect(server).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0; RECV_BUFFER];
        if let Ok(Ok(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await {
            // The answer must be to this query.
            if n >= 2 && buf[..2] == query[..2] {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

/// Serves `records` on `socket` until the task is dropped, relaying other
/// names to the asking member's own servers or else to `upstream`.
pub async fn serve(socket: UdpSocket, records: Arc<Records>, upstream: Arc<Vec<SocketAddr>>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0; RECV_BUFFER];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!("dns: receive failed: {e}");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        match decide(&query, &records) {
            Reply::Nothing => {}
            Reply::Answer(reply) => {
                let _ = socket.send_to(&reply, from).await;
            }
            Reply::Relay { id, flags } => {
                let socket = socket.clone();
                let upstream = records
                    .upstream_of(from.ip())
                    .unwrap_or_else(|| upstream.clone());
                tokio::spawn(async move {
                    let reply = relay(&query, &upstream)
                        .await
                        .unwrap_or_else(|| failure(id, flags, RCODE_SERVFAIL));
                    let _ = socket.send_to(&reply, from).await;
                });
            }
        }
    }
}

/// `servers` (addresses, as `--dns` takes them) on port 53; what does not
/// parse is left out (create refused it already).
pub fn servers(servers: &[String]) -> Vec<SocketAddr> {
    servers
        .iter()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, PORT))
        .collect()
}

/// The servers a resolv.conf text names, as socket addresses on port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|address| address.split('%').next()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, PORT))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![];
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn records() -> Records {
        let r = Records::default();
        r.add(
            &["web".into(), "Front".into()],
            Ipv4Addr::new(172, 18, 0, 2),
        );
        r
    }

    #[test]
    fn answers_a_member_by_name_and_alias_in_any_case() {
        for name in ["web", "front", "FRONT", "web."] {
            let q = query(7, name.trim_end_matches('.'), TYPE_A);
            let Reply::Answer(a) = decide(&q, &records()) else {
                panic!("{name}: not answered");
            };
            assert_eq!(&a[..2], &7u16.to_be_bytes());
            assert_eq!(a[2] & 0x80, 0x80, "QR");
            assert_eq!(a[3] & 0x0f, 0, "NOERROR");
            assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
            assert_eq!(&a[a.len() - 4..], &[172, 18, 0, 2]);
            assert_eq!(&a[12..q.len()], &q[12..], "the question is echoed");
        }
    }

    #[test]
    fn aaaa_for_a_member_is_empty_and_others_are_relayed() {
        let Reply::Answer(a) = decide(&query(1, "web", TYPE_AAAA), &records()) else {
            panic!("not answered");
        };
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 0);
        assert_eq!(
            decide(&query(2, "example.org", TYPE_A), &records()),
            Reply::Relay {
                id: 2,
                flags: 0x0100
            }
        );
    }

    #[test]
    fn garbage_is_dropped_or_refused_never_panics() {
        assert_eq!(decide(&[1, 2, 3], &records()), Reply::Nothing);
        let mut response = query(3, "web", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(decide(&response, &records()), Reply::Nothing);
        let mut cut = query(4, "web", TYPE_A);
        cut.truncate(cut.len() - 3);
        let Reply::Answer(a) = decide(&cut, &records()) else {
            panic!("not refused");
        };
        assert_eq!(a[3] & 0x0f, RCODE_FORMERR);
        let mut pointer = query(5, "web", TYPE_A);
        pointer[12] = 0xc0;
        assert!(matches!(decide(&pointer, &records()), Reply::Answer(_)));
        for len in 0..40 {
            let _ = decide(&query(6, "abc.def", TYPE_A)[..len.min(25)], &records());
        }
    }

    #[test]
    fn removing_an_address_forgets_its_names() {
        let r = records();
        r.remove(Ipv4Addr::new(172, 18, 0, 2));
        assert_eq!(r.lookup("web"), None);
    }

    #[test]
    fn reads_nameservers() {
        let text =
            "# x\nnameserver 10.0.2.3\nsearch lan\nnameserver fe80::1%eth0\nnameserver bad\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.2.3:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}

//! `Agent.WatchPorts`: the TCP ports listening on the host's outside
//! addresses, read from `/proc/net/tcp` and `/proc/net/tcp6`, sent whole
//! whenever the set changes. Ports bound only to a loopback address are
//! private to the host and left out.

use std::collections::BTreeSet;
use std::time::Duration;

use berth_proto::pb::Ports;
use tokio::sync::mpsc;
use tonic::Status;

/// How often the tables are read: a published port shows up on the user's
/// machine within this.
const POLL: Duration = Duration::from_secs(1);

/// The `st` column of a listening socket.
const TCP_LISTEN: &str = "0A";

/// The listening ports in the text of a `/proc/net/tcp{,6}` table whose
/// local address is not a loopback one.
pub fn listening(table: &str) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            continue;
        };
        if *state != TCP_LISTEN {
            continue;
        }
        let Some((address, port)) = local.split_once(':') else {
            continue;
        };
        if is_loopback(address) {
            continue;
        }
        if let Ok(port) = u16::from_str_radix(port, 16) {
            ports.insert(port);
        }
    }
    ports
}

/// Whether a hex address of the table is a loopback one: 127.0.0.0/8 (the
/// first byte in memory order is the last two hex digits), `::1`, or
/// `::ffff:127.x.y.z`.
fn is_loopback(hex: &str) -> bool {
    match hex.len() {
        8 => hex.ends_with("7F") || hex.ends_with("7f"),
        32 => {
            hex.eq_ignore_ascii_case("00000000000000000000000001000000")
                || (hex[..16] == *"0000000000000000"
                    && hex[16..24].eq_ignore_ascii_case("FFFF0000")
                    && (hex.ends_with("7F") || hex.ends_with("7f")))
        }
        _ => false,
    }
}

fn read_ports() -> BTreeSet<u16> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| listening(&t))
        .collect()
}

/// Sends the port set to `tx` now and on every change, until the client
/// goes away.
pub async fn watch(tx: mpsc::Sender<Result<Ports, Status>>) {
    let mut last: Option<BTreeSet<u16>> = None;
    loop {
        let now = tokio::task::spawn_blocking(read_ports)
            .await
            .unwrap_or_default();
        if last.as_ref() != Some(&now) {
            let update = Ports {
                tcp: now.iter().map(|p| u32::from(*p)).collect(),
            };
            if tx.send(Ok(update)).await.is_err() {
                return;
            }
            last = Some(now);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_outside_listeners_only() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
           1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
           2: 0F02000A:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1\n\
           3: 0F02000A:D2F0 0202000A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1\n";
        assert_eq!(listening(tcp), BTreeSet::from([8080, 22]));
        let tcp6 = "  sl  local_address remote_address st\n\
           0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A x\n\
           1: 00000000000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A x\n\
           2: 0000000000000000FFFF00000100007F:1F93 00000000000000000000000000000000:0000 0A x\n";
        assert_eq!(listening(tcp6), BTreeSet::from([8081]));
    }
}

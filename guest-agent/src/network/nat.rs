//! The packet filter's part: one nftables table per agent (`ip
//! berth_<id>`), replaced whole in one transaction whenever its networks
//! change, and deleted when none is in use. It masquerades what leaves a
//! network for the outside, and keeps networks from reaching each other.
//! Other tables (the host's firewall, iptables-nft) are left alone.
//!
//! The table is written by the `nft` program (Debian's `nftables`; shipped
//! in our guest image): it speaks the kernel's nf_tables netlink dialect,
//! which this agent does not.
//!
//! Whether the table may be in the kernel is noted in a file under
//! [`LOADED_DIR`] (a tmpfs, empty after every boot), so that an agent
//! starting on a freshly booted machine does not run `nft` only to delete
//! a table that cannot exist.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::ipam::Subnet;

/// A network as the rules see it.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its bridge.
    pub bridge: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// Whether it may reach the outside (not `--internal`).
    pub outbound: bool,
}

/// The ruleset of table `table` for `networks`: the table deleted and
/// made again, so that applying it replaces whatever was there.
fn ruleset(table: &str, networks: &[Rule]) -> String {
    let mut text = format!("table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n");
    text.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for n in networks.iter().filter(|n| n.outbound) {
        text.push_str(&format!(
            "    ip saddr {} oifname != \"{}\" masquerade\n",
            n.subnet, n.bridge
        ));
    }
    text.push_str("  }\n");
    text.push_str(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    if !networks.is_empty() {
        let bridges: Vec<String> = networks
            .iter()
            .map(|n| format!("\"{}\"", n.bridge))
            .collect();
        let set = bridges.join(", ");
        for n in networks {
            // Not into another of our networks, and not out at all when
            // internal.
            text.push_str(&format!(
                "    iifname \"{b}\" oifname {{ {set} }} oifname != \"{b}\" drop\n",
                b = n.bridge
            ));
            if !n.outbound {
                text.push_str(&format!(
                    "    iifname \"{b}\" oifname != \"{b}\" drop\n    oifname \"{b}\" iifname != \"{b}\" drop\n",
                    b = n.bridge
                ));
            }
        }
    }
    text.push_str("  }\n}\n");
    text
}

/// The command that removes table `table` (if it is there).
fn teardown(table: &str) -> String {
    format!("table ip {table}\ndelete table ip {table}\n")
}

/// Where the tables an agent has loaded since boot are noted, one empty
/// file each.
pub const LOADED_DIR: &str = "/run/berth-agent/nat";

fn marker(table: &str) -> PathBuf {
    Path::new(LOADED_DIR).join(table)
}

/// Makes [`LOADED_DIR`]; without it every table counts as loaded.
pub fn prepare_notes() {
    if let Err(e) = std::fs::create_dir_all(LOADED_DIR) {
        tracing::debug!("cannot make {LOADED_DIR} ({e}): stale tables are looked for with nft");
    }
}

/// Makes table `table` hold the rules for `networks`, or deletes it when
/// there are none.
pub async fn replace(table: &str, networks: &[Rule]) -> Result<(), String> {
    if networks.is_empty() {
        return remove(table).await;
    }
    // Noted before it is loaded: a load cut short still counts.
    let _ = std::fs::write(marker(table), b"");
    apply(&ruleset(table, networks)).await
}

/// Deletes table `table`.
pub async fn remove(table: &str) -> Result<(), String> {
    apply(&teardown(table)).await?;
    let _ = std::fs::remove_file(marker(table));
    Ok(())
}

/// Deletes table `table` if it may be there: unless it is noted as not
/// loaded since boot.
pub async fn remove_stale(table: &str) -> Result<(), String> {
    if !may_be_loaded(Path::new(LOADED_DIR), table) {
        return Ok(());
    }
    remove(table).await
}

/// Whether table `table` may be in the kernel, as the notes in `dir` tell:
/// yes unless they are kept and none is there for it.
fn may_be_loaded(dir: &Path, table: &str) -> bool {
    !dir.is_dir() || dir.join(table).exists()
}

/// Runs `nft -f -` with `script`.
async fn apply(script: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run nft ({e}): container networking needs nftables (Debian: apt-get install nftables)"
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("cannot write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft did not finish: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Turns on IPv4 forwarding, without which nothing leaves a network.
pub fn enable_forwarding() -> Result<(), String> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| format!("cannot enable IPv4 forwarding: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_counts_as_loaded_unless_noted_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("nat");
        // No notes kept (no /run): whatever was there must be looked for.
        assert!(may_be_loaded(&notes, "berth_abc"));
        std::fs::create_dir(&notes).unwrap();
        assert!(!may_be_loaded(&notes, "berth_abc"));
        std::fs::write(notes.join("berth_abc"), b"").unwrap();
        assert!(may_be_loaded(&notes, "berth_abc"));
        assert!(!may_be_loaded(&notes, "berth_other"));
    }

    #[test]
    fn rules_masquerade_and_isolate() {
        let text = ruleset(
            "berth_1",
            &[
                Rule {
                    bridge: "berth0".into(),
                    subnet: "172.17.0.0/16".parse().unwrap(),
                    outbound: true,
                },
                Rule {
                    bridge: "br-abc".into(),
                    subnet: "172.18.0.0/16".parse().unwrap(),
                    outbound: false,
                },
            ],
        );
        assert!(text.starts_with("table ip berth_1\ndelete table ip berth_1\n"));
        assert!(text.contains("ip saddr 172.17.0.0/16 oifname != \"berth0\" masquerade"));
        assert!(!text.contains("172.18.0.0/16 oifname"), "internal: no NAT");
        assert!(text.contains(
            "iifname \"berth0\" oifname { \"berth0\", \"br-abc\" } oifname != \"berth0\" drop"
        ));
        assert!(text.contains("iifname \"br-abc\" oifname != \"br-abc\" drop"));
    }
}

//! Links, addresses and routes through rtnetlink, and network namespaces.
//!
//! A netlink socket belongs to the network namespace it was made in, for
//! its whole life: [`Netlink::open_in`] makes one on a short-lived thread
//! that entered the container's namespace, so that no thread of the agent
//! ever changes namespace for longer than that.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A netlink error, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action}: {message}")]
pub struct LinkError {
    action: String,
    message: String,
    /// The errno, when the kernel refused.
    errno: Option<i32>,
}

impl LinkError {
    fn new(action: impl Into<String>, error: impl std::fmt::Display) -> Self {
        LinkError {
            action: action.into(),
            message: error.to_string(),
            errno: None,
        }
    }

    fn netlink(action: impl Into<String>, error: rtnetlink::Error) -> Self {
        let errno = match &error {
            rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
            _ => None,
        };
        let message = match &error {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        };
        LinkError {
            action: action.into(),
            message,
            errno,
        }
    }

    fn is(&self, errno: nix::errno::Errno) -> bool {
        self.errno == Some(errno as i32)
    }
}

/// An rtnetlink connection in one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the agent's own namespace.
    pub fn open() -> Result<Self, LinkError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| LinkError::new("open rtnetlink", e))?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// A connection in the namespace bound at `netns`.
    pub fn open_in(netns: &Path) -> Result<Self, LinkError> {
        let runtime = tokio::runtime::Handle::current();
        let path = netns.to_owned();
        let made = std::thread::spawn(move || -> io::Result<_> {
            let ns = File::open(&path)?;
            setns(&ns, CloneFlags::CLONE_NEWNET)?;
            // The socket registers with the reactor as it is made.
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })
        .join()
        .map_err(|_| LinkError::new("open rtnetlink in a container", "the thread panicked"))?
        .map_err(|e| LinkError::new(format!("open rtnetlink in {}", netns.display()), e))?;
        let (connection, handle, _) = made;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The index of link `name`, if there is one.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, LinkError> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match found {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = LinkError::netlink(format!("look up link {name}"), e);
                if e.is(nix::errno::Errno::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn require(&self, name: &str) -> Result<u32, LinkError> {
        self.index(name)
            .await?
            .ok_or_else(|| LinkError::new(format!("find link {name}"), "no such link"))
    }

    /// Makes bridge `name` with `address/prefix` on it, up; a bridge that
    /// is there already is reused.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        if self.index(name).await?.is_none() {
            if let Err(e) = self
                .handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                let e = LinkError::netlink(format!("create bridge {name}"), e);
                if !e.is(nix::errno::Errno::EEXIST) {
                    return Err(e);
                }
            }
        }
        let index = self.require(name).await?;
        self.add_address(index, address, prefix, name).await?;
        self.up(index, name).await
    }

    async fn add_address(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
        name: &str,
    ) -> Result<(), LinkError> {
        if let Err(e) = self
            .handle
            .address()
            .add(index, IpAddr::V4(address), prefix)
            .execute()
            .await
        {
            let e = LinkError::netlink(format!("add {address}/{prefix} to {name}"), e);
            if !e.is(nix::errno::Errno::EEXIST) {
                return Err(e);
            }
        }
        Ok(())
    }

    async fn up(&self, index: u32, name: &str) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| LinkError::netlink(format!("bring {name} up"), e))
    }

    /// Deletes link `name`; nothing if it is not there.
    pub async fn delete(&self, name: &str) -> Result<(), LinkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = LinkError::netlink(format!("delete link {name}"), e);
                if e.is(nix::errno::Errno::ENODEV) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The names starting with `prefix` of the links attached to any of
    /// `bridges`.
    pub async fn links_on(
        &self,
        bridges: &[String],
        prefix: &str,
    ) -> Result<Vec<String>, LinkError> {
        use rtnetlink::packet_route::link::LinkAttribute;
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| LinkError::netlink("list links", e))?;
        let name = |l: &rtnetlink::packet_route::link::LinkMessage| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        };
        let bridge_indexes: Vec<u32> = links
            .iter()
            .filter(|l| name(l).is_some_and(|n| bridges.contains(&n)))
            .map(|l| l.header.index)
            .collect();
        Ok(links
            .iter()
            .filter(|l| {
                l.attributes.iter().any(
                    |a| matches!(a, LinkAttribute::Controller(i) if bridge_indexes.contains(i)),
                )
            })
            .filter_map(name)
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// Makes veth pair `host`–`peer`, attaches `host` to `bridge` and
    /// brings it up, and moves `peer` into the namespace bound at `netns`.
    pub async fn plug(
        &self,
        host: &str,
        peer: &str,
        bridge: &str,
        netns: &Path,
    ) -> Result<(), LinkError> {
        self.handle
            .link()
            .add(LinkVeth::new(host, peer).build())
            .execute()
            .await
            .map_err(|e| LinkError::netlink(format!("create veth pair {host}"), e))?;
        let plugged = async {
            let bridge_index = self.require(bridge).await?;
            let host_index = self.require(host).await?;
            let peer_index = self.require(peer).await?;
            let ns = File::open(netns).map_err(|e| LinkError::new("open the namespace", e))?;
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(peer_index)
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| LinkError::netlink(format!("move {peer} into the container"), e))?;
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(host_index)
                        .controller(bridge_index)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| LinkError::netlink(format!("attach {host} to {bridge}"), e))
        };
        match plugged.await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Deleting one end deletes the pair.
                let _ = self.delete(host).await;
                Err(e)
            }
        }
    }

    /// In a container's namespace: renames link `from` to `to`, gives it
    /// `mac` and `address/prefix`, and brings it up.
    pub async fn configure(
        &self,
        from: &str,
        to: &str,
        mac: [u8; 6],
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        let index = self.require(from).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name(to.to_owned())
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| LinkError::netlink(format!("name the container's link {to}"), e))?;
        self.add_address(index, address, prefix, to).await?;
        self.up(index, to).await
    }

    /// Brings the loopback link up.
    pub async fn loopback_up(&self) -> Result<(), LinkError> {
        let index = self.require("lo").await?;
        self.up(index, "lo").await
    }

    /// Adds the default route through `gateway`.
    pub async fn default_route(&self, gateway: Ipv4Addr) -> Result<(), LinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .scope(RouteScope::Universe)
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(|e| LinkError::netlink(format!("add the default route via {gateway}"), e))
    }
}

/// A network namespace kept alive by a bind mount of it at `path`.
pub fn create_netns(path: &Path) -> Result<(), LinkError> {
    let target: PathBuf = path.to_owned();
    std::thread::spawn(move || -> Result<(), LinkError> {
        File::create(&target).map_err(|e| LinkError::new("create the namespace file", e))?;
        // Only this thread moves: it ends right after.
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| LinkError::new("create a network namespace", e))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| LinkError::new("bind the network namespace", e))
    })
    .join()
    .map_err(|_| LinkError::new("create a network namespace", "the thread panicked"))?
    .inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Lets go of the namespace bound at `path` (its links go with it once no
/// process is left in it).
pub fn remove_netns(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

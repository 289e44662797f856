//! Container networking: bridge networks with their addresses, NAT and
//! resolver, the links that plug a container into them, and published
//! ports.
//!
//! - [`ipam`] — subnets and addresses.
//! - [`link`] — bridges, veth pairs, namespaces (rtnetlink).
//! - [`nat`] — Berth's nftables table: masquerade and isolation.
//! - [`dns`] — the resolver of each user-defined network.
//! - [`proxy`] — published ports.
//!
//! Networks are kept in `<root>/networks.json`; the default one
//! (`bridge`) is made on first open with a subnet that none of the host's
//! routes uses. Every name an agent gives the host — bridges `br-<id>`,
//! the nftables table `berth_<id>` — comes from its networks' ids, so
//! that agents with different roots on one host (tests, several native
//! machines) never touch each other's. A network's bridge, rules and resolver exist only while a
//! container uses it, and a container's links, addresses and ports only
//! while it runs: [`Networks::detach`] undoes all of [`Networks::attach`].

pub mod dns;
pub mod ipam;
pub mod link;
pub mod nat;
pub mod proxy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tracing::warn;

use ipam::Subnet;
use link::Netlink;
use proxy::{Protocol, Published};

/// The default network's name, as dockerd calls it.
pub const DEFAULT_NETWORK: &str = "bridge";

/// The container's interface names: `eth0`, `eth1`, …
const INTERFACE_PREFIX: &str = "eth";
/// Host ends of containers' veth pairs (and the temporary names of their
/// container ends).
const HOST_VETH_PREFIX: &str = "berth-";
const PEER_VETH_PREFIX: &str = "berthp";

/// Errors of networks.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No such network.
    #[error("network {0} not found")]
    NotFound(String),
    /// A name taken, a subnet used.
    #[error("{0}")]
    Conflict(String),
    /// Not allowed (a built-in network, one in use).
    #[error("{0}")]
    Forbidden(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// The kernel or a tool refused.
    #[error("{0}")]
    System(String),
}

impl From<link::LinkError> for NetworkError {
    fn from(e: link::LinkError) -> Self {
        NetworkError::System(e.to_string())
    }
}

/// A network, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    /// 64 hex digits.
    pub id: String,
    /// Unique among networks.
    pub name: String,
    /// `bridge`, or `host` / `null` for the built-in ones.
    pub driver: String,
    /// Its subnet (CIDR); none for the built-in non-bridge ones.
    pub subnet: Option<String>,
    /// The bridge's own address in it.
    pub gateway: Option<Ipv4Addr>,
    /// The bridge link's name.
    pub bridge: String,
    /// No way out (`--internal`).
    pub internal: bool,
    /// When it was made (RFC 3339).
    pub created: String,
    /// User labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Driver options, as given.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Its subnet was chosen here from the default pools (no `--subnet`):
    /// it may move while nobody is on the network.
    #[serde(default)]
    pub auto_subnet: bool,
}

impl Network {
    /// Whether it is one of `bridge`, `host`, `none`.
    pub fn is_builtin(&self) -> bool {
        matches!(self.name.as_str(), DEFAULT_NETWORK | "host" | "none")
    }

    /// Whether containers get links on it.
    pub fn is_bridge(&self) -> bool {
        self.driver == "bridge"
    }

    fn subnet(&self) -> Option<Subnet> {
        self.subnet.as_deref().and_then(|s| s.parse().ok())
    }
}

/// A container's place on one network.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    /// The network's id.
    pub network_id: String,
    /// The network's name.
    pub network: String,
    /// 64 hex digits.
    pub endpoint_id: String,
    /// The container's address there.
    pub address: Option<Ipv4Addr>,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The network's gateway.
    pub gateway: Option<Ipv4Addr>,
    /// `02:42:…`.
    pub mac: String,
    /// Other names it has there.
    pub aliases: Vec<String>,
    /// The veth end on the host's side.
    pub host_link: String,
    /// Its name in the container.
    pub interface: String,
}

/// A published port, as asked for and as given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    /// In the container.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The host address listened on (`0.0.0.0` for all).
    pub host_ip: String,
    /// The host port listened on.
    pub host_port: u16,
}

/// A port to publish: `container_port/protocol` on `host_ip:host_port`
/// (0 for any free port).
#[derive(Debug, Clone)]
pub struct PortRequest {
    /// In the container.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host address (all if none).
    pub host_ip: Option<std::net::IpAddr>,
    /// The host port (any free one if 0).
    pub host_port: u16,
}

/// What [`Networks::attach`] needs to know of a container.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its network namespace's bind mount.
    pub netns: &'a Path,
    /// The DNS servers it was given (`--dns`): on a user-defined network,
    /// the network's resolver relays its questions to them.
    pub dns: &'a [String],
}

struct Live {
    records: Arc<dns::Records>,
    resolver: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(task) = &self.resolver {
            task.abort();
        }
    }
}

#[derive(Default)]
struct State {
    networks: BTreeMap<String, Network>,
    live: HashMap<String, Live>,
    used: HashMap<String, BTreeSet<Ipv4Addr>>,
    ports: HashMap<String, Vec<Published>>,
}

/// The networks of one agent.
pub struct Networks {
    file: PathBuf,
    netns_dir: PathBuf,
    state: Mutex<State>,
    /// Serializes changes to links and rules.
    changing: tokio::sync::Mutex<()>,
    upstream: Arc<Vec<SocketAddr>>,
    /// This agent's nftables table.
    table: String,
}

fn builtin(name: &str, driver: &str) -> Network {
    let digest = sha2::Sha256::digest(format!("berth-network-{name}").as_bytes());
    Network {
        id: digest.iter().map(|b| format!("{b:02x}")).collect(),
        name: name.into(),
        driver: driver.into(),
        subnet: None,
        gateway: None,
        bridge: String::new(),
        internal: false,
        created: String::new(),
        labels: BTreeMap::new(),
        options: BTreeMap::new(),
        auto_subnet: false,
    }
}

/// A subnet of the default pool that neither the host's routes nor
/// `used` overlap.
fn free_subnet(used: &[Subnet]) -> Result<Subnet, NetworkError> {
    let mut taken = std::fs::read_to_string("/proc/net/route")
        .map(|t| ipam::host_routes(&t))
        .unwrap_or_default();
    taken.extend_from_slice(used);
    ipam::choose(ipam::default_pool(), &taken).ok_or_else(|| {
        NetworkError::Conflict(
            "no free subnet is left in the default pools: give one with --subnet".into(),
        )
    })
}

fn short_hash(text: &str) -> String {
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The MAC address dockerd would give `address`: 02:42 and the address.
fn mac_for(address: Ipv4Addr) -> [u8; 6] {
    let o = address.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Networks {
    /// Opens the networks kept under `root`, making the default one (on
    /// `default_subnet`, or the first free subnet of the default pool).
    pub fn open(root: &Path, default_subnet: Option<Subnet>) -> Result<Arc<Self>, NetworkError> {
        let file = root.join("networks.json");
        let netns_dir = root.join("netns");
        std::fs::create_dir_all(&netns_dir)
            .map_err(|e| NetworkError::System(format!("create {}: {e}", netns_dir.display())))?;
        let mut networks: BTreeMap<String, Network> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice::<Vec<Network>>(&bytes)
                .map_err(|e| NetworkError::System(format!("{} is damaged: {e}", file.display())))?
                .into_iter()
                .map(|n| (n.id.clone(), n))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(NetworkError::System(format!(
                    "read {}: {e}",
                    file.display()
                )))
            }
        };
        nat::prepare_notes();
        let upstream = std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| dns::nameservers(&t))
            .unwrap_or_default();
        let made_default = !networks.values().any(|n| n.name == DEFAULT_NETWORK);
        if made_default {
            let used: Vec<Subnet> = networks.values().filter_map(Network::subnet).collect();
            let subnet = match default_subnet {
                Some(s) => s,
                None => free_subnet(&used)?,
            };
            let mut default = builtin(DEFAULT_NETWORK, "bridge");
            default.id = crate::engine::random_id();
            default.subnet = Some(subnet.to_string());
            default.gateway = Some(subnet.first_host());
            default.bridge = format!("br-{}", &default.id[..12]);
            default.created = crate::engine::now();
            networks.insert(default.id.clone(), default);
        }
        let table = networks
            .values()
            .find(|n| n.name == DEFAULT_NETWORK)
            .map(|n| format!("berth_{}", &n.id[..12]))
            .unwrap_or_else(|| "berth".into());
        let this = Networks {
            file,
            netns_dir,
            state: Mutex::new(State::default()),
            changing: tokio::sync::Mutex::new(()),
            upstream: Arc::new(upstream),
            table,
        };
        for b in [builtin("host", "host"), builtin("none", "null")] {
            networks.insert(b.id.clone(), b);
        }
        this.lock().networks = networks;
        if made_default {
            this.save()?;
        }
        Ok(Arc::new(this))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self) -> Result<(), NetworkError> {
        let kept: Vec<Network> = self
            .lock()
            .networks
            .values()
            .filter(|n| n.is_bridge())
            .cloned()
            .collect();
        crate::engine::write_json_durable(&self.file, &kept)
            .map_err(|e| NetworkError::System(e.to_string()))
    }

    /// Every network, built-in ones included.
    pub fn list(&self) -> Vec<Network> {
        self.lock().networks.values().cloned().collect()
    }

    /// The network named `key`, or whose id is or starts with `key`.
    pub fn find(&self, key: &str) -> Result<Network, NetworkError> {
        let state = self.lock();
        if let Some(n) = state
            .networks
            .values()
            .find(|n| n.name == key || n.id == key)
        {
            return Ok(n.clone());
        }
        let matches: Vec<&Network> = state
            .networks
            .values()
            .filter(|n| !key.is_empty() && n.id.starts_with(key))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(NetworkError::NotFound(key.into())),
            _ => Err(NetworkError::Invalid(format!(
                "network {key} is ambiguous ({} matches)",
                matches.len()
            ))),
        }
    }

    /// Makes a bridge network.
    pub fn create(
        &self,
        name: &str,
        subnet: Option<Subnet>,
        gateway: Option<Ipv4Addr>,
        internal: bool,
        labels: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
    ) -> Result<Network, NetworkError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(NetworkError::Invalid(format!(
                "invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let network = {
            let state = self.lock();
            if state.networks.values().any(|n| n.name == name) {
                return Err(NetworkError::Conflict(format!(
                    "network with name {name} already exists"
                )));
            }
            let used: Vec<Subnet> = state
                .networks
                .values()
                .filter_map(Network::subnet)
                .collect();
            drop(state);
            let auto_subnet = subnet.is_none();
            let subnet = match subnet {
                Some(s) => {
                    if let Some(u) = used.iter().find(|u| u.overlaps(&s)) {
                        return Err(NetworkError::Conflict(format!(
                            "invalid pool request: pool {s} overlaps with other one on this address space ({u})"
                        )));
                    }
                    s
                }
                None => free_subnet(&used)?,
            };
            let gateway = gateway.unwrap_or_else(|| subnet.first_host());
            if !subnet.contains(gateway) {
                return Err(NetworkError::Invalid(format!(
                    "gateway {gateway} is not in subnet {subnet}"
                )));
            }
            let id = crate::engine::random_id();
            Network {
                bridge: format!("br-{}", &id[..12]),
                id,
                name: name.into(),
                driver: "bridge".into(),
                subnet: Some(subnet.to_string()),
                gateway: Some(gateway),
                internal,
                created: crate::engine::now(),
                labels,
                options,
                auto_subnet,
            }
        };
        self.lock()
            .networks
            .insert(network.id.clone(), network.clone());
        if let Err(e) = self.save() {
            self.lock().networks.remove(&network.id);
            return Err(e);
        }
        Ok(network)
    }

    /// Removes a user-defined network nobody is on.
    pub async fn remove(&self, key: &str) -> Result<(), NetworkError> {
        let network = self.find(key)?;
        if network.is_builtin() {
            return Err(NetworkError::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                network.name
            )));
        }
        let _changing = self.changing.lock().await;
        if self
            .lock()
            .used
            .get(&network.id)
            .is_some_and(|u| !u.is_empty())
        {
            return Err(NetworkError::Forbidden(format!(
                "error while removing network: network {} id {} has active endpoints",
                network.name, network.id
            )));
        }
        self.deactivate(&network).await;
        self.lock().networks.remove(&network.id);
        self.save()
    }

    /// Takes every network down, whoever is on it and whether or not this
    /// agent brought it up: the NAT table and each bridge. For a host that
    /// is done with this agent; the records stay.
    pub async fn take_down_all(&self) -> Result<(), NetworkError> {
        let _changing = self.changing.lock().await;
        let bridges: Vec<String> = {
            let mut state = self.lock();
            state.live.clear();
            state
                .networks
                .values()
                .filter(|n| n.is_bridge())
                .map(|n| n.bridge.clone())
                .collect()
        };
        nat::remove_stale(&self.table)
            .await
            .map_err(NetworkError::System)?;
        let netlink = Netlink::open()?;
        for bridge in bridges {
            netlink.delete(&bridge).await?;
        }
        Ok(())
    }

    /// The addresses in use on network `id`, the gateway among them.
    fn taken(&self, network: &Network) -> BTreeSet<Ipv4Addr> {
        let mut taken = self
            .lock()
            .used
            .get(&network.id)
            .cloned()
            .unwrap_or_default();
        taken.extend(network.gateway);
        taken
    }

    /// What `host-gateway` names for a container without a gateway of its
    /// own (`--network host` or `none`): the default network's gateway, as
    /// dockerd's is docker0's address. The default network is brought up,
    /// so that the address is the host's.
    pub async fn default_gateway(&self) -> Result<Option<Ipv4Addr>, NetworkError> {
        let network = self.find(DEFAULT_NETWORK)?;
        if network.gateway.is_none() {
            return Ok(None);
        }
        self.activate(&network).await?;
        // Coming up may have moved it off a subnet something else took.
        Ok(self.find(DEFAULT_NETWORK)?.gateway)
    }

    /// Brings network `network` up (bridge, rules, resolver) if it is not.
    async fn activate(&self, network: &Network) -> Result<(), NetworkError> {
        if self.lock().live.contains_key(&network.id) {
            return Ok(());
        }
        // In our guest: bridges and nftables come with the later modules.
        crate::init::system::later_setup_done().await;
        let (subnet, gateway) = match (network.subnet(), network.gateway) {
            (Some(s), Some(g)) => (s, g),
            _ => {
                return Err(NetworkError::System(format!(
                    "network {} has no subnet",
                    network.name
                )))
            }
        };
        // Another link may have taken the subnet since it was chosen (a
        // VPN, another agent's bridge).
        let clash = std::fs::read_to_string("/proc/net/route")
            .map(|t| ipam::routes_by_link(&t))
            .unwrap_or_default()
            .into_iter()
            .find(|(link, route)| *link != network.bridge && route.overlaps(&subnet));
        let (network, subnet, gateway) = match clash {
            None => (network.clone(), subnet, gateway),
            Some((link, route))
                if network.name == DEFAULT_NETWORK || network.auto_subnet =>
            {
                // A subnet chosen here (the default network's, or one made
                // without --subnet) is ours to move while nobody is on it:
                // an inactive network has no one on it. Another agent on
                // this host may have taken it meanwhile.
                let used: Vec<Subnet> = self
                    .list()
                    .iter()
                    .filter(|n| n.id != network.id)
                    .filter_map(Network::subnet)
                    .collect();
                let moved = free_subnet(&used)?;
                warn!(network = %network.name, %subnet, %link, %route, "the network's subnet is taken; moving it to {moved}");
                let mut n = network.clone();
                n.subnet = Some(moved.to_string());
                n.gateway = Some(moved.first_host());
                self.lock().networks.insert(n.id.clone(), n.clone());
                self.save()?;
                (n, moved, moved.first_host())
            }
            Some((link, route)) => {
                return Err(NetworkError::Conflict(format!(
                    "network {}'s subnet {subnet} overlaps {route}, routed through {link} on this host: remove the network and make it with another --subnet",
                    network.name
                )))
            }
        };
        let network = &network;
        Netlink::open()?
            .ensure_bridge(&network.bridge, gateway, subnet.prefix())
            .await?;
        let records = Arc::new(dns::Records::default());
        let resolver = if network.is_builtin() {
            // As with dockerd: names resolve on user-defined networks only.
            None
        } else {
            match tokio::net::UdpSocket::bind((gateway, dns::PORT)).await {
                Ok(socket) => Some(tokio::spawn(dns::serve(
                    socket,
                    records.clone(),
                    self.upstream.clone(),
                ))),
                Err(e) => {
                    warn!(network = %network.name, "no resolver on {gateway}:53: {e}");
                    None
                }
            }
        };
        self.lock()
            .live
            .insert(network.id.clone(), Live { records, resolver });
        self.apply_rules().await
    }

    /// Takes network `network` down: resolver, rules, bridge.
    async fn deactivate(&self, network: &Network) {
        if self.lock().live.remove(&network.id).is_none() {
            return;
        }
        if let Err(e) = self.apply_rules().await {
            warn!("updating the NAT rules: {e}");
        }
        if let Ok(netlink) = Netlink::open() {
            if let Err(e) = netlink.delete(&network.bridge).await {
                warn!("removing bridge {}: {e}", network.bridge);
            }
        }
    }

    /// Writes the rules for the live networks.
    async fn apply_rules(&self) -> Result<(), NetworkError> {
        let rules: Vec<nat::Rule> = {
            let state = self.lock();
            state
                .live
                .keys()
                .filter_map(|id| state.networks.get(id))
                .filter_map(|n| {
                    Some(nat::Rule {
                        bridge: n.bridge.clone(),
                        subnet: n.subnet()?,
                        outbound: !n.internal,
                    })
                })
                .collect()
        };
        nat::enable_forwarding().map_err(NetworkError::System)?;
        nat::replace(&self.table, &rules)
            .await
            .map_err(NetworkError::System)
    }

    /// Makes a network namespace for a run of container `id` (with
    /// loopback up), bound at a path of that run's own.
    pub async fn create_netns(&self, id: &str) -> Result<PathBuf, NetworkError> {
        let run = &crate::engine::random_id()[..8];
        let path = self.netns_dir.join(format!("{id}-{run}"));
        link::create_netns(&path)?;
        let up = async {
            Netlink::open_in(&path)?.loopback_up().await?;
            Ok::<_, NetworkError>(())
        };
        if let Err(e) = up.await {
            link::remove_netns(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Plugs `member` into each of `networks` (with its aliases there), in
    /// order: the first one's gateway is its default route. Undone whole
    /// if any step fails.
    pub async fn attach(
        &self,
        member: &Member<'_>,
        networks: &[(String, Vec<String>)],
        first_interface: usize,
    ) -> Result<Vec<Endpoint>, NetworkError> {
        let mut done = Vec::new();
        for (i, (key, aliases)) in networks.iter().enumerate() {
            match self
                .attach_one(member, key, aliases, first_interface + i)
                .await
            {
                Ok(endpoint) => done.push(endpoint),
                Err(e) => {
                    self.detach(member.id, &done).await;
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    async fn attach_one(
        &self,
        member: &Member<'_>,
        key: &str,
        aliases: &[String],
        index: usize,
    ) -> Result<Endpoint, NetworkError> {
        let network = self.find(key)?;
        if !network.is_bridge() {
            return Err(NetworkError::Invalid(format!(
                "container cannot be connected to network {} (driver {})",
                network.name, network.driver
            )));
        }
        let _changing = self.changing.lock().await;
        self.activate(&network).await?;
        // Activation may have moved it (the default network's subnet).
        let network = self.find(&network.id)?;
        let subnet = network.subnet().ok_or_else(|| {
            NetworkError::System(format!("network {} has no subnet", network.name))
        })?;
        let address = subnet.free_address(&self.taken(&network)).ok_or_else(|| {
            NetworkError::Conflict(format!("no address is left on network {}", network.name))
        })?;
        self.lock()
            .used
            .entry(network.id.clone())
            .or_default()
            .insert(address);
        // Names of this run's own: what a run that ended tears down can
        // never be what a new run made.
        let endpoint_id = crate::engine::random_id();
        let tag = short_hash(&format!("{}/{endpoint_id}", member.id));
        let host_link = format!("{HOST_VETH_PREFIX}{tag}");
        let peer = format!("{PEER_VETH_PREFIX}{tag}");
        let interface = format!("{INTERFACE_PREFIX}{index}");
        let mac = mac_for(address);
        let plugged = async {
            let host = Netlink::open()?;
            host.plug(&host_link, &peer, &network.bridge, member.netns)
                .await?;
            let inside = Netlink::open_in(member.netns)?;
            inside
                .configure(&peer, &interface, mac, address, subnet.prefix())
                .await?;
            if index == 0 && !network.internal {
                if let Some(gateway) = network.gateway {
                    inside.default_route(gateway).await?;
                }
            }
            Ok::<_, NetworkError>(())
        };
        if let Err(e) = plugged.await {
            if let Some(u) = self.lock().used.get_mut(&network.id) {
                u.remove(&address);
            }
            if let Ok(host) = Netlink::open() {
                let _ = host.delete(&host_link).await;
            }
            return Err(e);
        }
        let endpoint = Endpoint {
            network_id: network.id.clone(),
            network: network.name.clone(),
            endpoint_id,
            address: Some(address),
            prefix: subnet.prefix(),
            gateway: network.gateway,
            mac: mac_text(mac),
            aliases: aliases.to_vec(),
            host_link,
            interface,
        };
        self.register_names(member, &endpoint);
        Ok(endpoint)
    }

    fn register_names(&self, member: &Member<'_>, endpoint: &Endpoint) {
        let Some(address) = endpoint.address else {
            return;
        };
        let mut names = vec![member.name.to_owned(), member.id[..12].to_owned()];
        names.extend(endpoint.aliases.iter().cloned());
        if let Some(live) = self.lock().live.get(&endpoint.network_id) {
            live.records.add(&names, address);
            live.records.set_upstream(address, dns::servers(member.dns));
        }
    }

    /// Takes `endpoints` of container `id` apart: links, addresses, names.
    /// A network nobody uses any more goes down.
    pub async fn detach(&self, id: &str, endpoints: &[Endpoint]) {
        let _changing = self.changing.lock().await;
        let host = Netlink::open().ok();
        for endpoint in endpoints {
            if let Some(host) = &host {
                if let Err(e) = host.delete(&endpoint.host_link).await {
                    warn!(container = %id, "removing {}: {e}", endpoint.host_link);
                }
            }
            let empty = {
                let mut state = self.lock();
                if let Some(address) = endpoint.address {
                    if let Some(live) = state.live.get(&endpoint.network_id) {
                        live.records.remove(address);
                    }
                    if let Some(u) = state.used.get_mut(&endpoint.network_id) {
                        u.remove(&address);
                    }
                }
                state
                    .used
                    .get(&endpoint.network_id)
                    .is_none_or(|u| u.is_empty())
            };
            if empty {
                if let Ok(network) = self.find(&endpoint.network_id) {
                    self.deactivate(&network).await;
                }
            }
        }
    }

    /// Lets go of a namespace made by [`Networks::create_netns`].
    pub fn remove_netns(&self, path: &Path) {
        // Only ours: a path from a record is checked before it is unmounted.
        if path.parent() == Some(self.netns_dir.as_path()) {
            link::remove_netns(path);
        }
    }

    /// Takes back what a container that still runs had when the agent
    /// restarted: its addresses, names and ports.
    pub async fn restore(
        &self,
        member: &Member<'_>,
        endpoints: &[Endpoint],
        ports: &[PortRequest],
    ) -> Result<Vec<PortMapping>, NetworkError> {
        for endpoint in endpoints {
            let Ok(network) = self.find(&endpoint.network_id) else {
                continue;
            };
            {
                let _changing = self.changing.lock().await;
                self.activate(&network).await?;
            }
            if let Some(address) = endpoint.address {
                self.lock()
                    .used
                    .entry(network.id.clone())
                    .or_default()
                    .insert(address);
            }
            self.register_names(member, endpoint);
        }
        let target = endpoints.iter().find_map(|e| e.address);
        match target {
            Some(address) => self.publish(member.id, ports, address).await,
            None => Ok(Vec::new()),
        }
    }

    /// Publishes `ports` of container `id` (reached at `address`).
    pub async fn publish(
        &self,
        id: &str,
        ports: &[PortRequest],
        address: Ipv4Addr,
    ) -> Result<Vec<PortMapping>, NetworkError> {
        let mut published = Vec::new();
        let mut mappings = Vec::new();
        for p in ports {
            let ip = p
                .host_ip
                .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let listening = proxy::publish(
                p.protocol,
                SocketAddr::new(ip, p.host_port),
                SocketAddrV4::new(address, p.container_port),
            )
            .await
            .map_err(|e| {
                NetworkError::Conflict(format!(
                    "driver failed programming external connectivity: Bind for {ip}:{} failed: {e}",
                    p.host_port
                ))
            })?;
            mappings.push(PortMapping {
                container_port: p.container_port,
                protocol: p.protocol.name().into(),
                host_ip: ip.to_string(),
                host_port: listening.host.port(),
            });
            published.push(listening);
        }
        self.lock()
            .ports
            .entry(id.to_owned())
            .or_default()
            .extend(published);
        Ok(mappings)
    }

    /// Closes container `id`'s published ports.
    pub fn unpublish(&self, id: &str) {
        self.lock().ports.remove(id);
    }

    /// Where a member of network `endpoint` finds names: the network's
    /// resolver, if it has one.
    pub fn resolver(&self, endpoint: &Endpoint) -> Option<Ipv4Addr> {
        let state = self.lock();
        let live = state.live.get(&endpoint.network_id)?;
        live.resolver.as_ref().and(endpoint.gateway)
    }

    /// Removes namespaces and links that no running container owns (left
    /// by containers that died while the agent was away): `netns` and
    /// `links` are what the running ones have.
    pub async fn sweep(&self, netns: &BTreeSet<PathBuf>, links: &BTreeSet<String>) {
        if let Ok(entries) = std::fs::read_dir(&self.netns_dir) {
            for entry in entries.flatten() {
                if !netns.contains(&entry.path()) {
                    link::remove_netns(&entry.path());
                }
            }
        }
        self.sweep_links(links).await;
        if self.lock().live.is_empty() {
            let _ = nat::remove_stale(&self.table).await;
        }
    }

    /// Deletes the host ends on our bridges that are not in `links` (a link
    /// on another agent's bridge is that agent's business), and our
    /// bridges that no network has up.
    async fn sweep_links(&self, links: &BTreeSet<String>) {
        let ours: Vec<String> = self
            .lock()
            .networks
            .values()
            .filter(|n| n.is_bridge())
            .map(|n| n.bridge.clone())
            .collect();
        // With none of them there (the machine has just booted, say),
        // there is nothing to delete: no need to ask the kernel.
        if !ours
            .iter()
            .any(|b| Path::new("/sys/class/net").join(b).exists())
        {
            return;
        }
        let Ok(host) = Netlink::open() else {
            return;
        };
        if let Ok(found) = host.links_on(&ours, HOST_VETH_PREFIX).await {
            for name in found.into_iter().filter(|l| !links.contains(l)) {
                let _ = host.delete(&name).await;
            }
        }
        let idle: Vec<Network> = {
            let state = self.lock();
            state
                .networks
                .values()
                .filter(|n| n.is_bridge() && !state.live.contains_key(&n.id))
                .cloned()
                .collect()
        };
        for network in idle {
            let _ = host.delete(&network.bridge).await;
        }
    }
}

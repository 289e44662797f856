//! The engine: containers, images and volumes as durable state under the
//! agent's root, and their lives — create, start, stop, kill, wait,
//! restart policies, auto-remove, events. The Docker API
//! ([`crate::api::docker`]) is a thin translation onto this.
//!
//! ```text
//! <root>/images/                       the image store
//! <root>/runtime/                      the OCI runtime's state
//! <root>/volumes/<name>/_data          named volumes
//! <root>/containers/<id>/record.json   the container (written atomically)
//!                        bundle/       config.json + rootfs (overlay mount point)
//!                        upper/ work/  its writable layer
//!                        shim.sock exit.json container-json.log   (the shim's)
//! ```
//!
//! Each running container has a shim ([`shim`]); the engine holds one
//! connection to it, through which output reaches attached clients and
//! the exit comes back. After an agent restart the engine reconnects to
//! the shims still there and takes the exit of the others from their
//! records.

pub mod archive;
pub mod commit;
pub mod config;
pub mod exec;
pub mod frame;
pub mod health;
pub mod logs;
pub mod names;
pub mod procs;
pub mod shim;
pub mod spec;
pub mod volumes;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::image::manifest::Platform;
use crate::image::pull::Puller;
use crate::image::reference::Reference;
use crate::image::registry::{Client, RegistryConfig};
use crate::image::store::{ImageRecord, Store};
use crate::image::ImageError;
use crate::runtime::overlay::{self, Overlay};
use crate::runtime::RuntimeError;
use config::{ContainerConfig, HostConfig, Record, State, Status};
use frame::{Exit, Kind};

/// How long a shim may take to create a container.
const SHIM_READY: Duration = Duration::from_secs(60);
/// Output chunks buffered per attached client before it lags.
const OUTPUT_BUFFER: usize = 1024;

/// What went wrong, in the classes the Docker API answers with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such container, image or volume (404).
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with what is there (409).
    #[error("{0}")]
    Conflict(String),
    /// The request cannot be carried out as given (400).
    #[error("{0}")]
    Invalid(String),
    /// An image operation failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    fn io(action: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Self {
        move |e| EngineError::Internal(format!("{action}: {e}"))
    }
}

/// Something that happened, for `docker events`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// `container`, `image`, `volume`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `create`, `start`, `die`, …
    #[serde(rename = "Action")]
    pub action: String,
    /// What it happened to.
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// Seconds since the epoch.
    pub time: i64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

/// An event's subject.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Actor {
    /// Its id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Name, image, exit code …
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

/// A piece of a container's output.
#[derive(Debug, Clone)]
pub struct Output {
    /// 1 stdout, 2 stderr (the stdcopy stream numbers).
    pub stream: u8,
    /// The bytes.
    pub bytes: Bytes,
}

/// What waiters watch.
#[derive(Debug, Clone, Copy)]
pub struct Watched {
    /// The status now.
    pub status: Status,
    /// The last exit code.
    pub exit_code: i32,
    /// How many times the process has exited.
    pub exits: u64,
    /// The container is gone.
    pub removed: bool,
}

/// `docker wait --condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    /// Return at once if it is not running, else at its exit.
    NotRunning,
    /// At its next exit.
    NextExit,
    /// Once it has been removed.
    Removed,
}

/// One container, in memory.
pub struct Container {
    /// Its id.
    pub id: String,
    dir: PathBuf,
    record: Mutex<Record>,
    watch: watch::Sender<Watched>,
    /// Output to attached clients; made on the first attach and dropped
    /// when the last one has gone (its buffer is not small).
    output: Mutex<Option<broadcast::Sender<Output>>>,
    shim: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    /// Serialises start/stop/remove of this container.
    lifecycle: Arc<tokio::sync::Mutex<()>>,
    /// One write of its record at a time, each of the record as it is
    /// then: an exit saved while a start saves cannot be overwritten by
    /// the start's older copy.
    saving: Mutex<()>,
}

impl Container {
    /// A copy of its record.
    pub fn record(&self) -> Record {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends output to the attached clients, if any are.
    fn publish(&self, output: Output) {
        let mut sender = self.output.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = sender.as_ref() {
            if tx.send(output).is_err() {
                // Nobody is attached any more.
                *sender = None;
            }
        }
    }

    /// Its output from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Output> {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| broadcast::channel(OUTPUT_BUFFER).0)
            .subscribe()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The json-file log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(shim::LOG_FILE)
    }

    /// Sends a frame to its shim; false if none is connected.
    fn to_shim(&self, kind: Kind, payload: &[u8]) -> bool {
        let shim = self.shim.lock().unwrap_or_else(|p| p.into_inner());
        shim.as_ref()
            .is_some_and(|tx| tx.send(frame::encode(kind, payload)).is_ok())
    }

    /// Bytes for the process's stdin.
    pub fn write_stdin(&self, bytes: &[u8]) {
        for chunk in bytes.chunks(frame::MAX_PAYLOAD) {
            self.to_shim(Kind::Stdin, chunk);
        }
    }

    /// Closes the process's stdin.
    pub fn close_stdin(&self) {
        self.to_shim(Kind::CloseStdin, b"");
    }

    /// Sets the terminal size.
    pub fn resize(&self, rows: u16, cols: u16) {
        let mut payload = rows.to_be_bytes().to_vec();
        payload.extend(cols.to_be_bytes());
        self.to_shim(Kind::Resize, &payload);
    }

    /// Watches its state.
    pub fn watch(&self) -> watch::Receiver<Watched> {
        self.watch.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut Record)) -> Record {
        let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut record);
        let copy = record.clone();
        drop(record);
        self.watch.send_modify(|w| {
            w.status = copy.state.status;
            w.exit_code = copy.state.exit_code;
        });
        copy
    }
}

/// The engine; one per agent.
pub struct Engine {
    root: PathBuf,
    /// The image store.
    pub store: Arc<Store>,
    /// The registry client.
    pub client: Arc<Client>,
    /// Pulls into the store.
    pub puller: Puller,
    /// Named volumes.
    pub volumes: volumes::Volumes,
    /// Networks, and containers' places on them.
    pub networks: Arc<crate::network::Networks>,
    containers: Mutex<BTreeMap<String, Arc<Container>>>,
    execs: exec::Execs,
    events: broadcast::Sender<Event>,
    /// When the engine started, for `info`.
    pub started: SystemTime,
    /// The engine's labels (`KEY=VALUE`), for `info`.
    pub labels: Vec<String>,
    /// Registries reached over plain HTTP, for `info`.
    pub insecure_registries: Vec<String>,
    /// Docker Hub mirrors, for `info`.
    pub registry_mirrors: Vec<String>,
    /// Set once [`Engine::stop_all`] began: no restart policy acts.
    shutting_down: std::sync::atomic::AtomicBool,
}

/// Container `record` as a member of its networks, in namespace `netns`.
fn member<'a>(record: &'a Record, netns: &'a Path) -> crate::network::Member<'a> {
    crate::network::Member {
        id: &record.id,
        name: &record.name,
        netns,
        dns: record.host_config.dns.as_deref().unwrap_or_default(),
    }
}

/// Now, as the Docker API writes times.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Writes `value` as JSON to `path` atomically (temp file, rename): a
/// reader, or the agent after a crash, sees the old or the new, never half.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), EngineError> {
    write_json_with(path, value, false)
}

/// As [`write_json`], and on disk before it returns (fsync): for what must
/// outlive a power failure, such as a container's creation.
pub fn write_json_durable(path: &Path, value: &impl serde::Serialize) -> Result<(), EngineError> {
    write_json_with(path, value, true)
}

fn write_json_with(
    path: &Path,
    value: &impl serde::Serialize,
    durable: bool,
) -> Result<(), EngineError> {
    // A name of its own per write: two writers of one file never share
    // (and rename away) each other's temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("json.tmp{n}"));
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        serde_json::to_writer_pretty(&mut f, value)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EngineError::io(format!("write {}", path.display()))(e)
    })
}

/// A new random id: 64 hex digits.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Engine {
    /// Opens the engine's state under `root`, reconnecting to running
    /// containers and restarting those whose policy says so.
    pub async fn open(
        root: &Path,
        registry: RegistryConfig,
        labels: Vec<String>,
        default_subnet: Option<crate::network::ipam::Subnet>,
    ) -> Result<Arc<Self>, EngineError> {
        let engine = Self::load(root, registry, labels, default_subnet)?;
        engine.restore(true).await;
        Ok(engine)
    }

    /// The engine's state under `root`, its containers not yet looked at.
    fn load(
        root: &Path,
        registry: RegistryConfig,
        labels: Vec<String>,
        default_subnet: Option<crate::network::ipam::Subnet>,
    ) -> Result<Arc<Self>, EngineError> {
        for dir in ["containers", "runtime", "volumes"] {
            std::fs::create_dir_all(root.join(dir)).map_err(EngineError::io(format!(
                "create {}",
                root.join(dir).display()
            )))?;
        }
        let store = Arc::new(Store::open(&root.join("images"))?);
        let insecure_registries = registry.insecure.clone();
        let registry_mirrors = registry.mirrors.clone();
        let client = Arc::new(Client::new(registry)?);
        let networks = crate::network::Networks::open(root, default_subnet)
            .map_err(|e| EngineError::Invalid(format!("networks: {e}")))?;
        let engine = Arc::new(Engine {
            root: root.to_owned(),
            networks,
            puller: Puller::new(store.clone(), client.clone()),
            store,
            client,
            volumes: volumes::Volumes::new(root.join("volumes")),
            containers: Mutex::new(BTreeMap::new()),
            execs: exec::Execs::default(),
            events: broadcast::channel(256).0,
            started: SystemTime::now(),
            labels,
            insecure_registries,
            registry_mirrors,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(engine)
    }

    /// Undoes on this host all that the engine under `root` made outside
    /// it: every container is killed and removed (processes, mounts,
    /// network namespaces) and every network's bridge and NAT rules are
    /// taken down. What is inside `root` is left for the caller to delete.
    /// Only while no agent serves `root` (the caller holds its lock).
    pub async fn purge(root: &Path) -> Result<(), EngineError> {
        if !root.join("containers").is_dir() && !root.join("networks.json").is_file() {
            // Never served: nothing of it exists outside the root.
            return Ok(());
        }
        let engine = Self::load(root, RegistryConfig::default(), Vec::new(), None)?;
        engine.restore(false).await;
        for container in engine.containers() {
            if let Err(e) = engine.remove(&container.id, true, true).await {
                warn!(container = %container.id, "remove: {e}");
            }
        }
        engine.networks.take_down_all().await.map_err(network_error)
    }

    /// The agent's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn runtime_root(&self) -> PathBuf {
        self.root.join("runtime")
    }

    /// Events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, kind: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let _ = self.events.send(Event {
            kind: kind.into(),
            action: action.into(),
            actor: Actor {
                id: id.into(),
                attributes,
            },
            time: nanos.as_secs() as i64,
            time_nano: nanos.as_nanos() as i64,
        });
    }

    fn emit_container(&self, action: &str, record: &Record, extra: &[(&str, String)]) {
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_owned(), record.name.clone());
        attributes.insert("image".to_owned(), record.image_name.clone());
        for (k, v) in record.config.labels.iter().flatten() {
            attributes.insert(k.clone(), v.clone());
        }
        for (k, v) in extra {
            attributes.insert((*k).to_owned(), v.clone());
        }
        self.emit("container", action, &record.id, attributes);
    }

    /// Emits an image or volume event.
    pub fn emit_simple(&self, kind: &str, action: &str, id: &str, name: Option<&str>) {
        let mut attributes = BTreeMap::new();
        if let Some(n) = name {
            attributes.insert("name".to_owned(), n.to_owned());
        }
        self.emit(kind, action, id, attributes);
    }

    /// Every container.
    pub fn containers(&self) -> Vec<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The container `key` names: full id, unique id prefix, or name.
    pub fn container(&self, key: &str) -> Result<Arc<Container>, EngineError> {
        let key = key.strip_prefix('/').unwrap_or(key);
        let all = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = all.get(key) {
            return Ok(c.clone());
        }
        if let Some(c) = all.values().find(|c| c.record().name == key) {
            return Ok(c.clone());
        }
        let matches: Vec<_> = if key.is_empty() {
            Vec::new()
        } else {
            all.values().filter(|c| c.id.starts_with(key)).collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NotFound(format!("No such container: {key}"))),
            _ => Err(EngineError::NotFound(format!(
                "Error response from daemon: multiple IDs found with provided prefix: {key}"
            ))),
        }
    }

    /// The image `name` names: a reference, `sha256:<id>` or an id prefix.
    pub fn image(&self, name: &str) -> Result<(String, ImageRecord), EngineError> {
        let names = self.store.names()?;
        if let Ok(reference) = name.parse::<Reference>() {
            if let Some(record) = names.get(&reference.to_string()) {
                return Ok((reference.to_string(), record.clone()));
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found = names
                .iter()
                .filter(|(_, r)| r.config.hex().starts_with(hex));
            if let Some((n, r)) = found.next() {
                return Ok((n.clone(), r.clone()));
            }
            // An image made here that no name points at.
            if let Some((id, local)) = self
                .store
                .local_images()?
                .into_iter()
                .find(|(id, _)| id.hex().starts_with(hex))
            {
                return Ok((id.to_string(), local.record));
            }
        }
        Err(EngineError::NotFound(format!("No such image: {name}")))
    }

    /// Pulls `reference` unless the store has it.
    pub async fn pull(
        &self,
        reference: &Reference,
        progress: Option<mpsc::UnboundedSender<crate::image::progress::Progress>>,
    ) -> Result<ImageRecord, EngineError> {
        let record = self
            .puller
            .pull(reference, &Platform::host(), progress)
            .await?;
        self.emit_simple("image", "pull", &reference.familiar(), None);
        Ok(record)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// Creates a container; returns its id.
    pub fn create(
        &self,
        name: Option<&str>,
        config: ContainerConfig,
        host_config: HostConfig,
        attachments: Vec<config::Attachment>,
    ) -> Result<String, EngineError> {
        if config.image.is_empty() {
            return Err(EngineError::Invalid("No image was specified".into()));
        }
        let (_, image) = self.image(&config.image)?;
        let (_, image_config) = self.store.image(&image)?;
        let image_cfg = image_config.config.config().clone().unwrap_or_default();
        let entrypoint = match &config.entrypoint {
            Some(e) => e.clone(),
            None => image_cfg.entrypoint().clone().unwrap_or_default(),
        };
        // A command given replaces the image's; an entrypoint given
        // resets the image's command too.
        let cmd = match (&config.cmd, &config.entrypoint) {
            (Some(c), _) => c.clone(),
            (None, Some(_)) => Vec::new(),
            (None, None) => image_cfg.cmd().clone().unwrap_or_default(),
        };
        let mut argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if argv.is_empty() || argv[0].is_empty() {
            return Err(EngineError::Invalid("no command specified".into()));
        }
        let path = argv.remove(0);
        validate_restart(&host_config)?;
        if host_config.auto_remove
            && !host_config.restart_policy.name.is_empty()
            && host_config.restart_policy.name != "no"
        {
            return Err(EngineError::Invalid(
                "conflicting options: cannot specify both --restart and --rm".into(),
            ));
        }
        volumes::check_sources(&volumes::requested(&host_config)?)?;
        spec::check(&host_config)?;
        if let Some(check) = &config.healthcheck {
            health::check(check)?;
        }
        for a in &attachments {
            let network = self.networks.find(&a.network).map_err(network_error)?;
            if !a.aliases.is_empty() && network.is_builtin() {
                return Err(EngineError::Invalid(
                    "network-scoped alias is supported only for containers in user defined networks"
                        .into(),
                ));
            }
        }
        port_requests(&host_config, &config.exposed_ports)?;
        let id = random_id();
        let mut all = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n);
                names::validate(n)?;
                if let Some(other) = all.values().find(|c| c.record().name == n) {
                    return Err(EngineError::Conflict(format!(
                        "Conflict. The container name \"/{n}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                        other.id
                    )));
                }
                n.to_owned()
            }
            None => loop {
                let candidate = names::generate();
                if !all.values().any(|c| c.record().name == candidate) {
                    break candidate;
                }
            },
        };
        let mut config = config;
        if config.hostname.is_empty() {
            // On the host's network it is the host's name, as with dockerd.
            config.hostname = if host_config.network_mode == "host" {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| id[..12].to_owned())
            } else {
                id[..12].to_owned()
            };
        }
        let record = Record {
            id: id.clone(),
            name,
            created: now(),
            image_name: config.image.clone(),
            image,
            path,
            args: argv,
            config,
            host_config,
            state: State::default(),
            restart_count: 0,
            network: config::NetworkState {
                attachments,
                ..Default::default()
            },
        };
        let dir = self.container_dir(&id);
        for sub in ["bundle/rootfs", "upper", "work"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(EngineError::io(format!(
                "create {}",
                dir.join(sub).display()
            )))?;
        }
        if let Err(e) = write_json_durable(&dir.join("record.json"), &record) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let container = self.adopt(record.clone(), dir);
        all.insert(id.clone(), container);
        drop(all);
        self.emit_container("create", &record, &[]);
        Ok(id)
    }

    fn adopt(&self, record: Record, dir: PathBuf) -> Arc<Container> {
        let watched = Watched {
            status: record.state.status,
            exit_code: record.state.exit_code,
            exits: 0,
            removed: false,
        };
        Arc::new(Container {
            id: record.id.clone(),
            dir,
            record: Mutex::new(record),
            watch: watch::channel(watched).0,
            output: Mutex::new(None),
            shim: Mutex::new(None),
            lifecycle: Arc::new(tokio::sync::Mutex::new(())),
            saving: Mutex::new(()),
        })
    }

    fn save(&self, container: &Container) -> Result<(), EngineError> {
        let _one_at_a_time = container.saving.lock().unwrap_or_else(|p| p.into_inner());
        write_json(&container.dir.join("record.json"), &container.record())
    }

    /// Starts a created or stopped container.
    pub async fn start(self: &Arc<Self>, key: &str) -> Result<(), EngineError> {
        let container = self.container(key)?;
        let _guard = container.lifecycle.lock().await;
        match container.record().state.status {
            Status::Running | Status::Restarting => return Ok(()),
            Status::Paused => {
                return Err(EngineError::Conflict(
                    "cannot start a paused container, try unpause instead".into(),
                ))
            }
            Status::Removing | Status::Dead => {
                return Err(EngineError::Conflict(format!(
                    "container {} is marked for removal and cannot be started",
                    container.id
                )))
            }
            Status::Created | Status::Exited => {}
        }
        let started = self.launch(&container).await;
        if let Err(e) = &started {
            let message = e.to_string();
            let code = start_failure_code(&message);
            let mut network = config::NetworkState::default();
            let record = container.update(|r| {
                network = r.network.take_run();
                r.state.status = if r.state.started_at.is_some() {
                    Status::Exited
                } else {
                    Status::Created
                };
                r.state.error = message.clone();
                r.state.exit_code = code;
            });
            self.release(&record.id, network).await;
            let _ = self.save(&container);
            let _ = overlay::unmount(&container.dir.join("bundle/rootfs"));
            container.watch.send_modify(|w| w.exits += 1);
            self.emit_container("die", &record, &[("exitCode", code.to_string())]);
            if record.host_config.auto_remove {
                // As dockerd does: a container that could not start is
                // removed, which is what `run --rm` waits for. The
                // removal needs the lifecycle lock this call holds.
                let engine = self.clone();
                let id = container.id.clone();
                tokio::spawn(async move {
                    if let Err(e) = engine.remove(&id, true, true).await {
                        warn!(container = %id, "auto-remove failed: {e}");
                    }
                });
            }
        }
        started
    }

    /// Mounts the rootfs, writes the bundle, starts the shim, connects,
    /// and starts the process.
    async fn launch(self: &Arc<Self>, container: &Arc<Container>) -> Result<(), EngineError> {
        let record = container.record();
        let dir = container.dir.clone();
        let rootfs = dir.join("bundle/rootfs");
        let _ = std::fs::remove_file(dir.join(shim::EXIT_FILE));
        if !is_mounted(&rootfs) {
            let lowers = self.store.lowers(&record.image)?;
            Overlay {
                lowers,
                upper: dir.join("upper"),
                work: dir.join("work"),
            }
            .mount(&rootfs)?;
        }
        let (_, image_config) = self.store.image(&record.image)?;
        let image_cfg = image_config.config.config().clone().unwrap_or_default();
        let netns = self.plug(container, &image_cfg).await?;
        let record = container.record();
        let (mut binds, tmpfs) = self.mounts(&record, &image_cfg)?;
        let extra_hosts = spec::extra_hosts(&record.host_config)?;
        let own_gateway = record.network.endpoints.iter().find_map(|e| e.gateway);
        let wants_gateway = extra_hosts
            .iter()
            .any(|(_, a)| *a == spec::HostAddress::Gateway);
        let gateway = match own_gateway {
            None if wants_gateway => self
                .networks
                .default_gateway()
                .await
                .map_err(network_error)?,
            own => own,
        };
        binds.extend(self.etc_files(&record, extra_hosts, gateway)?);
        let spec = spec::build(
            &record,
            &spec::Inputs {
                rootfs: &rootfs,
                image_env: image_cfg.env().as_deref().unwrap_or_default(),
                image_workdir: image_cfg.working_dir().as_deref().unwrap_or_default(),
                image_user: image_cfg.user().as_deref().unwrap_or_default(),
                binds: &binds,
                tmpfs: &tmpfs,
                hostname: &record.config.hostname,
            },
        )?;
        let mut spec = spec;
        if let Some(ns) = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.namespaces_mut().as_mut())
        {
            if record.host_config.network_mode == "host" {
                ns.retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network);
            } else if let Some(path) = &netns {
                for n in ns.iter_mut() {
                    if n.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
                        n.set_path(Some(path.clone()));
                    }
                }
            }
        }
        write_json(&dir.join("bundle/config.json"), &spec)?;
        // The runtime's state of an earlier run of this container.
        let _ = crate::runtime::container_delete::delete(&self.runtime_root(), &container.id, true);

        let mut command = tokio::process::Command::new("/proc/self/exe");
        command
            .arg("shim")
            .arg("--runtime-root")
            .arg(self.runtime_root())
            .arg("--id")
            .arg(&container.id)
            .arg("--bundle")
            .arg(dir.join("bundle"))
            .arg("--dir")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        if record.config.tty {
            command.arg("--tty");
        }
        if record.config.open_stdin {
            command.arg("--stdin");
        }
        let mut child = command
            .spawn()
            .map_err(EngineError::io("start the container's shim"))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(SHIM_READY, lines.next_line()).await;
        // The shim is a child: reap it whenever it ends.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let line = match line {
            Ok(Ok(Some(line))) => line,
            Ok(_) => return Err(EngineError::Internal("the container's shim died".into())),
            Err(_) => {
                return Err(EngineError::Internal(
                    "the container's shim did not answer in time".into(),
                ))
            }
        };
        let pid: i32 = match line.split_once(' ') {
            Some(("ok", pid)) => pid.trim().parse().unwrap_or(0),
            Some(("error", message)) => return Err(EngineError::Internal(message.to_owned())),
            _ => return Err(EngineError::Internal(format!("the shim said {line:?}"))),
        };
        let stream = connect_unix(&dir.join(shim::SOCKET)).await?;
        let (started_tx, started_rx) = oneshot::channel();
        self.attach_shim(container.clone(), stream, Some(started_tx));
        let before = container.update(|r| {
            r.state.pid = pid;
        });
        drop(before);
        if !container.to_shim(Kind::Start, b"") {
            return Err(EngineError::Internal("lost the shim before start".into()));
        }
        match started_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(EngineError::Internal(message)),
            Err(_) => {
                // The shim ended before saying so: the exit path has the story.
            }
        }
        // The shim connection's reader marked it running on `Started`,
        // before it could have seen the exit.
        let record = container.record();
        self.save(container)?;
        self.emit_container("start", &record, &[]);
        self.start_health(container);
        Ok(())
    }

    /// Starts container `container`'s health check for its run, if it has
    /// one (its own or its image's).
    fn start_health(self: &Arc<Self>, container: &Arc<Container>) {
        let record = container.record();
        let image = self
            .store
            .read_blob(&record.image.config)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| serde_json::from_value(c["config"]["Healthcheck"].clone()).ok());
        match health::effective(record.config.healthcheck.as_ref(), image.as_ref()) {
            Some(check) => self.watch_health(container.clone(), check),
            None => {
                container.update(|r| r.state.health = None);
            }
        }
    }

    /// What the container mounts besides the defaults (`-v`, `--mount`,
    /// `--tmpfs`, `VOLUME`), named but not made.
    pub fn mount_points(
        &self,
        record: &Record,
        image_cfg: &oci_spec::image::Config,
    ) -> Result<Vec<volumes::Planned>, EngineError> {
        let declared = image_cfg.volumes().iter().flatten().cloned().chain(
            record
                .config
                .volumes
                .iter()
                .flatten()
                .map(|(k, _)| k.clone()),
        );
        Ok(volumes::plan(
            &record.id,
            volumes::requested(&record.host_config)?,
            declared,
        ))
    }

    /// The container's mounts besides the defaults, made ready: volumes
    /// made, a missing `-v` source made, a missing `--mount` source refused.
    fn mounts(
        &self,
        record: &Record,
        image_cfg: &oci_spec::image::Config,
    ) -> Result<(Vec<spec::Bind>, Vec<spec::Tmpfs>), EngineError> {
        let planned = self.mount_points(record, image_cfg)?;
        let mut binds = Vec::new();
        let mut tmpfs = Vec::new();
        for mount in planned {
            match mount {
                volumes::Planned::Bind(bind) => {
                    let source = match &bind.source {
                        volumes::Source::Path(p) => {
                            if !p.exists() {
                                bind.check_source()?;
                                std::fs::create_dir_all(p)
                                    .map_err(EngineError::io(format!("create {}", p.display())))?;
                            }
                            p.clone()
                        }
                        volumes::Source::Volume(name) => {
                            let v = self.volumes.ensure(name, false, BTreeMap::new())?;
                            self.volumes.data(&v.name)
                        }
                    };
                    binds.push(spec::Bind {
                        source,
                        destination: bind.destination,
                        read_only: bind.read_only,
                    });
                }
                volumes::Planned::Anonymous {
                    name,
                    destination,
                    read_only,
                } => {
                    let v = self.volumes.ensure(&name, true, BTreeMap::new())?;
                    binds.push(spec::Bind {
                        source: self.volumes.data(&v.name),
                        destination,
                        read_only,
                    });
                }
                volumes::Planned::Tmpfs {
                    destination,
                    options,
                } => tmpfs.push(spec::Tmpfs {
                    destination,
                    options,
                }),
            }
        }
        Ok((binds, tmpfs))
    }

    /// The container's `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`.
    ///
    /// On the host's network they are made from the host's own (its hosts
    /// file and resolvers, loopback ones too: the container shares the
    /// host's loopback), with `--add-host` and `--dns…` applied.
    /// `extra_hosts` are the record's `--add-host`s, parsed; `gateway` is
    /// what `host-gateway` names.
    fn etc_files(
        &self,
        record: &Record,
        extra_hosts: Vec<(String, spec::HostAddress)>,
        gateway: Option<std::net::Ipv4Addr>,
    ) -> Result<Vec<spec::Bind>, EngineError> {
        let on_host = record.host_config.network_mode == "host";
        let dir = self.container_dir(&record.id);
        let hostname = &record.config.hostname;
        let mut hosts = if on_host {
            let mut own = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            if !own.is_empty() && !own.ends_with('\n') {
                own.push('\n');
            }
            own
        } else {
            // The container's own address names it; without one, 127.0.1.1.
            let own = record
                .network
                .endpoints
                .iter()
                .find_map(|e| e.address)
                .map_or_else(|| "127.0.1.1".to_owned(), |a| a.to_string());
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n{own}\t{hostname}\n"
            )
        };
        for (name, address) in extra_hosts {
            let address = match address {
                spec::HostAddress::Ip(ip) => ip.to_string(),
                spec::HostAddress::Gateway => match gateway {
                    Some(g) => g.to_string(),
                    None => {
                        return Err(EngineError::Invalid(format!(
                            "--add-host {name}:host-gateway: there is no gateway (the default network has no subnet)"
                        )))
                    }
                },
            };
            hosts.push_str(&format!("{address}\t{name}\n"));
        }
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolver = record
            .network
            .endpoints
            .iter()
            .find_map(|e| self.networks.resolver(e));
        let resolv: String = host_resolv
            .lines()
            .filter(|l| {
                // On a user-defined network the network's resolver answers
                // (and asks the host's for the rest). Otherwise the host's
                // servers, but not a loopback one: it is not reachable
                // from the container's own network.
                if resolver.is_some() {
                    !l.starts_with("nameserver")
                } else if on_host {
                    true
                } else {
                    !(l.starts_with("nameserver 127.") || l.starts_with("nameserver ::1"))
                }
            })
            .map(|l| format!("{l}\n"))
            .chain(resolver.map(|r| format!("nameserver {r}\n")))
            .collect();
        let resolv = spec::resolv_conf(&resolv, &record.host_config, resolver.is_some());
        let mut out = Vec::new();
        for (file, content) in [
            ("hostname", format!("{hostname}\n")),
            ("hosts", hosts),
            ("resolv.conf", resolv),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, content)
                .map_err(EngineError::io(format!("write {}", path.display())))?;
            out.push(spec::Bind {
                source: path,
                destination: format!("/etc/{file}"),
                read_only: false,
            });
        }
        Ok(out)
    }

    /// Gives a starting container its network namespace, its places on
    /// its networks and its published ports (kept in its record);
    /// returns the namespace to run in, or `None` for `host`/`none`.
    async fn plug(
        &self,
        container: &Arc<Container>,
        image_cfg: &oci_spec::image::Config,
    ) -> Result<Option<PathBuf>, EngineError> {
        let record = container.record();
        if record.host_config.network_mode == "host" {
            return Ok(None);
        }
        // Anything an earlier run left.
        let mut earlier = config::NetworkState::default();
        container.update(|r| earlier = r.network.take_run());
        self.release(&record.id, earlier).await;
        let networks = &self.networks;
        let netns = networks
            .create_netns(&record.id)
            .await
            .map_err(network_error)?;
        container.update(|r| r.network.netns = Some(netns.clone()));
        if record.network.attachments.is_empty() {
            // `none`: loopback only.
            return Ok(Some(netns));
        }
        let member = member(&record, &netns);
        let wanted: Vec<(String, Vec<String>)> = record
            .network
            .attachments
            .iter()
            .map(|a| (a.network.clone(), a.aliases.clone()))
            .collect();
        let endpoints = networks
            .attach(&member, &wanted, 0)
            .await
            .map_err(network_error)?;
        container.update(|r| r.network.endpoints = endpoints.clone());
        let mut exposed = record.config.exposed_ports.clone().unwrap_or_default();
        for port in image_cfg.exposed_ports().iter().flatten() {
            exposed
                .entry(port.clone())
                .or_insert(serde_json::Value::Null);
        }
        let requests = port_requests(&record.host_config, &Some(exposed))?;
        let target = endpoints.iter().find_map(|e| e.address);
        if let (Some(address), false) = (target, requests.is_empty()) {
            match networks.publish(&record.id, &requests, address).await {
                Ok(ports) => {
                    container.update(|r| r.network.ports = ports);
                }
                Err(e) => return Err(network_error(e)),
            }
        }
        Ok(Some(netns))
    }

    /// `docker network connect`: puts container `key` on `network` (now,
    /// if it runs; at its next start otherwise).
    pub async fn connect(
        &self,
        key: &str,
        network: &str,
        aliases: Vec<String>,
    ) -> Result<(), EngineError> {
        let container = self.container(key)?;
        let _guard = container.lifecycle.lock().await;
        let net = self.networks.find(network).map_err(network_error)?;
        let record = container.record();
        if !net.is_bridge() || record.host_config.network_mode == "host" {
            return Err(EngineError::Invalid(format!(
                "container cannot be disconnected from host network or connected to {} network",
                net.name
            )));
        }
        if record
            .network
            .attachments
            .iter()
            .any(|a| a.network == net.name)
        {
            return Err(EngineError::Conflict(format!(
                "endpoint with name {} already exists in network {}",
                record.name, net.name
            )));
        }
        if record.network.attachments.is_empty() {
            return Err(EngineError::Invalid(
                "container sharing network namespace with none cannot be connected".into(),
            ));
        }
        if let (true, Some(netns)) = (record.state.status.is_running(), &record.network.netns) {
            let member = member(&record, netns);
            let endpoints = self
                .networks
                .attach(
                    &member,
                    &[(net.name.clone(), aliases.clone())],
                    record.network.endpoints.len(),
                )
                .await
                .map_err(network_error)?;
            container.update(|r| r.network.endpoints.extend(endpoints));
        }
        container.update(|r| {
            r.network.attachments.push(config::Attachment {
                network: net.name.clone(),
                aliases,
            })
        });
        self.save(&container)?;
        self.emit(
            "network",
            "connect",
            &net.id,
            BTreeMap::from([
                ("container".to_owned(), record.id.clone()),
                ("name".to_owned(), net.name.clone()),
            ]),
        );
        Ok(())
    }

    /// `docker network disconnect`: takes container `key` off `network`.
    pub async fn disconnect(&self, key: &str, network: &str) -> Result<(), EngineError> {
        let container = self.container(key)?;
        let _guard = container.lifecycle.lock().await;
        let net = self.networks.find(network).map_err(network_error)?;
        let record = container.record();
        if !record
            .network
            .attachments
            .iter()
            .any(|a| a.network == net.name)
        {
            return Err(EngineError::Invalid(format!(
                "container {} is not connected to network {}",
                record.id, net.name
            )));
        }
        let gone: Vec<crate::network::Endpoint> = record
            .network
            .endpoints
            .iter()
            .filter(|e| e.network_id == net.id)
            .cloned()
            .collect();
        self.networks.detach(&record.id, &gone).await;
        container.update(|r| {
            r.network.attachments.retain(|a| a.network != net.name);
            r.network.endpoints.retain(|e| e.network_id != net.id);
        });
        self.save(&container)?;
        self.emit(
            "network",
            "disconnect",
            &net.id,
            BTreeMap::from([
                ("container".to_owned(), record.id.clone()),
                ("name".to_owned(), net.name.clone()),
            ]),
        );
        Ok(())
    }

    /// Takes back the networking of a container that ran on while the
    /// agent restarted: addresses, names, published ports.
    async fn renew_network(&self, container: &Container) {
        let record = container.record();
        let Some(netns) = &record.network.netns else {
            return;
        };
        let member = member(&record, netns);
        let requests: Vec<crate::network::PortRequest> = record
            .network
            .ports
            .iter()
            .filter_map(|p| {
                Some(crate::network::PortRequest {
                    container_port: p.container_port,
                    protocol: crate::network::proxy::Protocol::parse(&p.protocol).ok()?,
                    host_ip: p.host_ip.parse().ok(),
                    host_port: p.host_port,
                })
            })
            .collect();
        if let Err(e) = self
            .networks
            .restore(&member, &record.network.endpoints, &requests)
            .await
        {
            warn!(container = %record.id, "restoring its networking: {e}");
        }
    }

    /// Undoes [`Engine::plug`] for one run of container `id`, as taken out
    /// of its record ([`config::NetworkState::take_run`]): ports closed,
    /// links and addresses given back, the namespace let go.
    async fn release(&self, id: &str, run: config::NetworkState) {
        if !run.ports.is_empty() {
            self.networks.unpublish(id);
        }
        self.networks.detach(id, &run.endpoints).await;
        if let Some(netns) = &run.netns {
            self.networks.remove_netns(netns);
        }
    }

    /// Takes over the connection to a container's shim: output to
    /// subscribers, frames from the engine to the shim, the exit.
    fn attach_shim(
        self: &Arc<Self>,
        container: Arc<Container>,
        stream: tokio::net::UnixStream,
        started: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        let (mut reader, mut writer) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        *container.shim.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let engine = self.clone();
        tokio::spawn(async move {
            let mut started = started;
            let mut decoder = frame::Decoder::default();
            let mut buffer = vec![0u8; 64 << 10];
            let mut exit = None;
            'read: loop {
                let n = match reader.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                decoder.extend(&buffer[..n]);
                while let Ok(Some((kind, payload))) = decoder.next_frame() {
                    match kind {
                        Kind::Stdout | Kind::Stderr => {
                            container.publish(Output {
                                stream: if kind == Kind::Stdout { 1 } else { 2 },
                                bytes: Bytes::from(payload),
                            });
                        }
                        Kind::Started => {
                            container.update(|r| {
                                r.state.status = Status::Running;
                                r.state.exit_code = 0;
                                r.state.started_at = Some(now());
                                r.state.finished_at = None;
                                r.state.error.clear();
                                r.state.stopped_by_user = false;
                            });
                            if let Some(s) = started.take() {
                                let _ = s.send(Ok(()));
                            }
                        }
                        Kind::Error => {
                            if let Some(s) = started.take() {
                                let _ = s.send(Err(String::from_utf8_lossy(&payload).into_owned()));
                            }
                        }
                        Kind::Exited => {
                            exit = serde_json::from_slice::<Exit>(&payload).ok();
                            break 'read;
                        }
                        _ => {}
                    }
                }
            }
            *container.shim.lock().unwrap_or_else(|p| p.into_inner()) = None;
            drop(started);
            let exit = match exit {
                Some(e) => Some(e),
                None => read_exit(&container.dir).await,
            };
            engine.exited(container, exit).await;
        });
    }

    /// After the process ended: record it, clean up, then restart or
    /// remove as the container's settings say.
    async fn exited(self: &Arc<Self>, container: Arc<Container>, exit: Option<Exit>) {
        let (code, error) = match &exit {
            Some(e) => (e.code, String::new()),
            None => (
                255,
                "the container's shim ended without an exit status".to_owned(),
            ),
        };
        let rootfs = container.dir.join("bundle/rootfs");
        if let Err(e) = overlay::unmount(&rootfs) {
            warn!(container = %container.id, "unmount the rootfs: {e}");
        }
        // The run's networking leaves the record with the status change, so
        // a start from now on begins afresh; it is torn down before anyone
        // waiting on the exit hears of it.
        let mut network = config::NetworkState::default();
        let record = container.update(|r| {
            network = r.network.take_run();
            r.state.status = Status::Exited;
            r.state.exit_code = code;
            r.state.pid = 0;
            r.state.finished_at = Some(exit.as_ref().map_or_else(now, |e| e.at.clone()));
            if !error.is_empty() {
                r.state.error = error.clone();
            }
        });
        let _ = self.save(&container);
        self.release(&record.id, network).await;
        container.watch.send_modify(|w| w.exits += 1);
        self.emit_container("die", &record, &[("exitCode", code.to_string())]);

        if self.should_restart(&record) {
            let count = record.restart_count;
            let delay = Duration::from_millis(100u64 << count.clamp(0, 10));
            container.update(|r| {
                r.state.status = Status::Restarting;
                r.restart_count += 1;
            });
            let engine = self.clone();
            let id = container.id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Ok(c) = engine.container(&id) else { return };
                if c.record().state.status != Status::Restarting {
                    return;
                }
                c.update(|r| r.state.status = Status::Exited);
                if let Err(e) = engine.start(&id).await {
                    warn!(container = %id, "restart failed: {e}");
                }
            });
            return;
        }
        if record.host_config.auto_remove {
            if let Err(e) = self.remove(&container.id, true, true).await {
                warn!(container = %container.id, "auto-remove failed: {e}");
            }
        }
    }

    fn should_restart(&self, record: &Record) -> bool {
        if record.state.stopped_by_user
            || self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
        {
            return false;
        }
        let policy = &record.host_config.restart_policy;
        match policy.name.as_str() {
            "always" | "unless-stopped" => true,
            "on-failure" => {
                record.state.exit_code != 0
                    && (policy.maximum_retry_count <= 0
                        || record.restart_count < policy.maximum_retry_count)
            }
            _ => false,
        }
    }

    /// Sends `signal` to the container's process.
    pub fn kill(&self, key: &str, signal: nix::sys::signal::Signal) -> Result<(), EngineError> {
        let container = self.container(key)?;
        let record = container.record();
        if !record.state.status.is_running() {
            return Err(EngineError::Conflict(format!(
                "Cannot kill container: {}: container {} is not running",
                key, container.id
            )));
        }
        if signal == nix::sys::signal::Signal::SIGKILL
            || signal == nix::sys::signal::Signal::SIGTERM
        {
            container.update(|r| r.state.stopped_by_user = true);
        }
        if !container.to_shim(Kind::Signal, &(signal as i32).to_be_bytes()) {
            return Err(EngineError::Internal(format!(
                "container {} has no shim to signal",
                container.id
            )));
        }
        if record.state.status == Status::Paused {
            // A frozen process takes its signal once thawed.
            if let Ok(cgroup) = self.cgroup(&container) {
                cgroup.freeze(false)?;
                container.update(|r| r.state.status = Status::Running);
            }
        }
        self.emit_container("kill", &record, &[("signal", (signal as i32).to_string())]);
        Ok(())
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout`.
    pub async fn stop(&self, key: &str, timeout: Option<i64>) -> Result<(), EngineError> {
        let container = self.container(key)?;
        self.stop_container(&container, timeout, true).await
    }

    /// Stops every running container as the engine goes down with its
    /// machine: each with its own stop signal and timeout, all at once.
    /// None counts as stopped by its user, so `always` and
    /// `unless-stopped` ones start again with the engine; meanwhile no
    /// restart policy acts.
    pub async fn stop_all(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let containers = self.containers();
        let stops = containers.iter().map(|c| async move {
            if let Err(e) = self.stop_container(c, None, false).await {
                warn!(container = %c.id, "cannot stop it: {e}");
            }
        });
        futures_util::future::join_all(stops).await;
    }

    /// Stops `container`: its stop signal, then SIGKILL after `timeout`
    /// (its own, or 10 s). `by_user` marks it as stopped by its user, whom
    /// restart policies obey.
    async fn stop_container(
        &self,
        container: &Arc<Container>,
        timeout: Option<i64>,
        by_user: bool,
    ) -> Result<(), EngineError> {
        let record = container.record();
        if record.state.status == Status::Restarting {
            container.update(|r| {
                r.state.status = Status::Exited;
                r.state.stopped_by_user = by_user;
            });
            let _ = self.save(container);
            return Ok(());
        }
        if !record.state.status.is_running() {
            return Ok(());
        }
        if by_user {
            container.update(|r| r.state.stopped_by_user = true);
        }
        let signal = record
            .config
            .stop_signal
            .as_deref()
            .map(crate::runtime::container_kill::parse_signal)
            .transpose()?
            .unwrap_or(nix::sys::signal::Signal::SIGTERM);
        let timeout = timeout.or(record.config.stop_timeout).unwrap_or(10);
        let mut watch = container.watch();
        let exits = watch.borrow().exits;
        container.to_shim(Kind::Signal, &(signal as i32).to_be_bytes());
        if record.state.status == Status::Paused {
            // A frozen process takes its signal once thawed.
            self.thaw(container).await?;
        }
        let exited = |w: &Watched| w.exits > exits || !w.status.is_running();
        let done = if timeout >= 0 {
            tokio::time::timeout(Duration::from_secs(timeout as u64), watch.wait_for(exited))
                .await
                .is_ok()
        } else {
            watch.wait_for(exited).await.is_ok()
        };
        if !done {
            container.to_shim(
                Kind::Signal,
                &(nix::sys::signal::Signal::SIGKILL as i32).to_be_bytes(),
            );
            let _ = watch.wait_for(exited).await;
        }
        self.emit_container("stop", &record, &[]);
        Ok(())
    }

    /// Waits for `condition`; the exit code.
    pub async fn wait(&self, key: &str, condition: WaitCondition) -> Result<i32, EngineError> {
        let container = self.container(key)?;
        let mut watch = container.watch();
        let now = *watch.borrow();
        let result = match condition {
            WaitCondition::NotRunning => {
                watch
                    .wait_for(|w| {
                        w.removed
                            || !matches!(
                                w.status,
                                Status::Running | Status::Paused | Status::Restarting
                            )
                    })
                    .await
            }
            WaitCondition::NextExit => watch.wait_for(|w| w.removed || w.exits > now.exits).await,
            WaitCondition::Removed => watch.wait_for(|w| w.removed).await,
        };
        Ok(result.map(|w| w.exit_code).unwrap_or(now.exit_code))
    }

    /// Removes a container (`force` stops a running one first).
    pub async fn remove(&self, key: &str, force: bool, volumes: bool) -> Result<(), EngineError> {
        let container = self.container(key)?;
        let record = container.record();
        if record.state.status.is_running() {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    record.name
                )));
            }
            container.update(|r| r.state.stopped_by_user = true);
            let mut watch = container.watch();
            container.to_shim(
                Kind::Signal,
                &(nix::sys::signal::Signal::SIGKILL as i32).to_be_bytes(),
            );
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                watch.wait_for(|w| !w.status.is_running()),
            )
            .await;
        }
        let _guard = container.lifecycle.lock().await;
        {
            let mut all = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            if all.remove(&container.id).is_none() {
                // Someone else removed it meanwhile.
                return Ok(());
            }
        }
        container.update(|r| r.state.status = Status::Removing);
        let rootfs = container.dir.join("bundle/rootfs");
        let _ = overlay::unmount(&rootfs);
        let _ = crate::runtime::container_delete::delete(&self.runtime_root(), &container.id, true);
        let dir = container.dir.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
        if let Ok(Err(e)) = removed {
            warn!(container = %container.id, "remove its directory: {e}");
        }
        if volumes {
            for i in 0..1000 {
                let name = format!("{}{:04}", &container.id[..48], i);
                if self.volumes.remove(&name, false).is_err() {
                    break;
                }
            }
        }
        container.watch.send_modify(|w| w.removed = true);
        self.emit_container("destroy", &record, &[]);
        Ok(())
    }

    /// Renames a container.
    pub fn rename(&self, key: &str, new_name: &str) -> Result<(), EngineError> {
        let new_name = new_name.strip_prefix('/').unwrap_or(new_name);
        names::validate(new_name)?;
        let container = self.container(key)?;
        {
            let all = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = all.values().find(|c| c.record().name == new_name) {
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"/{new_name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    other.id
                )));
            }
            container.update(|r| r.name = new_name.to_owned());
        }
        self.save(&container)?;
        let record = container.record();
        self.emit_container("rename", &record, &[]);
        Ok(())
    }

    /// Loads the containers on disk, reconnects to running ones, marks
    /// the others exited, and (with `restart`) restarts those whose policy
    /// says so.
    async fn restore(self: &Arc<Self>, restart: bool) {
        let dir = self.root.join("containers");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut to_start = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let record: Record = match std::fs::read(path.join("record.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(r) => r,
                None => {
                    // A create that never finished writing its record.
                    warn!(dir = %path.display(), "removing a container without a record");
                    let _ = overlay::unmount(&path.join("bundle/rootfs"));
                    let _ = std::fs::remove_dir_all(&path);
                    continue;
                }
            };
            let was_running = matches!(
                record.state.status,
                Status::Running | Status::Paused | Status::Restarting
            );
            let container = self.adopt(record.clone(), path.clone());
            self.containers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(record.id.clone(), container.clone());
            if !was_running {
                // Stopped with the machine (not by its user): its restart
                // policy brings it back, as dockerd does at its start.
                if restart && record.state.started_at.is_some() && self.should_restart(&record) {
                    to_start.push(record.id.clone());
                }
                continue;
            }
            match connect_unix(&path.join(shim::SOCKET)).await {
                Ok(stream) => {
                    info!(container = %record.id, "reconnected to its shim");
                    self.renew_network(&container).await;
                    self.attach_shim(container.clone(), stream, None);
                    self.start_health(&container);
                }
                Err(_) => {
                    let exit = read_exit(&path).await;
                    let _ = overlay::unmount(&path.join("bundle/rootfs"));
                    let mut run = config::NetworkState::default();
                    container.update(|r| run = r.network.take_run());
                    self.release(&record.id, run).await;
                    container.update(|r| {
                        r.state.status = Status::Exited;
                        r.state.pid = 0;
                        match &exit {
                            Some(e) => {
                                r.state.exit_code = e.code;
                                r.state.finished_at = Some(e.at.clone());
                            }
                            None => {
                                r.state.exit_code = 255;
                                r.state.finished_at = Some(now());
                                r.state.error =
                                    "the agent restarted and the container was gone".into();
                            }
                        }
                    });
                    let _ = self.save(&container);
                    let record = container.record();
                    if restart
                        && matches!(
                            record.host_config.restart_policy.name.as_str(),
                            "always" | "unless-stopped"
                        )
                        && !record.state.stopped_by_user
                    {
                        to_start.push(record.id.clone());
                    } else if record.host_config.auto_remove {
                        let _ = self.remove(&record.id, true, true).await;
                    }
                }
            }
        }
        let (mut netns, mut links) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        for c in self.containers() {
            let r = c.record();
            if r.state.status.is_running() {
                netns.extend(r.network.netns.clone());
                links.extend(r.network.endpoints.iter().map(|e| e.host_link.clone()));
            }
        }
        self.networks.sweep(&netns, &links).await;
        for id in to_start {
            if let Err(e) = self.start(&id).await {
                warn!(container = %id, "restart after the agent restarted: {e}");
            }
        }
    }

    /// Containers that use the image with config digest `config`.
    pub fn users_of_image(&self, config: &crate::image::digest::Digest) -> Vec<Arc<Container>> {
        self.containers()
            .into_iter()
            .filter(|c| &c.record().image.config == config)
            .collect()
    }

    /// Rough uptime for `ps`: "Up 3 seconds".
    pub fn since(at: &str) -> Option<Duration> {
        let t = humantime::parse_rfc3339_weak(at.trim_end_matches('Z').split('.').next()?).ok()?;
        SystemTime::now().duration_since(t).ok()
    }
}

/// A network failure in the classes the Docker API answers with.
pub fn network_error(e: crate::network::NetworkError) -> EngineError {
    use crate::network::NetworkError as N;
    match e {
        N::NotFound(_) => EngineError::NotFound(e.to_string()),
        N::Conflict(_) | N::Forbidden(_) => EngineError::Conflict(e.to_string()),
        N::Invalid(_) => EngineError::Invalid(e.to_string()),
        N::System(_) => EngineError::Internal(e.to_string()),
    }
}

/// The ports a container publishes: its `-p` bindings, and with `-P`
/// every port it exposes that has none, on a free host port.
pub fn port_requests(
    host: &HostConfig,
    exposed: &Option<BTreeMap<String, serde_json::Value>>,
) -> Result<Vec<crate::network::PortRequest>, EngineError> {
    use crate::network::{proxy::Protocol, PortRequest};
    let parse_key = |key: &str| -> Result<(u16, Protocol), EngineError> {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| EngineError::Invalid(format!("invalid port specification: {key:?}")))?;
        Ok((port, Protocol::parse(proto).map_err(EngineError::Invalid)?))
    };
    let mut out = Vec::new();
    let mut bound = std::collections::BTreeSet::new();
    for (key, bindings) in host.port_bindings.iter().flatten() {
        let (container_port, protocol) = parse_key(key)?;
        bound.insert((container_port, protocol));
        let default = [config::PortBinding::default()];
        let bindings = match bindings.as_deref() {
            Some(b) if !b.is_empty() => b,
            _ => &default,
        };
        for b in bindings {
            let host_ip = match b.host_ip.as_str() {
                "" => None,
                ip => Some(ip.parse().map_err(|_| {
                    EngineError::Invalid(format!("invalid host IP {ip:?} for port {key}"))
                })?),
            };
            let host_port = match b.host_port.as_str() {
                "" => 0,
                p => p.parse::<u16>().map_err(|_| {
                    EngineError::Invalid(format!("invalid host port {p:?} for port {key}"))
                })?,
            };
            out.push(PortRequest {
                container_port,
                protocol,
                host_ip,
                host_port,
            });
        }
    }
    if host.publish_all_ports {
        for key in exposed.iter().flatten().map(|(k, _)| k) {
            let (container_port, protocol) = parse_key(key)?;
            if bound.insert((container_port, protocol)) {
                out.push(PortRequest {
                    container_port,
                    protocol,
                    host_ip: None,
                    host_port: 0,
                });
            }
        }
    }
    Ok(out)
}

fn validate_restart(host: &HostConfig) -> Result<(), EngineError> {
    let policy = &host.restart_policy;
    match policy.name.as_str() {
        "" | "no" | "always" | "unless-stopped" | "on-failure" => {}
        other => {
            return Err(EngineError::Invalid(format!(
                "invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
            )))
        }
    }
    if policy.maximum_retry_count < 0 {
        return Err(EngineError::Invalid(
            "invalid restart policy: maximum retry count must be a positive integer".into(),
        ));
    }
    if policy.maximum_retry_count > 0 && policy.name != "on-failure" {
        return Err(EngineError::Invalid(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'".into(),
        ));
    }
    Ok(())
}

/// The exit the shim recorded, if it did.
async fn read_exit(dir: &Path) -> Option<Exit> {
    let bytes = tokio::fs::read(dir.join(shim::EXIT_FILE)).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether something is mounted at `path`.
fn is_mounted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(here), Some(Ok(parent))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    here.dev() != parent.dev()
}

/// Connects to a unix socket, also where its path is longer than a
/// `sockaddr_un` holds (through the directory's `/proc/self/fd` entry).
async fn connect_unix(path: &Path) -> Result<tokio::net::UnixStream, EngineError> {
    let fail =
        |e: std::io::Error| EngineError::Internal(format!("connect to {}: {e}", path.display()));
    if path.as_os_str().len() < 100 {
        return tokio::net::UnixStream::connect(path).await.map_err(fail);
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default();
    let dir = std::fs::File::open(parent).map_err(fail)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    let stream = tokio::net::UnixStream::connect(&short).await.map_err(fail);
    drop(dir);
    stream
}

/// The exit code of a container whose process could not be started, as
/// dockerd reports it: 127 for a program not found, 126 for one that
/// cannot be run, 128 for anything else.
fn start_failure_code(message: &str) -> i32 {
    let message = message.to_ascii_lowercase();
    if message.contains("executable file not found")
        || message.contains("no such file or directory")
    {
        127
    } else if message.contains("permission denied") || message.contains("is a directory") {
        126
    } else {
        128
    }
}

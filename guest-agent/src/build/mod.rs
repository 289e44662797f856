//! `docker build`: a Dockerfile builder with a layer cache, the classic
//! builder's behaviour (the `/build` endpoint: a tar of the context in, a
//! JSON stream out) on this agent's engine.
//!
//! Every step makes an image on its parent, as dockerd's classic builder
//! does: `RUN` in a container of the engine's own (network, user, working
//! directory and volumes as a container gets them), its writable layer
//! turned into the step's layer; `COPY`, `ADD` and `WORKDIR` in a
//! workspace of the parent's layers; the other instructions change only
//! the image's config. A step whose parent, expanded instruction and
//! inputs match one done before is taken from the cache
//! (` ---> Using cache`). The images of steps are kept by id as
//! intermediate images; the result gets its names.
//!
//! - [`dockerfile`] — the parser.
//! - [`shell`] — variable expansion and word splitting.
//! - [`pattern`] — source globs and `.dockerignore`.
//! - [`copy`] — `COPY`/`ADD`/`WORKDIR` planned, digested and applied.
//! - [`workspace`] — an image mounted with a step's own upper directory.
//! - [`cache`] — step keys → images.

pub mod cache;
pub mod copy;
pub mod dockerfile;
pub mod pattern;
pub mod shell;
pub mod workspace;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::engine::config::{Attachment, ContainerConfig, HostConfig};
use crate::engine::{Engine, EngineError};
use crate::image::commit::{self, HistoryEntry, NewImage, NewLayer};
use crate::image::digest::Digest;
use crate::image::reference::Reference;
use crate::image::store::{ImageRecord, LocalImage};
use crate::image::ImageError;
use dockerfile::{Args, Instruction};
use shell::Lexer;

/// The shell of shell-form instructions unless `SHELL` says otherwise.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// The most a Dockerfile may be: far beyond any real one.
const MAX_DOCKERFILE: u64 = 4 << 20;
/// Where a build's work happens, under the agent's root.
const BUILD_DIR: &str = "build";

/// What went wrong in a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse.
    #[error(transparent)]
    Parse(#[from] dockerfile::ParseError),
    /// A step cannot be done as written.
    #[error("{0}")]
    Step(String),
    /// A step, with the Dockerfile line it is on.
    #[error("{keyword} failed (Dockerfile line {line}): {message}")]
    AtLine {
        /// The instruction.
        keyword: String,
        /// Its line.
        line: usize,
        /// What went wrong.
        message: String,
    },
    /// The client went away: the build was stopped.
    #[error("the build was cancelled")]
    Cancelled,
    /// A `RUN` command exited non-zero.
    #[error("The command '{command}' returned a non-zero code: {code}")]
    Run {
        /// The command, as dockerd prints it.
        command: String,
        /// Its exit code.
        code: i32,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// An image operation failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A file operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl BuildError {
    fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        BuildError::Io {
            action: action.into(),
            source,
        }
    }

    /// The exit code the CLI should end with: a failed `RUN`'s own.
    pub fn code(&self) -> i32 {
        match self {
            BuildError::Run { code, .. } => *code,
            _ => 1,
        }
    }
}

impl From<crate::runtime::RuntimeError> for BuildError {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        BuildError::Engine(e.into())
    }
}

/// What the client asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The Dockerfile's path in the context.
    pub dockerfile: String,
    /// `-t`.
    pub tags: Vec<Reference>,
    /// `--build-arg` (a name alone takes the value from the client's
    /// environment, which the CLI has filled in, or leaves it unset).
    pub build_args: BTreeMap<String, Option<String>>,
    /// `--label`, on the result.
    pub labels: BTreeMap<String, String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--pull`: base images are pulled even when present.
    pub pull: bool,
    /// `--target`.
    pub target: Option<String>,
    /// `--rm` (the default): intermediate containers go after a success.
    pub remove: bool,
    /// `--force-rm`: and after a failure.
    pub force_remove: bool,
    /// `--network` for `RUN`.
    pub network_mode: String,
    /// `-q`: only the image id.
    pub quiet: bool,
}

/// What a build says as it goes.
#[derive(Debug, Clone)]
pub enum Message {
    /// Text for the user.
    Stream(String),
    /// The image made.
    Aux(Digest),
}

/// The build's output: to the client, or held back with `-q`.
struct Output {
    tx: mpsc::UnboundedSender<Message>,
    quiet: bool,
    held: String,
}

impl Output {
    fn say(&mut self, text: impl Into<String>) {
        let text = text.into();
        if self.quiet {
            self.held.push_str(&text);
        } else {
            let _ = self.tx.send(Message::Stream(text));
        }
    }
}

fn short(d: &Digest) -> &str {
    &d.hex()[..12]
}

/// A build's own directory, removed (after unmounting what a crash may
/// have left mounted) when the build ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        clear_dir(&self.0);
    }
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = crate::runtime::overlay::unmount(&e.path().join("rootfs"));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Clears what builds of an earlier agent left (the cache stays).
fn clear_leftovers(build_root: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(entries) = std::fs::read_dir(build_root) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    clear_dir(&e.path());
                }
            }
        }
    });
}

/// A new work directory for one build; the context tar goes to `context.tar`
/// in it and is unpacked by [`Build::unpack_context`].
pub fn work_dir(engine: &Engine) -> Result<PathBuf, BuildError> {
    let root = engine.root().join(BUILD_DIR);
    std::fs::create_dir_all(&root).map_err(|e| BuildError::io("make the build directory", e))?;
    clear_leftovers(&root);
    let dir = tempfile::Builder::new()
        .prefix("b-")
        .tempdir_in(&root)
        .map_err(|e| BuildError::io("make the build directory", e))?
        .keep();
    Ok(dir)
}

/// Clears the build cache and the intermediate images no container
/// uses: what `docker builder prune` asks. Returns the ids removed.
pub fn prune(engine: &Engine) -> Result<Vec<Digest>, BuildError> {
    let cache = cache::Cache::new(&engine.root().join(BUILD_DIR));
    cache
        .clear()
        .map_err(|e| BuildError::io("clear the build cache", e))?;
    let named: BTreeSet<Digest> = engine
        .store
        .names()?
        .into_values()
        .map(|r| r.config)
        .collect();
    let mut removed = Vec::new();
    for (id, local) in engine.store.local_images()? {
        if local.intermediate && !named.contains(&id) && engine.users_of_image(&id).is_empty() {
            engine.store.forget(&id)?;
            removed.push(id);
        }
    }
    Ok(removed)
}

/// A stage being built.
struct Stage {
    name: Option<String>,
    image: Option<ImageRecord>,
    config: Map<String, Value>,
    args: BTreeMap<String, Option<String>>,
    shell: Vec<String>,
    author: Option<String>,
    cmd_set: bool,
}

impl Stage {
    /// A stage on an image whose config is `config`.
    fn on(config: Map<String, Value>) -> Self {
        Stage {
            name: None,
            image: None,
            config,
            args: BTreeMap::new(),
            shell: DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
            author: None,
            cmd_set: false,
        }
    }

    /// What [`Stage::lookup`] sees, as a map that does not borrow the stage.
    fn clone_lookup(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        out.extend(self.env());
        out
    }

    fn env(&self) -> Vec<(String, String)> {
        self.config
            .get("Env")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => (kv.to_owned(), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let mut env = self.env();
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_owned(),
            None => env.push((key.to_owned(), value.to_owned())),
        }
        let list: Vec<Value> = env
            .into_iter()
            .map(|(k, v)| json!(format!("{k}={v}")))
            .collect();
        self.config.insert("Env".into(), Value::Array(list));
    }

    /// What a word in this stage sees: its ENV first, then its ARGs.
    fn lookup(&self, name: &str) -> Option<String> {
        self.env()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .or_else(|| self.args.get(name).cloned().flatten())
    }

    /// The ARGs with values that no ENV hides: what `RUN` gets.
    fn run_args(&self) -> Vec<(String, String)> {
        let env = self.env();
        self.args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .filter(|(k, _)| !env.iter().any(|(e, _)| e == k))
            .collect()
    }

    fn working_dir(&self) -> PathBuf {
        match self.config.get("WorkingDir").and_then(Value::as_str) {
            Some(w) if !w.is_empty() => PathBuf::from(w),
            _ => PathBuf::from("/"),
        }
    }
}

/// One build.
pub struct Build {
    engine: Arc<Engine>,
    opts: Options,
    out: Output,
    work: PathBuf,
    _cleanup: WorkDir,
    context: PathBuf,
    lexer: Lexer,
    meta_args: BTreeMap<String, Option<String>>,
    used_args: BTreeSet<String>,
    done: Vec<(Option<String>, Option<ImageRecord>)>,
    cache: cache::Cache,
    step: usize,
    total: usize,
    /// Turns true when the build is to stop (its client went away).
    cancel: tokio::sync::watch::Receiver<bool>,
}

impl Build {
    /// A build working in `work` (made by [`work_dir`]), saying what it
    /// does on `tx`; it stops, between steps or by killing a running
    /// `RUN`, once `cancel` turns true.
    pub fn new(
        engine: Arc<Engine>,
        opts: Options,
        work: PathBuf,
        tx: mpsc::UnboundedSender<Message>,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let cache = cache::Cache::new(&engine.root().join(BUILD_DIR));
        Build {
            out: Output {
                tx,
                quiet: opts.quiet,
                held: String::new(),
            },
            engine,
            opts,
            context: work.join("context"),
            _cleanup: WorkDir(work.clone()),
            work,
            lexer: Lexer::new('\\'),
            meta_args: BTreeMap::new(),
            used_args: BTreeSet::new(),
            done: Vec::new(),
            cache,
            step: 0,
            total: 0,
            cancel,
        }
    }

    /// Unpacks the context tar at `tar` (plain or compressed) into the
    /// build's context directory.
    async fn unpack_context(&self, tar: PathBuf) -> Result<(), BuildError> {
        let context = self.context.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
            std::fs::create_dir_all(&context)
                .map_err(|e| BuildError::io("make the context directory", e))?;
            let file = std::fs::File::open(&tar)
                .map_err(|e| BuildError::io("read the build context", e))?;
            let mut reader = std::io::BufReader::new(file);
            let head = std::io::BufRead::fill_buf(&mut reader)
                .map_err(|e| BuildError::io("read the build context", e))?;
            let compression = crate::image::manifest::Compression::sniff(head);
            if head.is_empty() {
                return Ok(());
            }
            crate::image::unpack::unpack(reader, compression, &context)
                .map_err(|e| BuildError::Step(format!("the build context: {e}")))?;
            let _ = std::fs::remove_file(&tar);
            Ok(())
        })
        .await
        .map_err(|e| BuildError::Step(format!("the build context: {e}")))?
    }

    /// Reads the Dockerfile and applies `.dockerignore` to the context.
    fn read_dockerfile(&self) -> Result<String, BuildError> {
        let root = self.context_root()?;
        let name = if self.opts.dockerfile.is_empty() {
            "Dockerfile"
        } else {
            self.opts.dockerfile.as_str()
        };
        let fd = workspace::open_in(&root, Path::new(name), true)?.ok_or_else(|| {
            BuildError::Step(format!("Cannot locate specified Dockerfile: {name}"))
        })?;
        let file = std::fs::File::open(workspace::fd_path(&fd))
            .map_err(|e| BuildError::io(format!("read {name}"), e))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_DOCKERFILE), &mut text)
            .map_err(|e| BuildError::io(format!("read {name}"), e))?;
        if let Some(ignore) = workspace::read_in(&root, Path::new(".dockerignore")) {
            let rules = pattern::Ignore::parse(&ignore);
            if !rules.is_empty() {
                remove_ignored(&self.context, Path::new(""), &rules);
            }
        }
        Ok(text)
    }

    fn context_root(&self) -> Result<OwnedFd, BuildError> {
        nix::fcntl::open(
            &self.context,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| BuildError::io("open the build context", e.into()))
    }

    /// Runs the build on the context at `tar`; the image made.
    pub async fn run(mut self, tar: PathBuf) -> Result<Digest, BuildError> {
        // A step's layers are nobody's until its image is kept.
        let _adding = self.engine.store.adding().await;
        let result = self.run_inner(tar).await;
        if result.is_err() && self.out.quiet && !self.out.held.is_empty() {
            // -q holds the output back; a failure shows it.
            let held = std::mem::take(&mut self.out.held);
            let _ = self.out.tx.send(Message::Stream(held));
        }
        result
    }

    async fn run_inner(&mut self, tar: PathBuf) -> Result<Digest, BuildError> {
        self.unpack_context(tar).await?;
        let text = self.read_dockerfile()?;
        let df = dockerfile::parse(&text)?;
        self.lexer = Lexer::new(df.escape);
        // The stages to build: up to the target.
        let mut stages: Vec<Vec<&Instruction>> = Vec::new();
        let mut meta = Vec::new();
        for ins in &df.instructions {
            if ins.keyword == "FROM" {
                stages.push(vec![ins]);
            } else if let Some(stage) = stages.last_mut() {
                stage.push(ins);
            } else {
                meta.push(ins);
            }
        }
        if let Some(target) = &self.opts.target {
            let at = stages.iter().position(|s| {
                stage_name(&self.lexer, s[0]).is_some_and(|n| n.eq_ignore_ascii_case(target))
            });
            match at {
                Some(i) => stages.truncate(i + 1),
                None => {
                    return Err(BuildError::Step(format!(
                        "failed to reach build target {target} in Dockerfile"
                    )))
                }
            }
        }
        self.total = meta.len()
            + stages.iter().map(Vec::len).sum::<usize>()
            + usize::from(!self.opts.labels.is_empty());
        for ins in meta {
            self.announce(ins);
            self.meta_arg(ins)?;
        }
        let last = stages.len().saturating_sub(1);
        for (i, instructions) in stages.into_iter().enumerate() {
            let mut stage = self.from(instructions[0]).await?;
            for ins in &instructions[1..] {
                self.announce(ins);
                self.dispatch(&mut stage, ins)
                    .await
                    .map_err(|e| at_line(e, ins))?;
            }
            if i == last && !self.opts.labels.is_empty() {
                let labels: Vec<String> = self
                    .opts
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", shell_quote(v)))
                    .collect();
                let text = format!("LABEL {}", labels.join(" "));
                self.step += 1;
                self.out
                    .say(format!("Step {}/{} : {text}\n", self.step, self.total));
                let map = stage.config.entry("Labels").or_insert_with(|| json!({}));
                if !map.is_object() {
                    *map = json!({});
                }
                for (k, v) in &self.opts.labels {
                    map[k] = json!(v);
                }
                self.commit_config(&mut stage, &text).await?;
            }
            self.done.push((stage.name.clone(), stage.image.clone()));
        }
        let unused: Vec<&String> = self
            .opts
            .build_args
            .keys()
            .filter(|k| !self.used_args.contains(*k))
            .collect();
        if !unused.is_empty() {
            let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            self.out.say(format!(
                "[Warning] One or more build-args [{}] were not consumed\n",
                names.join(" ")
            ));
        }
        let Some((_, Some(image))) = self.done.last().cloned() else {
            return Err(BuildError::Step(
                "No image was generated. Is your Dockerfile empty?".into(),
            ));
        };
        self.finish(image).await
    }

    /// Names the result and says so.
    async fn finish(&mut self, image: ImageRecord) -> Result<Digest, BuildError> {
        let id = image.config.clone();
        let parent = self
            .engine
            .store
            .local_images()?
            .remove(&id)
            .and_then(|l| l.parent);
        self.engine.store.keep(LocalImage {
            record: image.clone(),
            parent,
            intermediate: false,
        })?;
        let _ = self.out.tx.send(Message::Aux(id.clone()));
        if self.out.quiet {
            let _ = self.out.tx.send(Message::Stream(format!("{id}\n")));
        }
        self.out.say(format!("Successfully built {}\n", short(&id)));
        for tag in &self.opts.tags {
            let mut record = image.clone();
            record.created = crate::engine::now();
            self.engine.store.set_name(&tag.to_string(), record)?;
            self.engine
                .emit_simple("image", "tag", &id.to_string(), Some(&tag.familiar()));
            self.out
                .say(format!("Successfully tagged {}\n", tag.familiar()));
        }
        Ok(id)
    }

    fn announce(&mut self, ins: &Instruction) {
        self.step += 1;
        self.out.say(format!(
            "Step {}/{} : {}\n",
            self.step, self.total, ins.original
        ));
    }

    /// What words before the first `FROM` (and in `FROM`) see.
    fn meta_env(&self) -> BTreeMap<String, String> {
        self.meta_args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect()
    }

    /// An `ARG` before the first `FROM`.
    fn meta_arg(&mut self, ins: &Instruction) -> Result<(), BuildError> {
        let env = self.meta_env();
        for (name, default) in self.arg_pairs(ins, &|n| env.get(n).cloned())? {
            let value = self.arg_value(&name, default);
            self.meta_args.insert(name, value);
        }
        Ok(())
    }

    fn arg_pairs(
        &self,
        ins: &Instruction,
        env: shell::Lookup<'_>,
    ) -> Result<Vec<(String, Option<String>)>, BuildError> {
        let mut out = Vec::new();
        for word in self.lexer.split_raw(&ins.text()) {
            match word.split_once('=') {
                Some((k, v)) => out.push((
                    k.to_owned(),
                    Some(self.lexer.word(v, env).map_err(|e| BuildError::Step(e.0))?),
                )),
                None => out.push((word, None)),
            }
        }
        if out.is_empty() {
            return Err(BuildError::Step(
                "ARG requires at least one argument".into(),
            ));
        }
        Ok(out)
    }

    /// An ARG's value: the build's `--build-arg`, else its default.
    fn arg_value(&mut self, name: &str, default: Option<String>) -> Option<String> {
        match self.opts.build_args.get(name) {
            Some(given) => {
                self.used_args.insert(name.to_owned());
                given.clone().or(default)
            }
            None => default,
        }
    }

    /// `FROM`: the stage's base.
    async fn from(&mut self, ins: &Instruction) -> Result<Stage, BuildError> {
        self.announce(ins);
        if let Some(platform) = ins.flag("platform") {
            let wanted = crate::image::manifest::Platform::parse(platform)?;
            let host = crate::image::manifest::Platform::host();
            if wanted.os != host.os || wanted.architecture != host.architecture {
                return Err(at_line(
                    BuildError::Step(format!(
                        "--platform={platform}: this builder makes {host} images only"
                    )),
                    ins,
                ));
            }
        }
        let env = self.meta_env();
        let lookup = |n: &str| env.get(n).cloned();
        let words = self
            .lexer
            .words(&ins.text(), &lookup)
            .map_err(|e| at_line(BuildError::Step(e.0), ins))?;
        let (base, name) = match words.as_slice() {
            [base] => (base.clone(), None),
            [base, as_, name] if as_.eq_ignore_ascii_case("as") => {
                (base.clone(), Some(name.to_ascii_lowercase()))
            }
            _ => {
                return Err(at_line(
                    BuildError::Step("FROM takes an image and optionally AS NAME".into()),
                    ins,
                ))
            }
        };
        let image = self.base_image(&base).await.map_err(|e| at_line(e, ins))?;
        if let Some(record) = &image {
            self.out.say(format!(
                " ---> {}
",
                short(&record.config)
            ));
        }
        let config = match &image {
            Some(record) => self.config_of(record)?,
            None => Map::new(),
        };
        let shell = config
            .get("Shell")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
        let mut stage = Stage::on(config);
        stage.name = name;
        stage.image = image;
        stage.shell = shell;
        // The base's ONBUILD triggers run now, and are not inherited.
        let triggers: Vec<String> = stage
            .config
            .remove("OnBuild")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        if !triggers.is_empty() {
            self.out.say(format!(
                "# Executing {} build trigger{}\n",
                triggers.len(),
                if triggers.len() == 1 { "" } else { "s" }
            ));
            for trigger in triggers {
                let parsed =
                    dockerfile::parse(&format!("FROM scratch\n{trigger}\n")).map_err(|e| {
                        BuildError::Step(format!("ONBUILD trigger {trigger:?}: {}", e.message))
                    })?;
                if let Some(t) = parsed.instructions.get(1) {
                    self.dispatch(&mut stage, t)
                        .await
                        .map_err(|e| at_line(e, ins))?;
                }
            }
        }
        Ok(stage)
    }

    /// The image a `FROM` or `COPY --from` names: an earlier stage, or an
    /// image (pulled when missing, or always with `--pull`); `None` for
    /// `scratch`.
    async fn base_image(&mut self, base: &str) -> Result<Option<ImageRecord>, BuildError> {
        if base.eq_ignore_ascii_case("scratch") {
            return Ok(None);
        }
        if let Some((_, image)) = self
            .done
            .iter()
            .rev()
            .find(|(n, _)| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(base)))
        {
            return Ok(image.clone());
        }
        let reference: Reference = base.parse()?;
        if self.opts.pull || self.engine.image(&reference.to_string()).is_err() {
            self.out.say(format!("Pulling {}\n", reference.familiar()));
            self.engine.pull(&reference, None).await?;
        }
        let (_, record) = self.engine.image(&reference.to_string())?;
        Ok(Some(record))
    }

    fn config_of(&self, record: &ImageRecord) -> Result<Map<String, Value>, BuildError> {
        let bytes = self.engine.store.read_blob(&record.config)?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::InvalidManifest(format!("image config: {e}")))?;
        Ok(value
            .get("config")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default())
    }

    /// One instruction of a stage.
    async fn dispatch(&mut self, stage: &mut Stage, ins: &Instruction) -> Result<(), BuildError> {
        if *self.cancel.borrow() {
            return Err(BuildError::Cancelled);
        }
        let lookup = |name: &str| stage.lookup(name);
        match ins.keyword.as_str() {
            "FROM" => Err(BuildError::Step("FROM inside a stage".into())),
            "ARG" => {
                let pairs = self.arg_pairs(ins, &lookup)?;
                let mut shown = Vec::new();
                for (name, default) in pairs {
                    // A name given before the first FROM is its default here.
                    let default = default.or_else(|| self.meta_args.get(&name).cloned().flatten());
                    let value = self.arg_value(&name, default);
                    shown.push(match &value {
                        Some(v) if ins.text().contains('=') => format!("{name}={v}"),
                        _ => name.clone(),
                    });
                    stage.args.insert(name, value);
                }
                self.commit_config(stage, &format!("ARG {}", shown.join(" ")))
                    .await
            }
            "WORKDIR" => {
                let Some(created_by) = config_step(&self.lexer, stage, ins)? else {
                    return Ok(());
                };
                let spec = copy::CopySpec {
                    sources: Vec::new(),
                    dest: stage.working_dir(),
                    dest_is_dir: true,
                    chown: None,
                    chmod: None,
                    extract: false,
                };
                self.files(stage, spec, &created_by).await
            }
            _ if CONFIG_STEPS.contains(&ins.keyword.as_str()) => {
                match config_step(&self.lexer, stage, ins)? {
                    Some(created_by) => self.commit_config(stage, &created_by).await,
                    None => Ok(()),
                }
            }
            "COPY" | "ADD" => self.copy(stage, ins).await,
            "RUN" => self.run_step(stage, ins).await,
            other => Err(BuildError::Step(format!("unknown instruction: {other}"))),
        }
    }

    /// Commits the stage's config as a step without a layer.
    async fn commit_config(
        &mut self,
        stage: &mut Stage,
        created_by: &str,
    ) -> Result<(), BuildError> {
        let created_by = format!("/bin/sh -c #(nop) {created_by}");
        let parent = stage.image.as_ref().map(|r| r.config.clone());
        // The config itself is in the key: it is what this step makes.
        let inputs = Digest::of(
            serde_json::to_string(&stage.config)
                .unwrap_or_default()
                .as_bytes(),
        );
        let key = cache::key(parent.as_ref(), &created_by, Some(&inputs));
        if self.use_cache(stage, &key)? {
            return Ok(());
        }
        let record = commit_step(&self.engine, stage, None, created_by)?;
        self.record_step(stage, &key, record)
    }

    /// Takes the step from the cache if it is there.
    fn use_cache(&mut self, stage: &mut Stage, key: &Digest) -> Result<bool, BuildError> {
        if self.opts.no_cache {
            return Ok(false);
        }
        let Some(id) = self.cache.get(key) else {
            return Ok(false);
        };
        let Some(local) = self.engine.store.local_images()?.remove(&id) else {
            return Ok(false);
        };
        if self.engine.store.lowers(&local.record).is_err() {
            return Ok(false);
        }
        self.out.say(" ---> Using cache\n");
        self.out.say(format!(" ---> {}\n", short(&id)));
        stage.config = self.config_of(&local.record)?;
        stage.image = Some(local.record);
        Ok(true)
    }

    /// Keeps a step's image, caches it, and moves the stage onto it.
    fn record_step(
        &mut self,
        stage: &mut Stage,
        key: &Digest,
        record: ImageRecord,
    ) -> Result<(), BuildError> {
        self.engine.store.keep(LocalImage {
            record: record.clone(),
            parent: stage.image.as_ref().map(|r| r.config.clone()),
            intermediate: true,
        })?;
        if let Err(e) = self.cache.put(key, &record.config) {
            tracing::warn!("build cache: {e}");
        }
        self.out.say(format!(" ---> {}\n", short(&record.config)));
        stage.image = Some(record);
        Ok(())
    }

    /// `COPY` and `ADD`.
    async fn copy(&mut self, stage: &mut Stage, ins: &Instruction) -> Result<(), BuildError> {
        for (flag, _) in &ins.flags {
            if !matches!(flag.as_str(), "from" | "chown" | "chmod") {
                return Err(BuildError::Step(format!(
                    "the --{flag} option requires BuildKit, which this builder is not"
                )));
            }
        }
        let lookup = |name: &str| stage.lookup(name);
        let step_err = |e: shell::ShellError| BuildError::Step(e.0);
        let mut words = match &ins.args {
            Args::Exec(w) => w
                .iter()
                .map(|w| self.lexer.word(w, &lookup))
                .collect::<Result<Vec<_>, _>>()
                .map_err(step_err)?,
            Args::Shell(text) => self.lexer.words(text, &lookup).map_err(step_err)?,
        };
        let Some(dest_word) = words.pop() else {
            return Err(BuildError::Step(format!(
                "{} requires at least two arguments",
                ins.keyword
            )));
        };
        let chown = ins
            .flag("chown")
            .map(|c| self.lexer.word(c, &lookup))
            .transpose()
            .map_err(step_err)?;
        let chmod = match ins.flag("chmod") {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        BuildError::Step(format!(
                            "invalid --chmod={m}: give octal permission bits, e.g. 0755"
                        ))
                    })?,
            ),
            None => None,
        };
        let dest = if dest_word.starts_with('/') {
            PathBuf::from(&dest_word)
        } else {
            stage.working_dir().join(&dest_word)
        };
        let ends_with_slash = dest_word.ends_with('/') || dest_word.ends_with("/.");
        // Heredocs stand in for their `<<NAME` words.
        let mut sources = Vec::new();
        let mut names = Vec::new();
        for w in words {
            let opener = w
                .trim_start_matches("<<")
                .trim_start_matches('-')
                .trim_matches(['"', '\'']);
            if w.starts_with("<<") {
                if let Some(doc) = ins.heredocs.iter().find(|h| h.name == opener) {
                    let content = if doc.expand {
                        self.lexer.text(&doc.content, &lookup).map_err(step_err)?
                    } else {
                        doc.content.clone()
                    };
                    sources.push(copy::Source::Bytes {
                        name: doc.name.clone(),
                        data: content.into_bytes(),
                        mode: 0o644,
                    });
                    continue;
                }
            }
            if ins.keyword == "ADD" && (w.starts_with("http://") || w.starts_with("https://")) {
                sources.push(self.download(&w).await?);
                continue;
            }
            names.push(w);
        }
        let from = ins.flag("from").map(str::to_owned);
        // The root the names are found in: the context, or an image.
        let mut source_ws = None;
        if !names.is_empty() {
            let found = match &from {
                None => {
                    let root = self.context_root()?;
                    copy::find_sources(&root, &self.context, &names, true)?
                }
                Some(from) => {
                    let image = match from.parse::<usize>() {
                        Ok(i) => self
                            .done
                            .get(i)
                            .map(|(_, image)| image.clone())
                            .ok_or_else(|| {
                                BuildError::Step(format!(
                                    "invalid from flag value {from}: no stage {i}"
                                ))
                            })?,
                        Err(_) => self.base_image(from).await?,
                    };
                    let ws = workspace::Workspace::mount(
                        &self.engine.store,
                        image.as_ref(),
                        &self.work,
                    )?;
                    let root = ws
                        .open(Path::new("/"), true)?
                        .ok_or_else(|| BuildError::Step("the image has no root".into()))?;
                    let found = copy::find_sources(&root, &ws.rootfs(), &names, false)?;
                    source_ws = Some(ws);
                    found
                }
            };
            sources.extend(found);
        }
        if sources.len() > 1 && !ends_with_slash {
            return Err(BuildError::Step(format!(
                "When using {} with more than one source file, the destination must be a directory and end with a /",
                ins.keyword
            )));
        }
        let spec = copy::CopySpec {
            sources,
            dest: dest.clone(),
            dest_is_dir: ends_with_slash,
            chown,
            chmod,
            extract: ins.keyword == "ADD",
        };
        let what = format!("{} {}", ins.keyword, ins.text());
        let result = self.files(stage, spec, &what).await;
        drop(source_ws);
        result
    }

    /// `ADD https://…`: the file, downloaded into an unlinked file under
    /// the build's directory.
    async fn download(&mut self, url: &str) -> Result<copy::Source, BuildError> {
        let file = tempfile::tempfile_in(&self.work)
            .map_err(|e| BuildError::io("make a file for a download", e))?;
        crate::download::to_file(url, &file)
            .await
            .map_err(|e| BuildError::Step(e.to_string()))?;
        let name = url
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("index.html")
            .to_owned();
        Ok(copy::Source::Download {
            fd: file.into(),
            name,
        })
    }

    /// A step that writes files: planned, looked up in the cache by its
    /// content, else applied in a workspace and committed with its layer.
    async fn files(
        &mut self,
        stage: &mut Stage,
        spec: copy::CopySpec,
        what: &str,
    ) -> Result<(), BuildError> {
        let (spec, plan) = tokio::task::spawn_blocking(move || {
            let plan = spec.plan();
            (spec, plan)
        })
        .await
        .map_err(|e| BuildError::Step(format!("plan the copy: {e}")))?;
        let plan = plan?;
        let created_by = format!("/bin/sh -c #(nop) {what}");
        let parent = stage.image.as_ref().map(|r| r.config.clone());
        let mut inputs = crate::image::digest::Hasher::new();
        inputs.update(plan.digest.to_string().as_bytes());
        inputs.update(
            serde_json::to_string(&stage.config)
                .unwrap_or_default()
                .as_bytes(),
        );
        let inputs = inputs.finish();
        let key = cache::key(parent.as_ref(), &created_by, Some(&inputs));
        if self.use_cache(stage, &key)? {
            return Ok(());
        }
        let store = self.engine.store.clone();
        let image = stage.image.clone();
        let work = self.work.clone();
        let layer = tokio::task::spawn_blocking(move || -> Result<Option<NewLayer>, BuildError> {
            let ws = workspace::Workspace::mount(&store, image.as_ref(), &work)?;
            plan.apply(&ws, &spec, &work)?;
            ws.unmount();
            Ok(commit::layer_from_upper(&store, &ws.upper(), &[])?)
        })
        .await
        .map_err(|e| BuildError::Step(format!("copy: {e}")))??;
        let record = commit_step(&self.engine, stage, layer, created_by)?;
        self.record_step(stage, &key, record)
    }

    /// `RUN`: a container of the stage's image runs the command; what it
    /// changed becomes the step's layer.
    async fn run_step(&mut self, stage: &mut Stage, ins: &Instruction) -> Result<(), BuildError> {
        if let Some((flag, _)) = ins.flags.first() {
            return Err(BuildError::Step(format!(
                "the --{flag} option requires BuildKit, which this builder is not"
            )));
        }
        let Some(image) = stage.image.clone() else {
            return Err(BuildError::Step(
                "RUN needs something to run: this stage is FROM scratch with nothing in it".into(),
            ));
        };
        let argv = run_argv(ins, &stage.shell);
        let args = stage.run_args();
        let mut created_by = argv.join(" ");
        if !args.is_empty() {
            let shown: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            created_by = format!("|{} {} {created_by}", args.len(), shown.join(" "));
        }
        let key = cache::key(Some(&image.config), &created_by, None);
        if self.use_cache(stage, &key)? {
            return Ok(());
        }
        let config = ContainerConfig {
            image: image.config.to_string(),
            cmd: Some(argv.clone()),
            entrypoint: Some(Vec::new()),
            env: Some(args.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            attach_stdout: true,
            attach_stderr: true,
            ..Default::default()
        };
        let mode = self.opts.network_mode.clone();
        let attachments = match mode.as_str() {
            "host" | "none" => Vec::new(),
            "" | "default" | "bridge" => vec![Attachment {
                network: crate::network::DEFAULT_NETWORK.to_owned(),
                aliases: Vec::new(),
            }],
            other => vec![Attachment {
                network: other.to_owned(),
                aliases: Vec::new(),
            }],
        };
        let host_config = HostConfig {
            network_mode: if mode == "default" {
                String::new()
            } else {
                mode
            },
            ..Default::default()
        };
        let id = self.engine.create(None, config, host_config, attachments)?;
        self.out.say(format!(" ---> Running in {}\n", &id[..12]));
        let outcome = self.run_container(&id).await;
        let remove = match &outcome {
            Ok(0) | Err(BuildError::Cancelled) => self.opts.remove || self.opts.force_remove,
            _ => self.opts.force_remove,
        };
        let made = match outcome {
            Ok(0) => self.commit_container(stage, &id, created_by).await,
            Ok(code) => Err(BuildError::Run {
                command: argv.join(" "),
                code,
            }),
            Err(e) => Err(e),
        };
        if remove {
            self.out
                .say(format!("Removing intermediate container {}\n", &id[..12]));
            if let Err(e) = self.engine.remove(&id, true, true).await {
                tracing::warn!(container = %id, "remove the build container: {e}");
            }
        }
        self.record_step(stage, &key, made?)
    }

    /// Starts container `id`, streams its output, and waits for its exit.
    async fn run_container(&mut self, id: &str) -> Result<i32, BuildError> {
        let container = self.engine.container(id)?;
        let mut output = container.subscribe();
        let mut watch = container.watch();
        let mut cancel = self.cancel.clone();
        self.engine.start(id).await?;
        let mut cancelled = false;
        loop {
            tokio::select! {
                _ = cancel.wait_for(|c| *c) => {
                    cancelled = true;
                    break;
                }
                chunk = output.recv() => match chunk {
                    Ok(o) => self.out.say(String::from_utf8_lossy(&o.bytes).into_owned()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                exited = watch.wait_for(|w| w.exits > 0 || w.removed) => {
                    let _ = exited;
                    break;
                }
            }
        }
        if cancelled {
            let _ = self.engine.kill(id, nix::sys::signal::Signal::SIGKILL);
            let _ = watch.wait_for(|w| w.exits > 0 || w.removed).await;
            return Err(BuildError::Cancelled);
        }
        let _ = watch.wait_for(|w| w.exits > 0 || w.removed).await;
        while let Ok(o) = output.try_recv() {
            self.out.say(String::from_utf8_lossy(&o.bytes).into_owned());
        }
        Ok(container.record().state.exit_code)
    }

    /// Commits what container `id` changed on the stage's image.
    async fn commit_container(
        &mut self,
        stage: &Stage,
        id: &str,
        created_by: String,
    ) -> Result<ImageRecord, BuildError> {
        let layer = self.engine.container_layer(id).await?;
        Ok(commit_step(&self.engine, stage, layer, created_by)?)
    }
}

/// Commits the stage's config, and `layer` if the step made one, as the
/// next image on the stage's.
fn commit_step(
    engine: &Engine,
    stage: &Stage,
    layer: Option<NewLayer>,
    created_by: String,
) -> Result<ImageRecord, ImageError> {
    commit::commit(
        &engine.store,
        NewImage {
            parent: stage.image.as_ref(),
            layer,
            config: Value::Object(stage.config.clone()),
            history: HistoryEntry {
                created_by,
                comment: None,
            },
            author: stage.author.clone(),
        },
    )
}

/// The instructions that change only the image's config.
const CONFIG_STEPS: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Applies a config instruction to the stage; what made the step (for its
/// history and cache key), or `None` if `ins` is not one.
fn config_step(
    lexer: &Lexer,
    stage: &mut Stage,
    ins: &Instruction,
) -> Result<Option<String>, BuildError> {
    let step_err = |e: shell::ShellError| BuildError::Step(e.0);
    let env_of = stage.clone_lookup();
    let lookup = |name: &str| env_of.get(name).cloned();
    match ins.keyword.as_str() {
        "ENV" => {
            let pairs = shell::pairs(lexer, &ins.text(), &lookup, "ENV").map_err(step_err)?;
            let mut shown = Vec::new();
            for (k, v) in pairs {
                shown.push(format!("{k}={v}"));
                stage.set_env(&k, &v);
            }
            Ok(Some(format!("ENV {}", shown.join(" "))))
        }
        "LABEL" => {
            let pairs = shell::pairs(lexer, &ins.text(), &lookup, "LABEL").map_err(step_err)?;
            let labels = stage.config.entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            let mut shown = Vec::new();
            for (k, v) in pairs {
                shown.push(format!("{k}={}", shell_quote(&v)));
                labels[&k] = json!(v);
            }
            Ok(Some(format!("LABEL {}", shown.join(" "))))
        }
        "MAINTAINER" => {
            let who = lexer.word(&ins.text(), &lookup).map_err(step_err)?;
            stage.author = Some(who.clone());
            Ok(Some(format!("MAINTAINER {who}")))
        }
        "EXPOSE" => {
            let words = lexer.words(&ins.text(), &lookup).map_err(step_err)?;
            let ports = stage
                .config
                .entry("ExposedPorts")
                .or_insert_with(|| json!({}));
            if !ports.is_object() {
                *ports = json!({});
            }
            let mut shown = Vec::new();
            for w in words {
                for p in expose_ports(&w)? {
                    ports[&p] = json!({});
                    shown.push(p);
                }
            }
            Ok(Some(format!("EXPOSE {}", shown.join(" "))))
        }
        "VOLUME" => {
            let paths = match &ins.args {
                Args::Exec(words) => words
                    .iter()
                    .map(|w| lexer.word(w, &lookup))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(step_err)?,
                Args::Shell(text) => lexer.words(text, &lookup).map_err(step_err)?,
            };
            if paths.iter().any(|p| p.trim().is_empty()) || paths.is_empty() {
                return Err(BuildError::Step(
                    "VOLUME specified can not be an empty string".into(),
                ));
            }
            let volumes = stage.config.entry("Volumes").or_insert_with(|| json!({}));
            if !volumes.is_object() {
                *volumes = json!({});
            }
            for p in &paths {
                volumes[p] = json!({});
            }
            Ok(Some(format!("VOLUME {paths:?}")))
        }
        "USER" => {
            let user = lexer.word(&ins.text(), &lookup).map_err(step_err)?;
            stage.config.insert("User".into(), json!(user));
            Ok(Some(format!("USER {user}")))
        }
        "STOPSIGNAL" => {
            let signal = lexer.word(&ins.text(), &lookup).map_err(step_err)?;
            stage.config.insert("StopSignal".into(), json!(signal));
            Ok(Some(format!("STOPSIGNAL {signal}")))
        }
        "SHELL" => {
            let Args::Exec(words) = &ins.args else {
                return Err(BuildError::Step(
                    "SHELL requires the arguments to be in JSON form".into(),
                ));
            };
            stage.shell = words.clone();
            stage.config.insert("Shell".into(), json!(words));
            Ok(Some(format!("SHELL {words:?}")))
        }
        "CMD" | "ENTRYPOINT" => {
            let argv = match &ins.args {
                Args::Exec(words) => words.clone(),
                Args::Shell(text) if text.trim().is_empty() => Vec::new(),
                Args::Shell(text) => {
                    let mut argv = stage.shell.clone();
                    argv.push(text.clone());
                    argv
                }
            };
            let key = if ins.keyword == "CMD" {
                "Cmd"
            } else {
                "Entrypoint"
            };
            stage.config.insert(key.into(), json!(argv));
            if ins.keyword == "CMD" {
                stage.cmd_set = true;
            } else if !stage.cmd_set {
                // A new entrypoint drops the base's command.
                stage.config.insert("Cmd".into(), Value::Null);
            }
            let created = format!(
                "{} {}",
                ins.keyword,
                serde_json::to_string(&argv).unwrap_or_default()
            );
            Ok(Some(created))
        }
        "HEALTHCHECK" => {
            let check = healthcheck(ins)?;
            stage.config.insert("Healthcheck".into(), check);
            Ok(Some(format!("HEALTHCHECK {}", ins.text())))
        }
        "ONBUILD" => {
            let trigger = ins.text();
            let keyword = trigger
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            if matches!(keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                return Err(BuildError::Step(format!(
                    "{keyword} isn't allowed as an ONBUILD trigger"
                )));
            }
            dockerfile::parse(&format!("FROM scratch\n{trigger}\n"))
                .map_err(|e| BuildError::Step(e.message))?;
            let list = stage.config.entry("OnBuild").or_insert_with(|| json!([]));
            if !list.is_array() {
                *list = json!([]);
            }
            if let Some(a) = list.as_array_mut() {
                a.push(json!(trigger));
            }
            Ok(Some(format!("ONBUILD {trigger}")))
        }
        "WORKDIR" => {
            let dir = lexer.word(&ins.text(), &lookup).map_err(step_err)?;
            let path = stage.working_dir().join(&dir);
            let path = format!("/{}", pattern::clean(&path.to_string_lossy()));
            stage.config.insert("WorkingDir".into(), json!(path));
            Ok(Some(format!("WORKDIR {path}")))
        }
        _ => Ok(None),
    }
}

/// Applies `docker commit --change` instructions to an image config.
pub fn apply_changes(
    config: Map<String, Value>,
    changes: &[String],
) -> Result<Map<String, Value>, BuildError> {
    let mut stage = Stage::on(config);
    for change in changes {
        let parsed = dockerfile::parse(&format!("FROM scratch\n{change}\n"))?;
        for ins in &parsed.instructions[1..] {
            if ins.keyword == "SHELL" || config_step(&Lexer::new('\\'), &mut stage, ins)?.is_none()
            {
                return Err(BuildError::Step(format!(
                    "{} is not a valid change command",
                    ins.keyword.to_ascii_lowercase()
                )));
            }
        }
    }
    Ok(stage.config)
}

/// The `AS` name of a `FROM`, as written.
fn stage_name(lexer: &Lexer, from: &Instruction) -> Option<String> {
    let words = lexer.split_raw(&from.text());
    match words.as_slice() {
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.clone()),
        _ => None,
    }
}

/// Adds the instruction's line to a step's error (a parse error has its
/// own, and a failed `RUN` says what it ran).
fn at_line(e: BuildError, ins: &Instruction) -> BuildError {
    match e {
        BuildError::Parse(_) | BuildError::Run { .. } | BuildError::AtLine { .. } => e,
        BuildError::Step(message) => BuildError::AtLine {
            keyword: ins.keyword.clone(),
            line: ins.line,
            message,
        },
        other => BuildError::AtLine {
            keyword: ins.keyword.clone(),
            line: ins.line,
            message: other.to_string(),
        },
    }
}

/// A label value as `docker history` shows it.
fn shell_quote(v: &str) -> String {
    if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '"') {
        format!("{v:?}")
    } else {
        v.to_owned()
    }
}

/// `RUN`'s command line: the exec form as it is, the shell form given to
/// the stage's shell (a heredoc that is the whole command is the script).
fn run_argv(ins: &Instruction, shell: &[String]) -> Vec<String> {
    match &ins.args {
        Args::Exec(words) => words.clone(),
        Args::Shell(text) => {
            let mut argv = shell.to_vec();
            let only_heredoc = ins.heredocs.len() == 1
                && text
                    .trim()
                    .trim_start_matches("<<")
                    .trim_start_matches('-')
                    .trim_matches(['"', '\''])
                    == ins.heredocs[0].name;
            if only_heredoc {
                argv.push(ins.heredocs[0].content.clone());
            } else if ins.heredocs.is_empty() {
                argv.push(text.clone());
            } else {
                let mut script = text.clone();
                for doc in &ins.heredocs {
                    script.push('\n');
                    script.push_str(&doc.content);
                    script.push_str(&doc.name);
                }
                argv.push(script);
            }
            argv
        }
    }
}

/// `EXPOSE 80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, ….
fn expose_ports(word: &str) -> Result<Vec<String>, BuildError> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(BuildError::Step(format!("invalid proto: {proto}")));
    }
    let bad = || BuildError::Step(format!("invalid containerPort: {ports}"));
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo == 0 || hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// `HEALTHCHECK [options] CMD …` or `HEALTHCHECK NONE`.
fn healthcheck(ins: &Instruction) -> Result<Value, BuildError> {
    let text = ins.text();
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("none") {
        return Ok(json!({"Test": ["NONE"]}));
    }
    let Some(rest) = trimmed
        .strip_prefix("CMD")
        .or_else(|| trimmed.strip_prefix("cmd"))
    else {
        return Err(BuildError::Step(
            "HEALTHCHECK takes NONE or CMD followed by a command".into(),
        ));
    };
    let test = match serde_json::from_str::<Vec<String>>(rest.trim()) {
        Ok(words) => std::iter::once("CMD".to_owned())
            .chain(words)
            .collect::<Vec<_>>(),
        Err(_) => vec!["CMD-SHELL".to_owned(), rest.trim().to_owned()],
    };
    let mut check = json!({ "Test": test });
    let duration = |flag: &str| -> Result<Option<i64>, BuildError> {
        ins.flag(flag)
            .map(|v| {
                humantime::parse_duration(v)
                    .map(|d| d.as_nanos() as i64)
                    .map_err(|e| BuildError::Step(format!("--{flag}={v}: {e}")))
            })
            .transpose()
    };
    for (flag, key) in [
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ] {
        if let Some(n) = duration(flag)? {
            check[key] = json!(n);
        }
    }
    if let Some(r) = ins.flag("retries") {
        let n: i64 = r
            .parse()
            .map_err(|_| BuildError::Step(format!("--retries={r}: not a number")))?;
        check["Retries"] = json!(n);
    }
    Ok(check)
}

/// Removes what `.dockerignore` leaves out of the context (the CLI does
/// this already; other clients may not).
fn remove_ignored(root: &Path, rel: &Path, rules: &pattern::Ignore) {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let rel = rel.join(e.file_name());
        let text = rel.to_string_lossy();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            remove_ignored(root, &rel, rules);
            if rules.excludes(&text) {
                // Emptied of what was excluded; gone if nothing came back.
                let _ = std::fs::remove_dir(root.join(&rel));
            }
        } else if rules.excludes(&text) && text != "Dockerfile" && text != ".dockerignore" {
            let _ = std::fs::remove_file(root.join(&rel));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_ports() {
        assert_eq!(expose_ports("80").unwrap(), ["80/tcp"]);
        assert_eq!(expose_ports("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            expose_ports("8000-8002").unwrap(),
            ["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(expose_ports("x").is_err());
        assert!(expose_ports("80/icmp").is_err());
        assert!(expose_ports("0").is_err());
    }

    #[test]
    fn run_command_lines() {
        let df = dockerfile::parse(
            "FROM x\nRUN echo hi\nRUN [\"echo\", \"a b\"]\nRUN <<EOF\necho one\nEOF\nRUN cat <<EOF\nx\nEOF\n",
        )
        .unwrap();
        let sh: Vec<String> = DEFAULT_SHELL.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            run_argv(&df.instructions[1], &sh),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(run_argv(&df.instructions[2], &sh), ["echo", "a b"]);
        assert_eq!(
            run_argv(&df.instructions[3], &sh),
            ["/bin/sh", "-c", "echo one\n"]
        );
        assert_eq!(
            run_argv(&df.instructions[4], &sh),
            ["/bin/sh", "-c", "cat <<EOF\nx\nEOF"]
        );
    }

    #[test]
    fn healthchecks() {
        let df = dockerfile::parse(
            "FROM x\nHEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost\nHEALTHCHECK NONE\n",
        )
        .unwrap();
        let check = healthcheck(&df.instructions[1]).unwrap();
        assert_eq!(check["Test"], json!(["CMD-SHELL", "wget -q localhost"]));
        assert_eq!(check["Interval"], json!(5_000_000_000i64));
        assert_eq!(check["Retries"], json!(2));
        assert_eq!(
            healthcheck(&df.instructions[2]).unwrap(),
            json!({"Test": ["NONE"]})
        );
    }
}

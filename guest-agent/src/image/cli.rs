//! `berth-agent image …`: the image store from the command line — pull,
//! push, tag, list, inspect, remove, garbage-collect — for operators and
//! tests.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use tokio::sync::mpsc::UnboundedSender;

use super::archive;
use super::manifest::Platform;
use super::progress::{LayerStatus, Progress};
use super::pull::Puller;
use super::push::Pusher;
use super::reference::Reference;
use super::registry::{Client, Credentials, RegistryConfig};
use super::store::Store;
use super::ImageError;

/// Where the store lives unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/berth-agent/images";

/// The image command line.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The image store's directory.
    #[arg(long, default_value = DEFAULT_ROOT, global = true, value_name = "DIR")]
    pub root: PathBuf,
    /// A registry (host:port) to reach over plain HTTP (loopback always is).
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    pub insecure: Vec<String>,
    /// An extra CA certificate (PEM) to trust for registries.
    #[arg(long = "registry-ca", global = true, value_name = "FILE")]
    pub ca: Vec<PathBuf>,
    /// The user name for the reference's registry.
    #[arg(long, global = true)]
    pub username: Option<String>,
    /// Read the password for --username from standard input.
    #[arg(long, global = true)]
    pub password_stdin: bool,
    /// The verb.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The image verbs.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry.
    Pull {
        /// The image, e.g. busybox or localhost:5000/app:1.
        reference: String,
        /// The platform, OS/ARCH[/VARIANT] (default: this host's).
        #[arg(long)]
        platform: Option<String>,
        /// Print only the image id.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Push an image to the registry its name says.
    Push {
        /// The image, e.g. localhost:5000/app:1.
        reference: String,
        /// Upload blobs larger than this many bytes in chunks of it.
        #[arg(long, value_name = "BYTES")]
        chunk_size: Option<u64>,
        /// Print only the manifest digest.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Give an image another name.
    Tag {
        /// The image's name.
        source: String,
        /// The new name.
        target: String,
    },
    /// Write images to a tar: an OCI layout that `docker load` also reads.
    Save {
        /// The file to write (standard output if not given).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// The images.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Read images from a tar (`docker save`, OCI layout; plain, gzip or
    /// zstd) or an OCI layout directory.
    Load {
        /// The tar or directory.
        #[arg(long, short = 'i', value_name = "FILE")]
        input: PathBuf,
        /// A name for the image (when the input holds one).
        #[arg(long, short = 't')]
        tag: Option<String>,
        /// The platform to take from a multi-platform image.
        #[arg(long)]
        platform: Option<String>,
    },
    /// List the images.
    Ls,
    /// Show an image's record, manifest and config as JSON.
    Inspect {
        /// The image.
        reference: String,
    },
    /// Remove image names (their content goes at the next gc).
    Rm {
        /// The images.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove blobs and snapshots no image needs.
    Gc,
}

fn print(text: &str) -> Result<(), ImageError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(ImageError::Io {
            action: "write to stdout".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn client(args: &ImageArgs, registry: Option<&str>) -> Result<Client, ImageError> {
    let mut config = RegistryConfig {
        insecure: args.insecure.clone(),
        ..Default::default()
    };
    for path in &args.ca {
        config
            .extra_ca_pem
            .push(std::fs::read(path).map_err(|e| ImageError::Io {
                action: format!("read {}", path.display()),
                source: e,
            })?);
    }
    if let (Some(username), Some(host)) = (&args.username, registry) {
        let mut password = String::new();
        if args.password_stdin {
            std::io::stdin()
                .read_to_string(&mut password)
                .map_err(|e| ImageError::Io {
                    action: "read the password from stdin".into(),
                    source: e,
                })?;
        }
        config.credentials.insert(
            host.to_owned(),
            Credentials {
                username: username.clone(),
                password: password.trim_end_matches(['\n', '\r']).to_owned(),
            },
        );
    }
    Client::new(config)
}

/// Runs `work` to its end on a runtime of its own, printing on stderr the
/// progress it sends (unless `quiet`): each step once, and transfers
/// every tenth of the way.
fn with_progress<T, F>(
    quiet: bool,
    work: impl FnOnce(UnboundedSender<Progress>) -> F,
) -> Result<T, ImageError>
where
    F: std::future::Future<Output = Result<T, ImageError>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ImageError::Io {
            action: "start the async runtime".into(),
            source: e,
        })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    runtime.block_on(async {
        let printer = tokio::spawn(async move {
            let mut tenths = HashMap::new();
            while let Some(p) = rx.recv().await {
                if quiet {
                    continue;
                }
                if let Progress::Layer {
                    digest,
                    status:
                        LayerStatus::Downloading { done, total }
                        | LayerStatus::Uploading { done, total },
                } = &p
                {
                    let tenth = done.saturating_mul(10) / (*total).max(1);
                    if tenths.insert(digest.clone(), tenth) == Some(tenth) {
                        continue;
                    }
                }
                eprintln!("{p}");
            }
        });
        let out = work(tx).await;
        let _ = printer.await;
        out
    })
}

/// Saves `names` to `path` through a temporary file beside it, so that a
/// failed save leaves nothing under that name.
fn save_to(store: &Store, names: &[Reference], path: &Path) -> Result<(), ImageError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |action: &str| {
        let action = format!("{action} {}", path.display());
        move |source| ImageError::Io { action, source }
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io("create a file beside"))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, tmp);
    archive::save(store, names, &mut writer)?;
    let tmp = writer
        .into_inner()
        .map_err(|e| io("write")(e.into_error()))?;
    tmp.as_file().sync_all().map_err(io("sync"))?;
    tmp.persist(path).map_err(|e| io("write")(e.error))?;
    Ok(())
}

/// Runs one image verb.
pub fn main(args: ImageArgs) -> Result<(), ImageError> {
    let store = Arc::new(Store::open(&args.root)?);
    match &args.command {
        ImageCommand::Pull {
            reference,
            platform,
            quiet,
        } => {
            let reference: Reference = reference.parse()?;
            let platform = match platform {
                Some(p) => Platform::parse(p)?,
                None => Platform::host(),
            };
            let client = Arc::new(client(&args, Some(reference.api_host()))?);
            let puller = Puller::new(store, client);
            let record = with_progress(*quiet, |tx| puller.pull(&reference, &platform, Some(tx)))?;
            if *quiet {
                print(&format!("{}\n", record.config))
            } else {
                print(&format!(
                    "{}: pulled {} (digest {})\n",
                    reference.familiar(),
                    record.config,
                    record.target
                ))
            }
        }
        ImageCommand::Push {
            reference,
            chunk_size,
            quiet,
        } => {
            let reference: Reference = reference.parse()?;
            let client = Arc::new(client(&args, Some(reference.api_host()))?);
            let mut pusher = Pusher::new(store, client);
            if let Some(bytes) = chunk_size {
                pusher = pusher.with_chunk_size(*bytes);
            }
            let digest = with_progress(*quiet, |tx| pusher.push(&reference, Some(tx)))?;
            if *quiet {
                print(&format!("{digest}\n"))
            } else {
                print(&format!(
                    "{}: pushed (digest {digest})\n",
                    reference.familiar()
                ))
            }
        }
        ImageCommand::Tag { source, target } => {
            let source: Reference = source.parse()?;
            let target: Reference = target.parse()?;
            let record = store.lookup(&source.to_string())?;
            store.set_name(&target.to_string(), record)
        }
        ImageCommand::Save { output, references } => {
            let names = references
                .iter()
                .map(|r| r.parse())
                .collect::<Result<Vec<Reference>, _>>()?;
            match output {
                Some(path) => save_to(&store, &names, path),
                None if std::io::stdout().is_terminal() => Err(ImageError::Config(
                    "refusing to write an archive to a terminal: give -o FILE or redirect".into(),
                )),
                None => archive::save(&store, &names, std::io::stdout().lock()),
            }
        }
        ImageCommand::Load {
            input,
            tag,
            platform,
        } => {
            let tag = tag.as_deref().map(str::parse::<Reference>).transpose()?;
            let platform = match platform {
                Some(p) => Platform::parse(p)?,
                None => Platform::host(),
            };
            let mut text = String::new();
            for (name, record) in archive::load(&store, input, &platform, tag.as_ref())? {
                let familiar = name.parse::<Reference>().map_or(name, |r| r.familiar());
                text.push_str(&format!("loaded {familiar} ({})\n", record.config));
            }
            print(&text)
        }
        ImageCommand::Ls => {
            let mut text = format!(
                "{:<50} {:<20} {:<14} {}\n",
                "REPOSITORY", "TAG", "IMAGE ID", "PLATFORM"
            );
            for (name, record) in store.names()? {
                let (repo, tag) = match name.parse::<Reference>() {
                    Ok(r) => (r.familiar_name(), r.tag().unwrap_or("<none>").to_owned()),
                    Err(_) => (name.clone(), "<none>".into()),
                };
                text.push_str(&format!(
                    "{:<50} {:<20} {:<14} {}\n",
                    repo,
                    tag,
                    &record.config.hex()[..12],
                    record.platform
                ));
            }
            print(&text)
        }
        ImageCommand::Inspect { reference } => {
            let reference: Reference = reference.parse()?;
            let record = store.lookup(&reference.to_string())?;
            let manifest: serde_json::Value =
                serde_json::from_slice(&store.read_blob(&record.manifest)?)
                    .map_err(|e| ImageError::InvalidManifest(e.to_string()))?;
            let config: serde_json::Value =
                serde_json::from_slice(&store.read_blob(&record.config)?)
                    .map_err(|e| ImageError::InvalidManifest(e.to_string()))?;
            let lowers = store.lowers(&record)?;
            let json = serde_json::json!({
                "name": reference.to_string(),
                "id": record.config,
                "record": record,
                "manifest": manifest,
                "config": config,
                "layers": lowers,
            });
            print(&format!(
                "{}\n",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            ))
        }
        ImageCommand::Rm { references } => {
            for r in references {
                let reference: Reference = r.parse()?;
                store.remove_name(&reference.to_string())?;
                print(&format!("untagged {}\n", reference.familiar()))?;
            }
            Ok(())
        }
        ImageCommand::Gc => {
            let report = store.gc()?;
            print(&format!(
                "removed {} blobs ({} bytes) and {} snapshots\n",
                report.blobs, report.blob_bytes, report.snapshots
            ))
        }
    }
}

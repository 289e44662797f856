//! A real OCI registry (Debian's `docker-registry`, distribution 2.8) on a
//! free loopback port with its own storage, and images built from
//! Debian's `busybox-static` put into it with `skopeo`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// A running registry, stopped on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// `user:password` that the registry (or its token service) accepts.
    pub creds: Option<String>,
    dir: tempfile::TempDir,
}

/// How a test registry is set up beyond the plain, open default.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Basic auth (htpasswd, bcrypt) with this user and password.
    pub basic: Option<(String, String)>,
    /// Bearer-token auth: tokens from this realm URL, signed by the key
    /// whose certificate is at this path, handed out for these
    /// credentials (`user:password`).
    pub token: Option<(String, PathBuf, String)>,
    /// HTTPS with a certificate for 127.0.0.1 from a CA of its own
    /// ([`Registry::ca`]).
    pub tls: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `openssl` with `args` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `ca.pem`/`ca.key` and, signed by it, `<name>.pem`/`<name>.key`
/// for 127.0.0.1 in `dir`.
pub fn certificates(dir: &Path, name: &str) {
    if !dir.join("ca.pem").exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=berth test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
    }
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            &pem,
        ],
    );
}

impl Registry {
    /// Starts an open, plain-HTTP registry and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&Options::default())
    }

    /// Starts a registry set up as `options` say.
    pub fn start_with(options: &Options) -> Self {
        assert!(
            Path::new("/usr/bin/docker-registry").exists(),
            "these tests need Debian's docker-registry (scripts/test installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if options.tls {
            certificates(dir.path(), "registry");
            config.push_str(&format!(
                "  tls:\n    certificate: {0}/registry.pem\n    key: {0}/registry.key\n",
                dir.path().display()
            ));
        }
        if let Some((user, password)) = &options.basic {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd (apache2-utils) failed");
            std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}/htpasswd\n",
                dir.path().display()
            ));
        }
        if let Some((realm, cert, _)) = &options.token {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: berth-test\n    issuer: berth-test-issuer\n    rootcertbundle: {}\n",
                cert.display()
            ));
        }
        let path = dir.path().join("config.yml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(Instant::now() < deadline, "the registry did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let creds = options
            .basic
            .as_ref()
            .map(|(u, p)| format!("{u}:{p}"))
            .or_else(|| options.token.as_ref().map(|(_, _, c)| c.clone()));
        Registry {
            child,
            host,
            creds,
            dir,
        }
    }

    /// The CA certificate a TLS registry's certificate is signed by.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One layer of a test image: its entries written by a closure.
pub type LayerFn = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;

/// A GNU header owned by root with a fixed mtime.
pub fn header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// Adds a regular file to a layer.
pub fn file(t: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = header();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_entry_type(tar::EntryType::Regular);
    t.append_data(&mut h, path, data).unwrap();
}

/// Adds a directory, link or other header-only entry to a layer.
pub fn entry(t: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, link: Option<&str>) {
    let mut h = header();
    h.set_size(0);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o777
    });
    h.set_entry_type(kind);
    match link {
        Some(l) => t.append_link(&mut h, path, l).unwrap(),
        None => t.append_data(&mut h, path, std::io::empty()).unwrap(),
    }
}

/// A layer's uncompressed tar.
pub fn tar_of(layer: &LayerFn) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    layer(&mut t);
    t.into_inner().unwrap()
}

/// gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// How a test layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// gzip, as almost every image.
    Gzip,
    /// zstd.
    Zstd,
    /// An uncompressed tar.
    Plain,
}

/// An OCI layout in a temporary directory, holding one image.
pub struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    /// Builds an image of `layers` (gzip), with `diff_ids` overriding the
    /// true ones when given (to make a lying config).
    pub fn new(layers: &[LayerFn], diff_ids: Option<Vec<String>>) -> Self {
        let gzipped = vec![Packing::Gzip; layers.len()];
        Self::packed(layers, &gzipped, diff_ids)
    }

    /// Builds an image of `layers`, each compressed as `packing` says.
    pub fn packed(layers: &[LayerFn], packing: &[Packing], diff_ids: Option<Vec<String>>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let d = digest(bytes);
            std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
            (d, bytes.len())
        };
        let mut descs = Vec::new();
        let mut diffs = Vec::new();
        for (layer, packing) in layers.iter().zip(packing) {
            let raw = tar_of(layer);
            diffs.push(digest(&raw));
            let (blob, media_type) = match packing {
                Packing::Gzip => (gzip(&raw), "application/vnd.oci.image.layer.v1.tar+gzip"),
                Packing::Zstd => (
                    ruzstd::encoding::compress_to_vec(
                        &raw[..],
                        ruzstd::encoding::CompressionLevel::Fastest,
                    ),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
                Packing::Plain => (raw, "application/vnd.oci.image.layer.v1.tar"),
            };
            let (d, size) = put(&blob);
            descs.push(serde_json::json!({"mediaType": media_type, "digest": d, "size": size}));
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids.unwrap_or(diffs)}
        });
        let (cd, cs) = put(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": descs
        });
        let (md, ms) = put(manifest.to_string().as_bytes());
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "img"}
        }]});
        std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Layout { dir }
    }

    /// Copies the image to `registry` as `name` with skopeo.
    pub fn push(&self, registry: &Registry, name: &str) {
        let mut command = Command::new("skopeo");
        command.args(["copy", "--preserve-digests", "--dest-tls-verify=false"]);
        if let Some(creds) = &registry.creds {
            command.arg(format!("--dest-creds={creds}"));
        }
        let out = command
            .arg(format!("oci:{}:img", self.dir.path().display()))
            .arg(format!("docker://{}/{name}", registry.host))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The layout's directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// The busybox base layer: /bin/busybox and a few applets, /etc, /tmp.
pub fn busybox_layer() -> LayerFn {
    Box::new(|t| {
        for d in ["bin", "etc", "tmp", "proc", "dev", "sys"] {
            entry(t, d, tar::EntryType::Directory, None);
        }
        let busybox = std::fs::read("/usr/bin/busybox").unwrap();
        file(t, "bin/busybox", &busybox, 0o755);
        for applet in ["sh", "cat", "ls", "echo", "stat", "test", "["] {
            entry(
                t,
                &format!("bin/{applet}"),
                tar::EntryType::Symlink,
                Some("busybox"),
            );
        }
        file(t, "etc/gone", b"old\n", 0o644);
        file(t, "etc/kept", b"kept\n", 0o644);
    })
}

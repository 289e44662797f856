//! From a container record and its image's config to the OCI runtime
//! spec the runtime reads: process (entrypoint + command, env, user,
//! working directory, terminal), mounts (binds, volumes, the container's
//! `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`), resources, and
//! Docker's default capability set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};

use super::config::{HostConfig, Record};
use super::EngineError;

/// Every capability, by the name `--cap-add` takes (without `CAP_`).
const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability `name` names (`chown`, `CHOWN` or `CAP_CHOWN`).
fn capability(name: &str) -> Result<Capability, EngineError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    serde_json::from_value(serde_json::Value::String(full))
        .map_err(|_| EngineError::Invalid(format!("unknown capability: {name:?}")))
}

/// The capabilities after `--cap-add` and `--cap-drop`, as dockerd works
/// them out: with `--cap-add ALL`, every one but those dropped; with
/// `--cap-drop ALL`, only those added; else Docker's default set, less
/// what is dropped, plus what is added.
pub fn capabilities(
    host: &HostConfig,
) -> Result<std::collections::HashSet<Capability>, EngineError> {
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL") || c.eq_ignore_ascii_case("CAP_ALL");
    let named = |list: &Option<Vec<String>>| -> Result<Vec<Capability>, EngineError> {
        list.iter()
            .flatten()
            .filter(|c| !is_all(c))
            .map(|c| capability(c))
            .collect()
    };
    let (adds, drops) = (named(&host.cap_add)?, named(&host.cap_drop)?);
    let base: Vec<Capability> = if host.cap_add.iter().flatten().any(is_all) {
        // Those this runtime's oci-spec knows.
        ALL_CAPABILITIES
            .iter()
            .filter_map(|c| capability(c).ok())
            .collect()
    } else if host.cap_drop.iter().flatten().any(is_all) {
        Vec::new()
    } else {
        CAPABILITIES.to_vec()
    };
    Ok(base
        .into_iter()
        .filter(|c| !drops.contains(c))
        .chain(adds)
        .collect())
}

/// Whether `--security-opt` asks for no new privileges; other options
/// than those this engine has nothing to do with are refused.
fn no_new_privileges(host: &HostConfig) -> Result<bool, EngineError> {
    let mut set = false;
    for opt in host.security_opt.iter().flatten() {
        let (key, value) = opt
            .split_once(['=', ':'])
            .map_or((opt.as_str(), "true"), |(k, v)| (k, v));
        match key {
            "no-new-privileges" => {
                set = value.parse::<bool>().map_err(|_| {
                    EngineError::Invalid(format!("invalid --security-opt {opt:?}: true or false"))
                })?
            }
            // No LSM confinement or seccomp filter is applied here; asking
            // for none is asking for what is.
            "seccomp" | "apparmor" | "label" if value == "unconfined" || value == "disable" => {}
            _ => {
                return Err(EngineError::Invalid(format!(
                    "--security-opt {opt:?} is not supported by this engine"
                )))
            }
        }
    }
    Ok(set)
}

/// `--ulimit`s as the spec's rlimits.
fn rlimits(host: &HostConfig) -> Result<Vec<oci_spec::runtime::PosixRlimit>, EngineError> {
    let mut out = Vec::new();
    for u in host.ulimits.iter().flatten() {
        let typ: oci_spec::runtime::PosixRlimitType = serde_json::from_value(
            serde_json::Value::String(format!("RLIMIT_{}", u.name.to_ascii_uppercase())),
        )
        .map_err(|_| EngineError::Invalid(format!("invalid ulimit type: {}", u.name)))?;
        // -1 is unlimited, as with dockerd.
        let limit = |v: i64| {
            if v == -1 {
                Ok(u64::MAX)
            } else {
                u64::try_from(v)
            }
        };
        let (Ok(soft), Ok(hard)) = (limit(u.soft), limit(u.hard)) else {
            return Err(EngineError::Invalid(format!(
                "invalid ulimit {}: limits must be -1 (unlimited) or more",
                u.name
            )));
        };
        if soft > hard {
            return Err(EngineError::Invalid(format!(
                "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            )));
        }
        out.push(
            oci_spec::runtime::PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build()
                .map_err(invalid)?,
        );
    }
    Ok(out)
}

/// `--sysctl`s, which must be of the container's own namespaces (those
/// of its network only when it has one of its own).
fn sysctls(host: &HostConfig) -> Result<std::collections::HashMap<String, String>, EngineError> {
    let mut out = std::collections::HashMap::new();
    for (key, value) in host.sysctls.iter().flatten() {
        let ipc = [
            "kernel.msgmax",
            "kernel.msgmnb",
            "kernel.msgmni",
            "kernel.sem",
            "kernel.shmall",
            "kernel.shmmax",
            "kernel.shmmni",
            "kernel.shm_rmid_forced",
        ]
        .contains(&key.as_str())
            || key.starts_with("fs.mqueue.");
        let net = key.starts_with("net.");
        if net && host.network_mode == "host" {
            return Err(EngineError::Invalid(format!(
                "sysctl {key:?} is not allowed when using the host's network"
            )));
        }
        if !(ipc || net) || key.contains("..") || key.contains('/') {
            return Err(EngineError::Invalid(format!(
                "sysctl {key:?} is not allowed: only namespaced ones (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)"
            )));
        }
        out.insert(key.clone(), value.clone());
    }
    Ok(out)
}

/// Where an `--add-host` name points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAddress {
    /// An address.
    Ip(std::net::IpAddr),
    /// `host-gateway`: the container's gateway, which is this host.
    Gateway,
}

/// The `--add-host NAME:ADDRESS` entries.
pub fn extra_hosts(host: &HostConfig) -> Result<Vec<(String, HostAddress)>, EngineError> {
    host.extra_hosts
        .iter()
        .flatten()
        .map(|entry| {
            let invalid =
                || EngineError::Invalid(format!("invalid IP address in add-host: {entry:?}"));
            let (name, address) = entry.split_once([':', '=']).ok_or_else(invalid)?;
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(invalid());
            }
            let address = if address == "host-gateway" {
                HostAddress::Gateway
            } else {
                HostAddress::Ip(
                    address
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse()
                        .map_err(|_| invalid())?,
                )
            };
            Ok((name.to_owned(), address))
        })
        .collect()
}

/// `resolv` with `--dns`, `--dns-search` and `--dns-option` applied: each
/// replaces the lines of its kind. With a network `resolver` the
/// nameserver stays that resolver.
pub fn resolv_conf(resolv: &str, host: &HostConfig, resolver: bool) -> String {
    let given = |list: &Option<Vec<String>>| list.as_ref().filter(|l| !l.is_empty()).cloned();
    let servers = given(&host.dns).filter(|_| !resolver);
    let search = given(&host.dns_search);
    let options = given(&host.dns_options);
    let mut out: String = resolv
        .lines()
        .filter(|l| {
            !(servers.is_some() && l.starts_with("nameserver")
                || search.is_some() && (l.starts_with("search") || l.starts_with("domain"))
                || options.is_some() && l.starts_with("options"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for s in servers.iter().flatten() {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if let Some(search) = search.filter(|s| s.iter().any(|d| d != ".")) {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if let Some(options) = options {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// Checks at create what the spec is made of later: the options that do
/// not depend on the image.
pub fn check(host: &HostConfig) -> Result<(), EngineError> {
    if host.privileged {
        return Err(EngineError::Invalid(
            "privileged containers are not supported by this engine".into(),
        ));
    }
    if host
        .other
        .get("Devices")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|d| !d.is_empty())
    {
        return Err(EngineError::Invalid(
            "--device is not supported by this engine".into(),
        ));
    }
    capabilities(host)?;
    no_new_privileges(host)?;
    rlimits(host)?;
    sysctls(host)?;
    extra_hosts(host)?;
    for server in host.dns.iter().flatten() {
        server
            .parse::<std::net::IpAddr>()
            .map_err(|_| EngineError::Invalid(format!("{server} is not an ip address (--dns)")))?;
    }
    Ok(())
}

/// The PATH a container gets when neither it nor its image sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities Docker grants by default.
const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// A tmpfs the container asked for.
#[derive(Debug, Clone)]
pub struct Tmpfs {
    /// In the container.
    pub destination: String,
    /// Mount options (`size=…`, `mode=…`, `noexec`, …).
    pub options: Vec<String>,
}

/// A mount the engine adds: host path, container path, read-only.
#[derive(Debug, Clone)]
pub struct Bind {
    /// On the host.
    pub source: PathBuf,
    /// In the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The process's environment: the image's, then the container's (which
/// wins per variable), PATH if neither set it, HOSTNAME, TERM with a tty.
pub fn environment(image_env: &[String], record: &Record, hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |entry: &str| {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_owned(),
            None => env.push((key.to_owned(), value.to_owned())),
        }
    };
    set(&format!("PATH={DEFAULT_PATH}"));
    set(&format!("HOSTNAME={hostname}"));
    for e in image_env {
        set(e);
    }
    if record.config.tty {
        set("TERM=xterm");
    }
    for e in record.config.env.iter().flatten() {
        set(e);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`) against the
/// rootfs's `/etc/passwd` and `/etc/group`: (uid, gid, additional gids).
pub fn resolve_user(
    rootfs: &Path,
    user: &str,
    group_add: &[String],
) -> Result<(u32, u32, Vec<u32>), EngineError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let groups = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let entries = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| l.split(':').map(str::to_owned).collect())
            .collect()
    };
    let passwd = entries(&passwd);
    let groups = entries(&groups);
    let gid_of = |group: &str| -> Result<u32, EngineError> {
        match group.parse::<u32>() {
            Ok(g) => Ok(g),
            Err(_) => groups
                .iter()
                .find(|g| g.first().map(String::as_str) == Some(group))
                .and_then(|g| g.get(2))
                .and_then(|g| g.parse().ok())
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "unable to find group {group}: no matching entries in group file"
                    ))
                }),
        }
    };
    let (uid, mut gid, name) = if user_part.is_empty() {
        (0, 0, "root".to_owned())
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let found = passwd
            .iter()
            .find(|p| p.get(2).and_then(|u| u.parse::<u32>().ok()) == Some(uid));
        let gid = found
            .and_then(|p| p.get(3))
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let name = found.and_then(|p| p.first()).cloned().unwrap_or_default();
        (uid, gid, name)
    } else {
        let found = passwd
            .iter()
            .find(|p| p.first().map(String::as_str) == Some(user_part))
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "unable to find user {user_part}: no matching entries in passwd file"
                ))
            })?;
        let number = |i: usize| found.get(i).and_then(|v| v.parse::<u32>().ok());
        (
            number(2).unwrap_or(0),
            number(3).unwrap_or(0),
            user_part.to_owned(),
        )
    };
    if let Some(group) = group_part {
        gid = gid_of(group)?;
    }
    let mut additional: Vec<u32> = groups
        .iter()
        .filter(|g| {
            !name.is_empty()
                && g.get(3)
                    .is_some_and(|members| members.split(',').any(|m| m == name))
        })
        .filter_map(|g| g.get(2).and_then(|v| v.parse().ok()))
        .filter(|g| *g != gid)
        .collect();
    // `--group-add`, by number or by name.
    for group in group_add {
        let g = gid_of(group)?;
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    Ok((uid, gid, additional))
}

/// What the spec is built from besides the record.
pub struct Inputs<'a> {
    /// The mounted rootfs (for user lookup).
    pub rootfs: &'a Path,
    /// The image config's Env.
    pub image_env: &'a [String],
    /// The image config's WorkingDir.
    pub image_workdir: &'a str,
    /// The image config's User.
    pub image_user: &'a str,
    /// Mounts besides the defaults.
    pub binds: &'a [Bind],
    /// Tmpfs mounts.
    pub tmpfs: &'a [Tmpfs],
    /// The container's hostname.
    pub hostname: &'a str,
}

fn invalid(e: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(e.to_string())
}

/// The OCI spec for `record`.
pub fn build(record: &Record, inputs: &Inputs<'_>) -> Result<Spec, EngineError> {
    let config = &record.config;
    let user = if config.user.is_empty() {
        inputs.image_user
    } else {
        &config.user
    };
    let group_add = record.host_config.group_add.as_deref().unwrap_or_default();
    let (uid, gid, additional) = resolve_user(inputs.rootfs, user, group_add)?;
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !inputs.image_workdir.is_empty() {
        inputs.image_workdir.to_owned()
    } else {
        "/".to_owned()
    };
    let mut args = vec![record.path.clone()];
    args.extend(record.args.iter().cloned());
    let caps = capabilities(&record.host_config)?;
    let mut capabilities = oci_spec::runtime::LinuxCapabilities::default();
    capabilities
        .set_bounding(Some(caps.clone()))
        .set_effective(Some(caps.clone()))
        .set_permitted(Some(caps))
        .set_inheritable(None)
        .set_ambient(None);
    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .args(args)
        .env(environment(inputs.image_env, record, inputs.hostname))
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .additional_gids(additional)
                .build()
                .map_err(invalid)?,
        )
        .capabilities(capabilities)
        .no_new_privileges(no_new_privileges(&record.host_config)?)
        .build()
        .map_err(invalid)?;
    let limits = rlimits(&record.host_config)?;
    process.set_rlimits(if limits.is_empty() {
        None
    } else {
        Some(limits)
    });

    let mut mounts = oci_spec::runtime::get_default_mounts();
    let mut extra = Vec::new();
    for bind in inputs.binds {
        let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
        if bind.read_only {
            options.push("ro".into());
        }
        extra.push(
            MountBuilder::default()
                .destination(&bind.destination)
                .typ("bind")
                .source(&bind.source)
                .options(options)
                .build()
                .map_err(invalid)?,
        );
    }
    for t in inputs.tmpfs {
        extra.push(
            MountBuilder::default()
                .destination(&t.destination)
                .typ("tmpfs")
                .source("tmpfs")
                .options(t.options.clone())
                .build()
                .map_err(invalid)?,
        );
    }
    // Shallower first: a mount inside another lands on it, not under it.
    extra.sort_by_key(|m| m.destination().components().count());
    mounts.extend(extra);

    let mut resources = LinuxResourcesBuilder::default();
    let host = &record.host_config;
    if host.memory > 0 {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(host.memory)
                .build()
                .map_err(invalid)?,
        );
    }
    let (quota, period) = if host.nano_cpus > 0 {
        (Some(host.nano_cpus / 10_000), Some(100_000u64))
    } else if host.cpu_quota > 0 {
        (
            Some(host.cpu_quota),
            Some(if host.cpu_period > 0 {
                host.cpu_period as u64
            } else {
                100_000
            }),
        )
    } else {
        (None, None)
    };
    let mut cpu = LinuxCpuBuilder::default();
    if let (Some(q), Some(p)) = (quota, period) {
        cpu = cpu.quota(q).period(p);
    }
    if host.cpu_shares > 0 {
        cpu = cpu.shares(host.cpu_shares as u64);
    }
    resources = resources.cpu(cpu.build().map_err(invalid)?);
    if let Some(limit) = host.pids_limit.filter(|l| *l > 0) {
        resources = resources.pids(
            oci_spec::runtime::LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(invalid)?,
        );
    }

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()
    .map_err(invalid)?;
    let default_linux = oci_spec::runtime::Linux::default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(invalid)?)
        .masked_paths(default_linux.masked_paths().clone().unwrap_or_default())
        .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default())
        .sysctl(sysctls(host)?)
        .build()
        .map_err(invalid)?;

    let mut annotations = BTreeMap::new();
    annotations.insert("org.berth.container.name".to_owned(), record.name.clone());
    let mut spec = Spec::default();
    spec.set_process(Some(process))
        .set_hostname(Some(inputs.hostname.to_owned()))
        .set_root(Some(
            RootBuilder::default()
                .path("rootfs")
                .readonly(host.readonly_rootfs)
                .build()
                .map_err(invalid)?,
        ))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux))
        .set_annotations(Some(annotations.into_iter().collect()));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_against_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\nme:x:1000:1000::/home/me:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nusers:x:100:me\nme:x:1000:\n",
        )
        .unwrap();
        assert_eq!(resolve_user(dir.path(), "", &[]).unwrap(), (0, 0, vec![]));
        assert_eq!(
            resolve_user(dir.path(), "me", &[]).unwrap(),
            (1000, 1000, vec![100])
        );
        assert_eq!(
            resolve_user(dir.path(), "1000", &[]).unwrap(),
            (1000, 1000, vec![100])
        );
        assert_eq!(
            resolve_user(dir.path(), "4242", &[]).unwrap(),
            (4242, 0, vec![])
        );
        assert_eq!(
            resolve_user(dir.path(), "nobody:users", &[]).unwrap().1,
            100
        );
        assert_eq!(resolve_user(dir.path(), "me:77", &[]).unwrap().1, 77);
        assert!(resolve_user(dir.path(), "ghost", &[]).is_err());
        assert!(resolve_user(dir.path(), "me:ghosts", &[]).is_err());
        // --group-add, by name or number, once each.
        let add = ["users".to_owned(), "5".to_owned()];
        assert_eq!(
            resolve_user(dir.path(), "me", &add).unwrap(),
            (1000, 1000, vec![100, 5])
        );
        assert!(resolve_user(dir.path(), "", &["ghosts".to_owned()]).is_err());
    }

    #[test]
    fn capabilities_add_and_drop_as_dockerd_does() {
        let host = |add: &[&str], drop: &[&str]| HostConfig {
            cap_add: Some(add.iter().map(|s| (*s).to_owned()).collect()),
            cap_drop: Some(drop.iter().map(|s| (*s).to_owned()).collect()),
            ..HostConfig::default()
        };
        let caps = capabilities(&host(&["ALL"], &["NET_RAW"])).unwrap();
        assert!(caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::NetRaw));
        let caps = capabilities(&host(&["CAP_ALL"], &[])).unwrap();
        assert!(caps.contains(&Capability::SysAdmin));
        let caps = capabilities(&host(&["chown"], &["ALL"])).unwrap();
        assert_eq!(
            caps.into_iter().collect::<Vec<_>>(),
            vec![Capability::Chown]
        );
        let caps = capabilities(&host(&[], &["chown"])).unwrap();
        assert!(!caps.contains(&Capability::Chown) && caps.contains(&Capability::Kill));
        assert!(capabilities(&host(&["FLY"], &[])).is_err());
    }

    #[test]
    fn an_unlimited_ulimit_is_minus_one() {
        let host = |soft, hard| HostConfig {
            ulimits: Some(vec![crate::engine::config::Ulimit {
                name: "memlock".into(),
                soft,
                hard,
            }]),
            ..HostConfig::default()
        };
        let limits = rlimits(&host(-1, -1)).unwrap();
        assert_eq!((limits[0].soft(), limits[0].hard()), (u64::MAX, u64::MAX));
        assert!(rlimits(&host(-2, 10)).is_err());
    }
}

//! The guest's settings, given by the host on the kernel command line as
//! `berth.KEY=VALUE` words.

use std::net::Ipv4Addr;

/// What the host tells the guest at boot. Defaults fit QEMU's user network
/// (the guest at 10.0.2.15/24, the host's gateway at .2, its DNS at .3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `berth.hostname=`: the machine's name.
    pub hostname: String,
    /// `berth.ip=ADDRESS/PREFIX`: the first Ethernet link's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// `berth.gateway=`: the default route.
    pub gateway: Ipv4Addr,
    /// `berth.dns=` (repeatable): name servers.
    pub dns: Vec<Ipv4Addr>,
    /// `berth.disk=`: the data disk's serial (`-drive …,serial=`).
    pub disk_serial: String,
    /// `berth.insecure_registry=` (repeatable): registries reached over
    /// plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `berth.registry_mirror=` (repeatable): Docker Hub mirrors.
    pub registry_mirrors: Vec<String>,
    /// `berth.label=KEY=VALUE` (repeatable): the engine's labels.
    pub labels: Vec<String>,
    /// `berth.env=KEY=VALUE` (repeatable): the engine's environment
    /// (e.g. HTTP_PROXY).
    pub env: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hostname: "berth".to_owned(),
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns: Vec::new(),
            disk_serial: "berth-data".to_owned(),
            insecure_registries: Vec::new(),
            registry_mirrors: Vec::new(),
            labels: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl Settings {
    /// The settings on this kernel's command line; defaults where absent.
    pub fn from_proc() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }

    /// Reads `berth.*` words; others are the kernel's. A value that does not
    /// parse is logged and the default kept.
    pub fn parse(cmdline: &str) -> Self {
        let mut s = Settings::default();
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word
                .strip_prefix("berth.")
                .and_then(|kv| kv.split_once('='))
            else {
                continue;
            };
            let bad = || tracing::warn!("ignoring berth.{key}={value}: not valid");
            match key {
                "hostname" if valid_hostname(value) => s.hostname = value.to_owned(),
                "ip" => match value.split_once('/').map(|(a, p)| (a.parse(), p.parse())) {
                    Some((Ok(address), Ok(prefix))) if prefix <= 32 => {
                        s.address = address;
                        s.prefix = prefix;
                    }
                    _ => bad(),
                },
                "gateway" => match value.parse() {
                    Ok(gateway) => s.gateway = gateway,
                    Err(_) => bad(),
                },
                "dns" => match value.parse() {
                    Ok(dns) => s.dns.push(dns),
                    Err(_) => bad(),
                },
                "disk" if !value.is_empty() => s.disk_serial = value.to_owned(),
                "insecure_registry" if !value.is_empty() => {
                    s.insecure_registries.push(value.to_owned())
                }
                "registry_mirror" if !value.is_empty() => s.registry_mirrors.push(value.to_owned()),
                "label" if value.split_once('=').is_some_and(|(k, _)| !k.is_empty()) => {
                    s.labels.push(value.to_owned())
                }
                "env" => match value.split_once('=') {
                    Some((k, v)) if !k.is_empty() => s.env.push((k.to_owned(), v.to_owned())),
                    _ => bad(),
                },
                _ => bad(),
            }
        }
        if s.dns.is_empty() {
            s.dns.push(Ipv4Addr::new(10, 0, 2, 3));
        }
        s
    }
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_berth_words_and_keeps_defaults() {
        let s = Settings::parse(
            "console=ttyS0 berth.hostname=dev berth.ip=10.0.3.9/16 berth.dns=1.1.1.1 \
             berth.insecure_registry=10.0.2.2:5000 berth.insecure_registry=r:1 quiet \
             berth.label=tier=dev berth.env=HTTP_PROXY=http://10.0.2.2:3128",
        );
        assert_eq!(s.hostname, "dev");
        assert_eq!(s.address, Ipv4Addr::new(10, 0, 3, 9));
        assert_eq!(s.prefix, 16);
        assert_eq!(s.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(s.dns, vec![Ipv4Addr::new(1, 1, 1, 1)]);
        assert_eq!(s.insecure_registries, ["10.0.2.2:5000", "r:1"]);
        assert_eq!(s.labels, ["tier=dev"]);
        assert_eq!(
            s.env,
            [("HTTP_PROXY".to_owned(), "http://10.0.2.2:3128".to_owned())]
        );
    }

    #[test]
    fn bad_values_keep_the_default() {
        let s =
            Settings::parse("berth.hostname=a/b berth.ip=x/24 berth.ip=10.0.0.1/40 berth.gateway=");
        assert_eq!(s, Settings::parse(""));
        assert_eq!(s.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
    }
}

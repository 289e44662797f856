//! Addresses: IPv4 subnets, choosing one that nothing on the host uses,
//! and handing out the addresses in it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet, `address/prefix`, kept with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The subnet of `address` with `prefix` bits.
    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "a /{prefix} subnet is not usable for containers (use /8 to /30)"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix,
        })
    }

    /// The first address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// Whether `address` is in this subnet.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let shorter = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - shorter);
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// The gateway by convention: the first host address.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The broadcast address.
    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The lowest address in the subnet that is a host address and not in
    /// `taken`.
    pub fn free_address(&self, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.network) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| !taken.contains(a))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid subnet {s:?}: expected ADDRESS/PREFIX"))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("invalid subnet {s:?}: {address:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("invalid subnet {s:?}: bad prefix length"))?;
        let subnet = Subnet::new(address, prefix)?;
        if subnet.network != address {
            return Err(format!(
                "invalid subnet {s:?}: host bits are set (did you mean {subnet}?)"
            ));
        }
        Ok(subnet)
    }
}

/// Where networks are carved from when no subnet is asked for, in order:
/// dockerd's default pools (172.17–31.0.0/16, then 192.168.x.0/20).
pub fn default_pool() -> impl Iterator<Item = Subnet> {
    let sixteens = (17..=31u8).map(|b| Subnet {
        network: Ipv4Addr::new(172, b, 0, 0),
        prefix: 16,
    });
    let twenties = (0..16u8).map(|i| Subnet {
        network: Ipv4Addr::new(192, 168, i * 16, 0),
        prefix: 20,
    });
    sixteens.chain(twenties)
}

/// The subnets the host routes to (its own networks), from
/// `/proc/net/route`'s text.
pub fn host_routes(proc_net_route: &str) -> Vec<Subnet> {
    routes_by_link(proc_net_route)
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

/// As [`host_routes`], with the link each goes through.
pub fn routes_by_link(proc_net_route: &str) -> Vec<(String, Subnet)> {
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let destination = u32::from_str_radix(fields.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
            // The default route overlaps everything: it is not a network.
            if mask == 0 {
                return None;
            }
            // The kernel prints each network-order word as a native integer.
            let prefix = mask.count_ones() as u8;
            let destination = Ipv4Addr::from(destination.to_ne_bytes());
            let subnet = Subnet::new(destination, prefix.clamp(8, 30)).ok()?;
            Some(((*fields.first()?).to_owned(), subnet))
        })
        .collect()
}

/// The first subnet of `pool` that overlaps none of `used`.
pub fn choose(pool: impl Iterator<Item = Subnet>, used: &[Subnet]) -> Option<Subnet> {
    pool.into_iter()
        .find(|candidate| used.iter().all(|u| !candidate.overlaps(u)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_subnets() {
        let s: Subnet = "172.18.0.0/16".parse().unwrap();
        assert_eq!(s.first_host(), Ipv4Addr::new(172, 18, 0, 1));
        assert!(s.contains(Ipv4Addr::new(172, 18, 255, 3)));
        assert!(!s.contains(Ipv4Addr::new(172, 19, 0, 1)));
        for bad in [
            "172.18.0.1/16",
            "10.0.0.0",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/31",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hands_out_the_lowest_free_host_address() {
        let s: Subnet = "10.1.0.0/30".parse().unwrap();
        let mut taken = BTreeSet::new();
        taken.insert(s.first_host());
        assert_eq!(s.free_address(&taken), Some(Ipv4Addr::new(10, 1, 0, 2)));
        taken.insert(Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(s.free_address(&taken), None, "the broadcast is not a host");
    }

    #[test]
    fn avoids_the_host_routes() {
        let table =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t0000110A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     wlan\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let routes = host_routes(table);
        assert_eq!(
            routes,
            vec![
                "10.17.0.0/16".parse().unwrap(),
                "172.17.0.0/16".parse().unwrap()
            ]
        );
        assert_eq!(
            choose(default_pool(), &routes),
            Some("172.18.0.0/16".parse().unwrap())
        );
        let all: Vec<Subnet> = default_pool().collect();
        assert_eq!(choose(default_pool(), &all), None);
    }
}

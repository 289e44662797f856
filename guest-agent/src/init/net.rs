//! The guest's network: loopback, and the first Ethernet link with the
//! address, route and name servers the host gave (QEMU's user network by
//! default). Plain ioctls: two links and one route need no netlink.

use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::cmdline::Settings;

/// How long to wait for the Ethernet link to appear after its driver
/// loaded.
const LINK_WAIT: Duration = Duration::from_secs(5);

/// Brings up `lo` and the first Ethernet link, sets its address and the
/// default route, and writes `/etc/resolv.conf`.
pub fn configure(settings: &Settings) -> io::Result<()> {
    let socket = control_socket()?;
    set_up(&socket, "lo")?;
    write_resolv_conf(&settings.dns)?;
    let link = wait_for_ethernet()?;
    set_address(&socket, &link, settings.address, settings.prefix)?;
    set_up(&socket, &link)?;
    add_default_route(&socket, settings.gateway)?;
    tracing::info!(%link, address = %settings.address, prefix = settings.prefix, gateway = %settings.gateway, "network up");
    Ok(())
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let fd = unsafe {
        nix::libc::socket(
            nix::libc::AF_INET,
            nix::libc::SOCK_DGRAM | nix::libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The first link that is not loopback, waiting for its driver's probe.
fn wait_for_ethernet() -> io::Result<String> {
    let deadline = Instant::now() + LINK_WAIT;
    loop {
        let mut links: Vec<String> = fs::read_dir("/sys/class/net")?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo")
            .collect();
        links.sort();
        if let Some(link) = links.into_iter().next() {
            return Ok(link);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no network link appeared",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ifreq(name: &str) -> io::Result<nix::libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: nix::libc::ifreq = unsafe { MaybeUninit::zeroed().assume_init() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("link name {name} too long"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as nix::libc::c_char;
    }
    Ok(req)
}

fn sockaddr(address: Ipv4Addr) -> nix::libc::sockaddr {
    let sin = nix::libc::sockaddr_in {
        sin_family: nix::libc::AF_INET as nix::libc::sa_family_t,
        sin_port: 0,
        sin_addr: nix::libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads
    // the sockaddr as the family says.
    unsafe { std::mem::transmute::<nix::libc::sockaddr_in, nix::libc::sockaddr>(sin) }
}

fn ioctl(
    socket: &OwnedFd,
    request: u64,
    arg: *mut nix::libc::c_void,
    what: &str,
) -> io::Result<()> {
    // The request's C type differs between libcs (glibc: unsigned long,
    // musl: int); the socket ioctl numbers fit either.
    #[allow(clippy::unnecessary_cast)]
    let request = request as nix::libc::Ioctl;
    // SAFETY: every caller passes a request with the argument type the
    // kernel expects for it (ifreq or rtentry), valid for the call.
    let rc = unsafe { nix::libc::ioctl(socket.as_raw_fd(), request, arg) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn set_up(socket: &OwnedFd, link: &str) -> io::Result<()> {
    let mut req = ifreq(link)?;
    ioctl(
        socket,
        nix::libc::SIOCGIFFLAGS,
        (&mut req as *mut nix::libc::ifreq).cast(),
        &format!("read the flags of {link}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (nix::libc::IFF_UP | nix::libc::IFF_RUNNING) as i16;
    }
    ioctl(
        socket,
        nix::libc::SIOCSIFFLAGS,
        (&mut req as *mut nix::libc::ifreq).cast(),
        &format!("bring {link} up"),
    )
}

fn set_address(socket: &OwnedFd, link: &str, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let mut req = ifreq(link)?;
    req.ifr_ifru.ifru_addr = sockaddr(address);
    ioctl(
        socket,
        nix::libc::SIOCSIFADDR,
        (&mut req as *mut nix::libc::ifreq).cast(),
        &format!("set the address of {link}"),
    )?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let mut req = ifreq(link)?;
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(
        socket,
        nix::libc::SIOCSIFNETMASK,
        (&mut req as *mut nix::libc::ifreq).cast(),
        &format!("set the netmask of {link}"),
    )
}

fn add_default_route(socket: &OwnedFd, gateway: Ipv4Addr) -> io::Result<()> {
    // SAFETY: rtentry is plain old data; all zeroes is a valid value.
    let mut route: nix::libc::rtentry = unsafe { MaybeUninit::zeroed().assume_init() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(gateway);
    route.rt_flags = nix::libc::RTF_UP | nix::libc::RTF_GATEWAY;
    match ioctl(
        socket,
        nix::libc::SIOCADDRT,
        (&mut route as *mut nix::libc::rtentry).cast(),
        "add the default route",
    ) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn write_resolv_conf(dns: &[Ipv4Addr]) -> io::Result<()> {
    let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    fs::create_dir_all("/etc")?;
    fs::write("/etc/resolv.conf", text)
}

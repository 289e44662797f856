//! Container networking through the stock `docker` CLI: bridge networks,
//! names, isolation, published ports (TCP and UDP), `-P`, `none`, and
//! nothing left behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::docker::Engine;
use berth_tests::require_root;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on `address`, retried until `deadline` (a server in a
/// container takes a moment to listen); the body.
fn http_get(address: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(address)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        match got {
            Ok(answer) if answer.contains("\r\n\r\n") => {
                return answer.split_once("\r\n\r\n").unwrap().1.to_owned()
            }
            other => assert!(
                Instant::now() < deadline,
                "no HTTP answer from {address}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// This binary's tests run one at a time: they count the host's links.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn links() -> String {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn containers_on_a_network_find_each_other_by_name_and_not_across_networks() {
    require_root();
    let _one_at_a_time = serial();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&["network", "create", "--subnet", "10.214.1.0/24", "front"]);
    d.ok(&["network", "create", "--subnet", "10.214.2.0/24", "back"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "front",
        "--network-alias",
        "www",
        &image,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    // By name and by alias, from the same network.
    let out = d.ok(&[
        "run", "--rm", "--network", "front", &image, "sh", "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O- http://web/hostname && break; sleep 1; done; wget -q -O- http://www/hostname",
    ]);
    let hostname = d.ok(&["inspect", "-f", "{{.Config.Hostname}}", "web"]);
    assert_eq!(
        out,
        format!("{0}{0}", hostname.trim_end().to_owned() + "\n")
    );
    let web_ip = d.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.front.IPAddress}}",
        "web",
    ]);
    let web_ip = web_ip.trim();
    assert!(web_ip.starts_with("10.214.1."), "{web_ip}");
    // The network knows its member.
    let members = d.ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .Containers}}{{.Name}} {{.IPv4Address}}{{end}}",
        "front",
    ]);
    assert_eq!(members.trim(), format!("web {web_ip}/24"));

    // From another network: the name does not resolve, and the address
    // is not reachable.
    let out = d.run(&[
        "run",
        "--rm",
        "--network",
        "back",
        &image,
        "nslookup",
        "web",
    ]);
    assert!(
        !out.status.success(),
        "web resolved across networks: {}",
        text(&out)
    );
    let out = d.run(&[
        "run",
        "--rm",
        "--network",
        "back",
        &image,
        "wget",
        "-T",
        "3",
        "-q",
        "-O-",
        &format!("http://{web_ip}/hostname"),
    ]);
    assert!(
        !out.status.success(),
        "reached across networks: {}",
        text(&out)
    );
    // The default network has no names, as with dockerd.
    let out = d.run(&["run", "--rm", &image, "nslookup", "web"]);
    assert!(!out.status.success(), "{}", text(&out));

    // A network in use cannot go; the built-in ones never.
    let out = d.run(&["network", "rm", "front"]);
    assert!(
        text(&out).contains("has active endpoints"),
        "{}",
        text(&out)
    );
    let out = d.run(&["network", "rm", "bridge"]);
    assert!(text(&out).contains("pre-defined network"), "{}", text(&out));
    let out = d.run(&["network", "create", "front"]);
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    let out = d.run(&["network", "create", "--subnet", "10.214.1.128/25", "clash"]);
    assert!(text(&out).contains("overlaps"), "{}", text(&out));
    let out = d.run(&["run", "--rm", "--network", "nosuch", &image, "true"]);
    assert!(
        text(&out).contains("network nosuch not found"),
        "{}",
        text(&out)
    );

    // connect and disconnect a running container.
    d.ok(&["run", "-d", "--name", "client", &image, "sleep", "300"]);
    d.ok(&["network", "connect", "--alias", "cli", "front", "client"]);
    let out = d.ok(&["exec", "web", "nslookup", "cli"]);
    assert!(out.contains("10.214.1."), "{out}");
    let addrs = d.ok(&["exec", "client", "ip", "-o", "-4", "addr"]);
    assert!(
        addrs.contains("eth1") && addrs.contains("10.214.1."),
        "{addrs}"
    );
    d.ok(&["network", "disconnect", "front", "client"]);
    let addrs = d.ok(&["exec", "client", "ip", "-o", "-4", "addr"]);
    assert!(!addrs.contains("eth1"), "{addrs}");

    d.ok(&["rm", "-f", "web", "client"]);
    d.ok(&["network", "rm", "front", "back"]);
    let names = d.ok(&["network", "ls", "--format", "{{.Name}}"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, ["bridge", "host", "none"]);
}

#[test]
fn published_ports_answer_from_the_host() {
    require_root();
    let _one_at_a_time = serial();
    let d = Engine::start();
    let image = d.busybox();
    let (tcp, local_only) = (free_port(), free_port());
    d.ok(&[
        "run",
        "-d",
        "--name",
        "pub",
        "-p",
        &format!("{tcp}:80"),
        "-p",
        &format!("127.0.0.1:{local_only}:81"),
        "--expose",
        "7000",
        "-P",
        &image,
        "sh",
        "-c",
        "httpd -p 80 -h /etc; httpd -p 81 -h /etc; httpd -p 7000 -h /etc; sleep 300",
    ]);
    let hostname = d.ok(&["inspect", "-f", "{{.Config.Hostname}}", "pub"]);
    assert_eq!(http_get(&format!("127.0.0.1:{tcp}"), "/hostname"), hostname);
    assert_eq!(
        http_get(&format!("127.0.0.1:{local_only}"), "/hostname"),
        hostname
    );
    // -P: a free port for the exposed one, as `docker port` says.
    let ports = d.ok(&["port", "pub"]);
    assert!(
        ports.contains(&format!("80/tcp -> 0.0.0.0:{tcp}")),
        "{ports}"
    );
    assert!(
        ports.contains(&format!("81/tcp -> 127.0.0.1:{local_only}")),
        "{ports}"
    );
    let seven = d.ok(&["port", "pub", "7000"]);
    let chosen: u16 = seven.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert!(chosen > 0);
    assert_eq!(
        http_get(&format!("127.0.0.1:{chosen}"), "/hostname"),
        hostname
    );
    let ps = d.ok(&["ps", "--format", "{{.Ports}}"]);
    assert!(ps.contains(&format!("0.0.0.0:{tcp}->80/tcp")), "{ps}");

    // A port in use: a clear error, and the container does not run.
    let out = d.run(&[
        "run",
        "-d",
        "--name",
        "twice",
        "-p",
        &format!("{tcp}:80"),
        &image,
        "sleep",
        "5",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("Bind for 0.0.0.0:{tcp} failed")),
        "{}",
        text(&out)
    );

    // The agent restarts: the container runs on and its port answers again.
    let mut d = d;
    d.restart_agent();
    assert_eq!(http_get(&format!("127.0.0.1:{tcp}"), "/hostname"), hostname);

    // Stopped: the port is closed.
    d.ok(&["stop", "-t", "1", "pub"]);
    assert!(TcpStream::connect(format!("127.0.0.1:{tcp}")).is_err());
}

#[test]
fn a_udp_port_round_trips() {
    require_root();
    let _one_at_a_time = serial();
    let d = Engine::start();
    let image = d.busybox();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // busybox has no UDP server: the host's python3 does the echo, run in
    // the container from the host's /usr (read-only).
    d.ok(&[
        "run", "-d", "--name", "echo", "-p", &format!("127.0.0.1:{port}:9000/udp"),
        "-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/usr/lib64:/lib64:ro",
        &image, "/usr/bin/python3", "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',9000))\nwhile True:\n d,a=s.recvfrom(2048)\n s.sendto(d[::-1],a)",
    ]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0; 64];
    loop {
        socket.send_to(b"berth-udp", ("127.0.0.1", port)).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"pdu-htreb");
            break;
        }
        assert!(Instant::now() < deadline, "no UDP answer\n{}", d.log_tail());
    }
    assert_eq!(
        d.ok(&["port", "echo"]).trim(),
        format!("9000/udp -> 127.0.0.1:{port}")
    );
}

#[test]
fn none_has_only_loopback_and_cycles_leave_nothing_behind() {
    require_root();
    let _one_at_a_time = serial();
    let d = Engine::start();
    let image = d.busybox();
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "ip",
        "-o",
        "link",
    ]);
    let names: Vec<&str> = out
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim())
        .collect();
    assert_eq!(names, ["lo"], "{out}");
    assert!(out.contains("LOOPBACK,UP"), "loopback is down: {out}");
    let out = d.ok(&["run", "--rm", &image, "ip", "-o", "-4", "addr"]);
    assert!(out.contains("eth0") && out.contains("10.213."), "{out}");

    let bridge = d.ok(&[
        "network",
        "inspect",
        "-f",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
        "bridge",
    ]);
    let bridge = bridge.trim().to_owned();
    let table = format!(
        "berth_{}",
        &d.ok(&["network", "inspect", "-f", "{{.Id}}", "bridge"])[..12]
    );
    let before = links();
    let port = free_port().to_string();
    for i in 0..50 {
        let out = d.run(&["run", "--rm", "-p", &format!("{port}:80"), &image, "true"]);
        assert!(
            out.status.success(),
            "cycle {i}: {}\n{}",
            text(&out),
            d.log_tail()
        );
    }
    // Nothing of it is left: no link, no bridge, no rule, no namespace, no
    // listener.
    let after = links();
    assert!(!after.contains(&bridge), "bridge {bridge} left:\n{after}");
    assert!(!after.contains(": berth-"), "veth left:\n{after}");
    assert_eq!(
        before.lines().count(),
        after.lines().count(),
        "links before:\n{before}\nafter:\n{after}"
    );
    let rules = Command::new("nft")
        .args(["list", "table", "ip", &table])
        .output()
        .unwrap();
    assert!(
        !rules.status.success(),
        "table {table} left:\n{}",
        text(&rules)
    );
    let netns = std::fs::read_dir(d.root.path().join("state/netns"))
        .unwrap()
        .count();
    assert_eq!(netns, 0, "network namespaces left");
    assert!(TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
}

/// A DNS server for one test: answers every `A` question with `address`,
/// anything else with no answer, until the process ends.
fn answering_dns_server(at: &str, address: [u8; 4]) {
    let socket = UdpSocket::bind(at).unwrap_or_else(|e| panic!("bind {at}: {e}"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let query = &buf[..n];
            if n < 12 {
                continue;
            }
            // The question: labels up to the root, then type and class.
            let mut end = 12;
            while end < n && query[end] != 0 {
                end += 1 + usize::from(query[end]);
            }
            let end = end + 5;
            if end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[end - 4], query[end - 3]]);
            let mut reply = query[..end].to_vec();
            reply[2] = 0x81; // a response, recursion desired
            reply[3] = 0x80; // recursion available
            reply[6..12].copy_from_slice(&[0, u8::from(qtype == 1), 0, 0, 0, 0]);
            if qtype == 1 {
                reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                reply.extend_from_slice(&address);
            }
            let _ = socket.send_to(&reply, from);
        }
    });
}

#[test]
fn a_containers_own_dns_servers_answer_for_it_on_a_user_network() {
    require_root();
    let _one_at_a_time = serial();
    // A server of the test's own on a loopback address of this host, which
    // the network's resolver (on the host's side) can reach.
    answering_dns_server("127.53.0.9:53", [10, 1, 2, 3]);
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&["network", "create", "--subnet", "10.214.9.0/24", "named"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "peer",
        "--network",
        "named",
        &image,
        "sleep",
        "300",
    ]);
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "named",
        "--dns",
        "127.53.0.9",
        &image,
        "sh",
        "-c",
        "cat /etc/resolv.conf; nslookup probe.example; nslookup peer",
    ]);
    // The network's resolver stays the container's server; it relays to
    // the container's own, and still answers for the network's members.
    assert!(out.contains("nameserver 10.214.9.1"), "{out}");
    assert!(!out.contains("nameserver 127.53.0.9"), "{out}");
    assert!(out.contains("Address: 10.1.2.3"), "{out}");
    assert!(out.contains("10.214.9."), "{out}");
    // Without --dns, the same question goes to the host's servers instead.
    let out = d.run(&[
        "run",
        "--rm",
        "--network",
        "named",
        &image,
        "nslookup",
        "probe.example",
    ]);
    assert!(!text(&out).contains("10.1.2.3"), "{}", text(&out));
    d.ok(&["rm", "-f", "peer"]);
    d.ok(&["network", "rm", "named"]);
}

#[test]
fn a_container_on_the_hosts_network_gets_the_hosts_names_and_its_own_dns() {
    require_root();
    let d = Engine::start();
    let image = d.busybox();
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--dns",
        "9.9.9.9",
        "--add-host",
        "db.local:10.9.8.7",
        "--add-host",
        "gw.local:host-gateway",
        &image,
        "sh",
        "-c",
        "hostname; cat /etc/resolv.conf /etc/hosts",
    ]);
    // host-gateway is the default network's gateway, as docker0's address
    // is dockerd's, and that network is up so that it is this host's.
    let gateway = d.ok(&[
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{(index .IPAM.Config 0).Gateway}}",
    ]);
    let gateway = gateway.trim();
    assert!(
        out.contains(&format!("{gateway}\tgw.local")),
        "{gateway}: {out}"
    );
    let addresses = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    assert!(
        text(&addresses).contains(&format!("inet {gateway}/")),
        "{gateway} is not on this host: {}",
        text(&addresses)
    );
    let host = nix::unistd::gethostname().unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), host.to_str(), "{out}");
    assert!(out.lines().any(|l| l == "nameserver 9.9.9.9"), "{out}");
    assert_eq!(out.matches("nameserver").count(), 1, "{out}");
    assert!(out.contains("10.9.8.7\tdb.local"), "{out}");
    let own_hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    let first = own_hosts.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert!(out.lines().any(|l| l == first), "{out}");
}

/// A bridge of no one's on this host holding `address/prefix`, removed on drop:
/// what another agent's bridge or a VPN looks like to ours.
struct Squatter(&'static str);

impl Squatter {
    fn new(name: &'static str, cidr: &str) -> Self {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", text(&out));
        };
        let _ = Command::new("ip").args(["link", "del", name]).output();
        ip(&["link", "add", name, "type", "bridge"]);
        let squatter = Squatter(name);
        ip(&["addr", "add", cidr, "dev", name]);
        ip(&["link", "set", name, "up"]);
        squatter
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

#[test]
fn a_subnet_chosen_here_moves_when_the_host_took_it_and_a_given_one_does_not() {
    require_root();
    let _one_at_a_time = serial();
    let d = Engine::start();
    let image = d.busybox();
    d.ok(&["network", "create", "chosen"]);
    let subnet = |n: &str| {
        d.ok(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            n,
        ])
        .trim()
        .to_owned()
    };
    let before = subnet("chosen");
    let (net, prefix) = before.split_once('/').unwrap();
    let first = {
        let mut o: Vec<u8> = net.split('.').map(|p| p.parse().unwrap()).collect();
        o[3] = 1;
        format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
    };
    // Something else on this host takes the subnet before the network is up.
    let squatter = Squatter::new("berthsq0", &format!("{first}/{prefix}"));
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "chosen",
        &image,
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    let after = subnet("chosen");
    assert_ne!(after, before, "{out}");
    let (moved, _) = after.split_once('/').unwrap();
    let stem = moved
        .rsplit_once('.')
        .unwrap()
        .0
        .rsplit_once('.')
        .unwrap()
        .0;
    assert!(out.contains(&format!(" {stem}.")), "{out} not in {after}");
    drop(squatter);

    // A subnet the user gave is theirs: refused with the reason, not moved.
    d.ok(&["network", "create", "--subnet", "10.214.11.0/24", "given"]);
    let _squatter = Squatter::new("berthsq1", "10.214.11.1/24");
    let out = d.run(&["run", "--rm", "--network", "given", &image, "true"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("overlaps"), "{}", text(&out));
    assert_eq!(subnet("given"), "10.214.11.0/24");
    d.ok(&["network", "rm", "chosen", "given"]);
}

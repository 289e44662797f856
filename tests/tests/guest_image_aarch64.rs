//! The aarch64 guest image (the path to Apple Silicon) boots under
//! `qemu-system-aarch64` with TCG on any host, and its agent answers over
//! the virtio-serial link: a ping, then `uname -m` through `Exec`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::link::{self, SerialConnector};
use berth_proto::pb::agent_client::AgentClient;
use berth_proto::pb::exec_input::Kind as In;
use berth_proto::pb::exec_output::Kind as Out;
use berth_proto::pb::{ExecInput, ExecStart, PingRequest};
use berth_tests::bin;

/// Emulating another architecture is slow: this covers a loaded CI host.
const BOOT_DEADLINE: Duration = Duration::from_secs(240);

fn image() -> PathBuf {
    let dir = bin("berth")
        .parent()
        .unwrap()
        .join("../guest-image/aarch64");
    assert!(
        dir.join("image.json").is_file(),
        "no aarch64 guest image at {}: run scripts/build-guest-image aarch64 (scripts/test does)",
        dir.display()
    );
    dir
}

struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_aarch64_image_boots_and_its_agent_answers() {
    let image = image();
    berth_guest_image::Manifest::load_verified(&image).unwrap();
    let work = tempfile::tempdir().unwrap();
    let link_socket = work.path().join("link.sock");
    let console = work.path().join("console.log");
    let _vm = Vm(Command::new("qemu-system-aarch64")
        .args([
            "-machine", "virt", "-cpu", "max", "-accel", "tcg", "-m", "768M", "-smp", "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join(berth_guest_image::INITRAMFS))
        .args([
            "-append",
            "console=ttyAMA0 loglevel=3 panic=-1 berth.hostname=arm",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-device", "virtio-serial-pci", "-chardev"])
        .arg(format!(
            "socket,id=link,path={},server=on,wait=off",
            link_socket.display()
        ))
        .args([
            "-device",
            "virtserialport,chardev=link,name=org.berth.agent.0",
        ])
        .args([
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-aarch64 (Debian: qemu-system-arm) runs"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + BOOT_DEADLINE;
        while !link_socket.exists() {
            assert!(Instant::now() < deadline, "QEMU made no link socket");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let channel = link::held_channel(SerialConnector::new(link_socket.clone()).unwrap());
        let mut client = AgentClient::new(channel);
        loop {
            let ping = tokio::time::timeout(Duration::from_secs(5), client.ping(PingRequest {}));
            if let Ok(Ok(answer)) = ping.await {
                assert_eq!(answer.into_inner().protocol, berth_proto::PROTOCOL_VERSION);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not answer; console:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(ExecInput {
            kind: Some(In::Start(ExecStart {
                argv: vec!["uname".into(), "-m".into()],
                terminal: None,
                env: vec![],
            })),
        })
        .await
        .unwrap();
        let mut output = client
            .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let (mut stdout, mut code) = (Vec::new(), None);
        while let Some(frame) = output.message().await.unwrap() {
            match frame.kind {
                Some(Out::Stdout(data)) => stdout.extend(data),
                Some(Out::ExitCode(c)) => code = Some(c),
                _ => {}
            }
        }
        drop(tx);
        assert_eq!(code, Some(0));
        assert_eq!(String::from_utf8_lossy(&stdout), "aarch64\n");
    });
}

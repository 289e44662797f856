//! `moto_server` (PyPI `moto[server]`) on a free loopback port as the EC2
//! endpoint, and boto3 (which moto brings) to look at what a test made
//! there: a client this project did not write.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The venv `scripts/test` installs moto into, else what is on PATH.
fn venv_bin(name: &str) -> PathBuf {
    let venv = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/moto-venv/bin"
    ))
    .join(name);
    if venv.is_file() {
        return venv;
    }
    PathBuf::from(name)
}

/// A moto server, killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto; with `free_actions`, it checks credentials and
    /// signatures (IAM) once that many calls have been made.
    pub fn start(free_actions: Option<u32>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(venv_bin("moto_server"));
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(n) = free_actions {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = command
            .spawn()
            .expect("moto_server (pip install 'moto[server]')");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs `code` with boto3 clients `ec2` and `iam` on this server (keys
    /// `key`/`secret`); the value it leaves in `out`, as JSON.
    pub fn boto(&self, key: &str, secret: &str, code: &str) -> serde_json::Value {
        let script = format!(
            "import boto3, json\n\
             kw = dict(region_name='us-east-1', endpoint_url='{}', aws_access_key_id='{key}', aws_secret_access_key='{secret}')\n\
             ec2 = boto3.client('ec2', **kw)\n\
             iam = boto3.client('iam', **kw)\n\
             out = None\n\
             {code}\n\
             print(json.dumps(out, default=str))\n",
            self.endpoint
        );
        let out = Command::new(venv_bin("python3"))
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

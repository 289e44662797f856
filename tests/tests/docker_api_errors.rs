//! Bad input to the Docker API, sent raw over the socket: answered as
//! dockerd answers it, and the agent keeps serving everyone else.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use berth_tests::docker::Engine;
use berth_tests::require_root;

/// Sends one raw HTTP/1.1 request; the status code and body.
fn request(d: &Engine, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(d.root.path().join("docker.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn message(body: &str) -> String {
    // Chunked or not, the JSON object is in there.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    let v: serde_json::Value = serde_json::from_str(&body[start..end])
        .unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn bad_requests_get_docker_shaped_errors() {
    require_root();
    let d = Engine::start();

    let (status, body) = request(&d, "POST", "/v1.47/containers/create", b"{not json");
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("invalid JSON"), "{body}");

    let (status, body) = request(&d, "GET", "/v1.47/no/such/endpoint", b"");
    assert_eq!(status, 404, "{body}");
    assert!(!message(&body).is_empty());

    let (status, body) = request(&d, "GET", "/v1.47/containers/nothing/json", b"");
    assert_eq!(status, 404);
    assert_eq!(message(&body), "No such container: nothing");

    let (status, body) = request(&d, "GET", "/v1.47/images/nothing:1/json", b"");
    assert_eq!(status, 404);
    assert!(message(&body).contains("No such image"), "{body}");

    // Unknown fields are ignored, as Go's decoder does.
    let create = format!(
        r#"{{"Image":"{}","Cmd":["true"],"NoSuchField":1}}"#,
        d.busybox()
    );
    d.ok(&["pull", "-q", &d.busybox()]);
    let (status, body) = request(
        &d,
        "POST",
        "/v1.47/containers/create?name=one",
        create.as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = request(
        &d,
        "POST",
        "/v1.47/containers/create?name=one",
        create.as_bytes(),
    );
    assert_eq!(status, 409, "{body}");
    assert!(message(&body).contains("is already in use"), "{body}");
    let (status, _) = request(
        &d,
        "POST",
        "/v1.47/containers/create?name=bad%2Fname",
        create.as_bytes(),
    );
    assert_eq!(status, 400);

    // Too old an API version; a version-less path is served.
    let (status, body) = request(&d, "GET", "/v1.12/version", b"");
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("too old"), "{body}");
    let (status, body) = request(&d, "GET", "/_ping", b"");
    assert_eq!((status, body.as_str()), (200, "OK"));

    // A body past the limit.
    let big = vec![b' '; 8 << 20];
    let (status, body) = request(&d, "POST", "/v1.47/containers/create", &big);
    assert!(status == 413 || status == 0, "{status} {body}");

    // Clients that hang up mid-stream: an events stream, a logs follow,
    // an attach. The agent goes on.
    for path in [
        "/v1.47/events",
        "/v1.47/containers/one/logs?follow=1&stdout=1",
        "/v1.47/containers/one/attach?stream=1&stdout=1",
    ] {
        let mut s = UnixStream::connect(d.root.path().join("docker.sock")).unwrap();
        let verb = if path.contains("attach") {
            "POST"
        } else {
            "GET"
        };
        let _ = write!(s, "{verb} {path} HTTP/1.1\r\nHost: docker\r\n\r\n");
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
    }
    // Half a request, then gone.
    let mut s = UnixStream::connect(d.root.path().join("docker.sock")).unwrap();
    let _ =
        s.write_all(b"POST /v1.47/containers/create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"Ima");
    drop(s);

    assert_eq!(
        d.ok(&["run", "--rm", &d.busybox(), "echo", "still here"]),
        "still here\n"
    );
    assert_eq!(d.ok(&["ps", "-a", "--format", "{{.Names}}"]), "one\n");
}

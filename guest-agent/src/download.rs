//! Downloads of the URLs users name (`ADD https://…` in a Dockerfile,
//! `docker import URL`): into a file, never whole in memory, and bounded
//! in time: to connect, and while the server sends nothing.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use crate::image::registry::causes;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server may send nothing before the download is given up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The server could not be reached, refused, or stopped sending.
    #[error("cannot download {url}: {reason}")]
    Fetch {
        /// What was asked for.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// What arrived could not be written.
    #[error("cannot keep what {url} sent: {source}")]
    Write {
        /// What was asked for.
        url: String,
        /// The write's error.
        source: std::io::Error,
    },
}

/// The client all downloads share, made on first use.
fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(IDLE_TIMEOUT)
                .user_agent(concat!("berth-agent/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot make an HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Writes what `url` answers (a success status only) into `file` and
/// returns how many bytes that was.
pub async fn to_file(url: &str, mut file: &std::fs::File) -> Result<u64, DownloadError> {
    let fetch = |reason: String| DownloadError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let mut response = client()
        .map_err(fetch)?
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fetch(causes(&e)))?;
    let mut size = 0;
    while let Some(chunk) = response.chunk().await.map_err(|e| fetch(causes(&e)))? {
        file.write_all(&chunk)
            .map_err(|source| DownloadError::Write {
                url: url.to_owned(),
                source,
            })?;
        size += chunk.len() as u64;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A URL whose server answers one request with `response`.
    async fn answering(response: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = conn.read(&mut request).await.unwrap();
            conn.write_all(response).await.unwrap();
        });
        format!("http://127.0.0.1:{port}/x")
    }

    #[tokio::test]
    async fn a_download_lands_in_the_file() {
        let url =
            answering(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
                .await;
        let mut file = tempfile::tempfile().unwrap();
        assert_eq!(to_file(&url, &file).await.unwrap(), 5);
        let mut text = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_that_says_so() {
        let url = answering(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
        let file = tempfile::tempfile().unwrap();
        let err = to_file(&url, &file).await.unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
    }
}
